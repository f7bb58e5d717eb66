"""`make trunk` (`python -m tracker.trunk`): the preset's baseline trunk, trained once (or taken from the cache)
and shipped in the repository as `assets/trunks/<key>.pt` (fp16 weights, a few MB) with `<key>.json`: its
provenance (the command, the trunk config, the data key, torch's version) and its scores on the val split and on
the held-out test split beside the static box's. Head trials of that preset then start from it instead of training
a trunk (tracker.cache.ensure_baseline_trunk looks there first).
"""
from __future__ import annotations

import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .cache import SHIPPED_TRUNKS, baseline_trunk_config, ensure_baseline_trunk
from .config import job_config
from .io import atomic_write_text
from .latency import device_name, resolve_device
from .model.checkpoint import load_checkpoint, save_checkpoint
from .task import run_checkpoint

log = logging.getLogger(__name__)


def _score(model: Any, cfg: DictConfig, data: Any, out: Path) -> dict[str, Any]:
    from .evaluation import evaluate_on

    result = evaluate_on(model, cfg, data, out, device=torch.device("cpu"), progress=False)
    return {k: result.get(k) for k in ("auc", "precision", "static_auc", "static_precision", "sequences", "dataset")}


def _training_seconds(rows: list[str]) -> float | None:
    """The trunk run's summed epoch times (metrics.csv's `seconds` column), when it was trained here."""
    if len(rows) < 2 or "seconds" not in rows[0].split(","):
        return None
    column = rows[0].split(",").index("seconds")
    return round(sum(float(r.split(",")[column]) for r in rows[1:]), 1)


def ship_trunk(cfg: DictConfig, test_data: Any = None, out_dir: Path = SHIPPED_TRUNKS) -> dict[str, Any]:
    """Writes `<out_dir>/<key>.pt` and `<key>.json` for `cfg`'s baseline trunk; returns the provenance."""
    from .evaluation import load_model

    started = time.perf_counter()
    trunk_cfg, key = baseline_trunk_config(cfg)
    cached = ensure_baseline_trunk(cfg)
    state = load_checkpoint(cached)
    out_dir.mkdir(parents=True, exist_ok=True)
    shipped = save_checkpoint(out_dir / f"{key}.pt", model={k: v.half() if v.is_floating_point() else v
                                                            for k, v in state["model"].items()},
                              config=state["config"])
    model, _ = load_model(shipped)  # scored as trials will see it: fp16 weights back in fp32
    model.eval()
    history = cached.parent / "metrics.csv"
    rows = history.read_text().splitlines() if history.is_file() else []
    scores = {"val": _score(model, cfg, cfg.data, cached.parent / "scores" / "val")}
    if test_data is not None:
        scores["test"] = _score(model, cfg, test_data, cached.parent / "scores" / "test")
    provenance = {
        "key": key, "file": shipped.name, "bytes": shipped.stat().st_size,
        "command": "make trunk  # python -m tracker.trunk " + " ".join(sys.argv[1:]),
        "config": OmegaConf.to_container(trunk_cfg, resolve=True, enum_to_str=True),
        "epochs_trained": len(rows) - 1 if rows else None,
        "training_seconds": _training_seconds(rows),
        "trained_on": device_name(resolve_device(trunk_cfg.trainer.device)),
        "loader_workers": trunk_cfg.trainer.num_workers,
        "scores": scores, "torch": torch.__version__, "python": platform.python_version(),
        "seconds_to_ship": round(time.perf_counter() - started, 1),
        "trained_checkpoint": str(run_checkpoint(cached.parent)),
    }
    atomic_write_text(out_dir / f"{key}.json", json.dumps(provenance, indent=2, default=str) + "\n")
    return provenance


def _main(cfg: DictConfig) -> None:
    test = cfg.get("test_data")
    base = job_config(cfg, drop=("test_data", "hydra"))
    provenance = ship_trunk(base, test)
    for split, s in provenance["scores"].items():
        print(f"{split} ({s['dataset']}, {s['sequences']} sequences): AUC {s['auc']:.1f}, static box "
              f"{s['static_auc']:.1f}")
    print(json.dumps({k: v for k, v in provenance.items() if k != "config"}, default=str))


def main() -> None:
    from .app import hydra_app

    hydra_app(_main, "trunk")()


if __name__ == "__main__":
    main()
