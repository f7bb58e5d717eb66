"""Evaluating a trained model: `evaluate_model` tracks a data config's evaluation split with the model and the
static-box tracker (and, with `evaluation.quantize=int8`, the model's INT8 graphs: `evaluate_int8`), scores them
and writes the evaluation folder; `evaluate_on` does so on another data node (a held-out split); `load_model`
rebuilds a model and its config from a checkpoint, ours or STARK-Lightning's official file (which gets
`baseline_model_config`).

Why a module of their own: these join the rest of the package (the trackers, the protocol, the results folder)
to the model, the checkpoints and the data config, and they are what the apps and the training, trunk, report
and export code call. In `tracker.py` they would tie the online trackers to checkpoints and data configs; in
`__init__` they would make every import of the package load torch and the model, which scoring results files
does not need."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..model import StarkLightning
from .protocol import Scores, evaluate_sequences, image_size
from .results import scores_dir, write_report
from .tracker import OnnxStarkTracker, StarkTracker, StaticBoxTracker, Tracker, run_tracker

log = logging.getLogger(__name__)


def evaluate_model(model: StarkLightning, cfg: DictConfig, out_dir: str | Path, device: torch.device,
                   progress: bool = True, calibration_data: Any = None) -> dict[str, Any]:
    """Tracks `cfg.data`'s evaluation split with `model` (and the static-box tracker), writes results, plots
    and per-sequence scores under `out_dir`, returns the model's metrics plus the static tracker's AUC. With
    `cfg.evaluation.quantize=int8`, also the INT8 model's figures on the same sequences (`evaluate_int8`),
    calibrated on `calibration_data`'s train split (a data node; default: `training_data(cfg)`)."""
    from ..data.config import build_reader, check_data, to_data_conf

    out_dir, ev = Path(out_dir), cfg.evaluation
    check_data(cfg.data, train=False)  # a broken sequence fails here, named, not mid-evaluation
    int8_wanted = ev.get("quantize", "none") == "int8"  # a run's stored config from before the field: none
    if int8_wanted:
        from ..quantize import check_calibration_data

        calibration_data = training_data(cfg) if calibration_data is None else calibration_data
        check_calibration_data(calibration_data)  # no train sequences fails here, not after tracking
    reader = build_reader(cfg.data)
    processing = to_data_conf(cfg.data).processing  # the crops and normalisation training used
    names = reader.sequence_names()[: ev.max_sequences]
    sequences = [reader.sequence(n) for n in names]
    sizes = {s.name: size for s in sequences if (size := image_size(s)) is not None}
    trackers: list[Tracker] = [StarkTracker(model, device, processing.template.factor, processing.search.factor,
                                            ev.margin, mean=processing.mean, std=processing.std)]
    if ev.static_baseline:
        trackers.append(StaticBoxTracker())
    scores, speed = {}, {}
    for tracker in trackers:
        run = run_tracker(tracker, sequences, out_dir / "results" / tracker.name, progress, ev.get("batch_sequences", 1))
        scores[tracker.name] = evaluate_sequences(run["predictions"], sequences, sizes)
        speed[tracker.name] = run["speed"]
    int8: dict[str, Any] = {}
    if int8_wanted:
        scores[INT8_TRACKER], int8 = evaluate_int8(model, cfg, out_dir, sequences, sizes, progress, calibration_data)
    data_name = f"{cfg.data.name} {cfg.data.split}"
    summaries, plots = write_report(scores, scores_dir(out_dir), data_name)
    result = {**summaries["model"], "fps": speed["model"]["fps"], "model_fps": speed["model"]["model_fps"],
              "eval_batch": ev.get("batch_sequences", 1),
              "dataset": data_name, "results_dir": str(out_dir / "results" / "model")}
    if "static" in summaries:
        result.update({f"static_{k}": summaries["static"][k] for k in ("auc", "precision", "ao")})
    if int8:  # the same sequences, scored the same way: the drop is the quantisation's alone
        int8_auc = summaries[INT8_TRACKER]["auc"]
        result.update({"int8_auc": int8_auc, "int8_auc_drop": result["auc"] - int8_auc,
                       "int8_precision": summaries[INT8_TRACKER]["precision"], **int8})
    return result


def training_data(cfg: Any) -> Any:
    """The pairs a config trains on: a trial's (`cfg.data` with the trainer's search jitter, tracker.train's
    `trial_data`) when it has a trainer, else `cfg.data` as it is (the evaluate app's config)."""
    if OmegaConf.select(cfg, "trainer") is None:
        return cfg.data
    from ..train import trial_data

    return trial_data(cfg)


