"""The `evaluate` app: tracks and scores a checkpoint.

`python -m tracker.evaluate checkpoint=PATH data=got10k data.root=DIR data.split=val` tracks every
sequence, writes `<sequence>.txt` (x,y,w,h per line) per tracker, measures speed, scores the results, and
prints the metrics as one JSON object on its last stdout line. A static-box tracker (the first box
forever) is scored beside every model so each report shows the trivial floor. The work is
`tracker.evaluation` (`load_model`, `evaluate_model`).

`quantize=int8` (`quantize_scope=model|head`) also scores the model quantised to INT8 on the same sequences
(`tracker.quantize`; the JSON line adds int8_auc, int8_auc_drop and both ONNX latencies). The two top-level keys
are the evaluation node's settings (conf/evaluate.yaml interpolates them), so `evaluation.quantize=int8` is the
same run.
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .evaluation import evaluate_model, load_model
from .io import atomic_write_text


def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .latency import resolve_device

    from .config import QUANTIZE_MODES, QUANTIZE_SCOPES, not_allowed, validate

    for key, allowed in (("quantize", QUANTIZE_MODES), ("quantize_scope", QUANTIZE_SCOPES)):  # named as typed
        if OmegaConf.select(cfg, key) not in allowed:
            raise not_allowed(key, repr(OmegaConf.select(cfg, key)), f"one of {list(allowed)}")
    validate(cfg)
    if not cfg.checkpoint:
        raise ValueError("checkpoint=PATH is required: a checkpoint written by tracker.train "
                         "(runs/train/<run>/checkpoints/last.pt) or STARK-Lightning's official "
                         "STARK_Lightning_X_trt_ep0500.pth.tar")
    device = resolve_device(cfg.device)
    model, model_cfg = load_model(cfg.checkpoint)
    trained = OmegaConf.select(model_cfg, "data.processing")
    if trained is not None:  # the model sees crops normalised as in its training, whatever data it is scored on
        for key in ("mean", "std"):
            cfg.data.processing[key] = trained[key]
    out_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    result = evaluate_model(model.to(device), cfg, out_dir, device, progress=cfg.progress)
    result["checkpoint"] = str(cfg.checkpoint)
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
    print(json.dumps(result))


def main() -> None:
    from .app import hydra_app

    hydra_app(_main, "evaluate")()


if __name__ == "__main__":
    main()
