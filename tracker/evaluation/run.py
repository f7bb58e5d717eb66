"""Evaluating a trained model: `evaluate_model` tracks a data config's evaluation split with the model and the
static-box tracker, scores both and writes the evaluation folder; `evaluate_on` does so on another data node (a
held-out split); `load_model` rebuilds a model and its config from a checkpoint, ours or STARK-Lightning's
official file (which gets `baseline_model_config`).

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
from .protocol import evaluate_sequences, image_size
from .results import scores_dir, write_report
from .tracker import StarkTracker, StaticBoxTracker, Tracker, run_tracker

log = logging.getLogger(__name__)


def evaluate_model(model: StarkLightning, cfg: DictConfig, out_dir: str | Path, device: torch.device,
                   progress: bool = True) -> dict[str, Any]:
    """Tracks `cfg.data`'s evaluation split with `model` (and the static-box tracker), writes results, plots
    and per-sequence scores under `out_dir`, returns the model's metrics plus the static tracker's AUC."""
    from ..data.config import build_reader, check_data, to_data_conf

    out_dir, ev = Path(out_dir), cfg.evaluation
    check_data(cfg.data, train=False)  # a broken sequence fails here, named, not mid-evaluation
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
    data_name = f"{cfg.data.name} {cfg.data.split}"
    summaries, plots = write_report(scores, scores_dir(out_dir), data_name)
    result = {**summaries["model"], "fps": speed["model"]["fps"], "model_fps": speed["model"]["model_fps"],
              "eval_batch": ev.get("batch_sequences", 1),
              "dataset": data_name, "results_dir": str(out_dir / "results" / "model")}
    if "static" in summaries:
        result.update({f"static_{k}": summaries["static"][k] for k in ("auc", "precision", "ao")})
    return result


def evaluate_on(model: StarkLightning, cfg: Any, data: Any, out_dir: str | Path, device: torch.device,
                progress: bool = True) -> dict[str, Any]:
    """evaluate_model on another data node (a held-out split) than the one `cfg` (a run's config) was trained on;
    the generated-data cache stays the run's own."""
    scored = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    node = OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else dict(data)
    node["cache_dir"] = scored.data.get("cache_dir", node.get("cache_dir"))
    scored.data = node
    return evaluate_model(model, scored, out_dir, device=device, progress=progress)


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