INT8_TRACKER = "int8"  # its results folder (results/int8/) and its rows of per_sequence.csv


def evaluate_int8(model: StarkLightning, cfg: DictConfig, out_dir: Path, sequences: list, sizes: dict,
                  progress: bool, calibration_data: Any) -> tuple[Scores, dict[str, Any]]:
    """The model as post-training static INT8 graphs (`tracker.quantize`; `out_dir/int8/`, the FP32 export they
    come from in `out_dir/onnx/`) tracking `sequences` under ONNX Runtime on the CPU (`results/int8/`), and the
    median per-frame latency of the search branch of the INT8 and the FP32 graphs: the same fixed input, the
    same `evaluation.onnx_threads`. Returns the INT8 tracker's scores and its figures."""
    from ..data.config import to_data_conf
    from ..export import OnnxTracker, example_inputs
    from ..latency import median_latency_ms
    from ..quantize import quantize_model

    ev, threads = cfg.evaluation, cfg.evaluation.get("onnx_threads", 1)
    processing = to_data_conf(cfg.data).processing
    quantized = quantize_model(model, calibration_data, out_dir / "int8", ev.get("quantize_scope", "model"),
                               ev.get("calibration_crops", 256), fp32_dir=out_dir / "onnx")
    network = quantized.tracker(threads)
    tracker = OnnxStarkTracker(network, processing.template.factor, processing.search.factor, ev.margin,
                               mean=processing.mean, std=processing.std, name=INT8_TRACKER)
    run = run_tracker(tracker, sequences, out_dir / "results" / INT8_TRACKER, progress)
    latency = {}
    cpu = torch.device("cpu")
    x = example_inputs(network)  # the graphs' fixed sizes; one input for both
    for name, graphs in (("int8", network), ("onnx", OnnxTracker(out_dir / "onnx", threads))):
        template = graphs.encode_template(x["template_image"], x["template_mask"])
        latency[f"{name}_frame_latency_ms"] = median_latency_ms(
            lambda: graphs.track(x["search_image"], x["search_mask"], template), cpu)
    return evaluate_sequences(run["predictions"], sequences, sizes), {
        **latency, "int8_scope": quantized.scope, "int8_calibration_crops": quantized.calibration_crops,
        "int8_fps": run["speed"]["fps"], "int8_results_dir": str(out_dir / "results" / INT8_TRACKER)}


def evaluate_on(model: StarkLightning, cfg: Any, data: Any, out_dir: str | Path, device: torch.device,
                progress: bool = True) -> dict[str, Any]:
    """evaluate_model on another data node (a held-out split) than the one `cfg` (a run's config) was trained on;
    the generated-data cache stays the run's own."""
    scored = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    node = OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else dict(data)
    node["cache_dir"] = scored.data.get("cache_dir", node.get("cache_dir"))
    scored.data = node
    # an INT8 model is calibrated on the run's training data, not on the held-out node (it may have no train split)
    return evaluate_model(model, scored, out_dir, device=device, progress=progress,
                          calibration_data=training_data(cfg))


def baseline_model_config() -> DictConfig:
    """STARK-Lightning with its own head at 128/320 (the schema defaults): the model the official file holds."""
    from heads.spec import HeadSpec

    from ..config import ModelConf

    return OmegaConf.create({"model": OmegaConf.structured(ModelConf), "head": OmegaConf.structured(HeadSpec)})


def load_model(checkpoint: str | Path) -> tuple[StarkLightning, DictConfig]:
    """Rebuilds a trained model and the config it was built from: from one of this project's checkpoints (its
    config travels inside) or from STARK-Lightning's official file, which carries no config of ours, so the
    baseline model config is used (and logged)."""
    from hydra.utils import instantiate

    from ..model.checkpoint import load_official_checkpoint, own_checkpoint, read_checkpoint

    state = read_checkpoint(checkpoint)
    if isinstance(state, dict) and "net" in state:
        cfg = baseline_model_config()
        model = instantiate(cfg.model)
        load_official_checkpoint(model, checkpoint, state=state)
        log.info("%s is STARK-Lightning's official checkpoint: it carries no config of ours, so the baseline "
                 "model config is used (RepVGG head, template %d / search %d)", checkpoint,
                 cfg.model.template_size, cfg.model.search_size)
        return model, cfg
    state = own_checkpoint(state, checkpoint)
    cfg = OmegaConf.create(state["config"])
    model = instantiate(cfg.model)
    model.load_state_dict(state["model"])
    return model, cfg
