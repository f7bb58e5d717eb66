"""One trial as a function: `run_trial(cfg, run_dir) -> TrialResult`, what `python -m tracker.train` runs and
what every sweep job runs. The result is the typed contract between the tracker and whoever drives it: the
sweeper reads objectives from `TrialResult.figures()` by name, and `metrics.json` holds the same figures."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, config_differences, job_config, without_settings_of_no_effect
from .io import atomic_write_text

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrialResult:
    """What one trained and scored config produced."""

    metrics: dict[str, Any]  # the evaluation's figures: auc, precision, ..., static_auc, fps (tracker.evaluation)
    cost: dict[str, Any]  # the deployed model's profile: parameters, MACs (tracker.profile), latency (tracker.latency)
    timings: dict[str, float]  # train_seconds, evaluate_seconds, seconds (the whole trial)
    head: dict[str, Any]  # the resolved head spec
    fidelity: str
    device: str
    run_dir: str
    history: dict[str, float] = field(default_factory=dict)  # the last epoch's statistics (final_train_loss, ...)

    def figures(self) -> dict[str, Any]:
        """Every figure under its own name, flat: `metrics.json`, the JSON line the train app prints, and what a
        sweep's objectives and the study's `metrics` attribute are read from."""
        return {**self.metrics, **self.cost, **self.timings, **self.history, "fidelity": self.fidelity,
                "device": self.device, "run_dir": self.run_dir}


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """A run directory's checkpoint: the last epoch's model, optimiser and history (what a rerun resumes)."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def check_resumable(cfg: DictConfig, run_dir: str | Path) -> None:
    """A run directory that holds a checkpoint resumes only with the config it was started with (settings of no
    effect aside): another one is refused before anything is written, naming the fields that differ."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not (saved.is_file() and run_checkpoint(run_dir).is_file()):
        return
    old = without_settings_of_no_effect(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    new = without_settings_of_no_effect(OmegaConf.to_container(job_config(cfg), resolve=True, enum_to_str=True))
    changed = config_differences(old, new)
    if changed:
        shown = "; ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in changed[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        raise ConfigError(f"{run_dir} holds a run of another config, so it does not resume with this one: {shown}"
                          f"{more}. Use another run directory (hydra.run.dir=...), or the same config.")


def run_trial(cfg: DictConfig, run_dir: str | os.PathLike, on_epoch_end: Optional[EpochCallback] = None,
              progress: bool = True) -> TrialResult:
    """Train, profile and evaluate one config; writes every artefact into `run_dir` (validated first: a bad config
    or broken data fails before the directory is written)."""
    from .evaluation import evaluate_model
    from .latency import candidate_latency
    from .profile import profile_model
    from .train import Trial

    started = time.perf_counter()
    run_dir = Path(run_dir)
    trial = Trial(cfg, run_dir, on_epoch_end=on_epoch_end, progress=progress)  # validates config and data first
    check_resumable(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    training = time.perf_counter()
    model = trial.train()
    trained = time.perf_counter()
    profile = {**profile_model(model, trial.device), **candidate_latency(cfg).figures()}  # latency: cached
    profiled = time.perf_counter()
    metrics = evaluate_model(model, cfg, run_dir, device=trial.device, progress=progress)
    history = pd.read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else None
    last = {}
    if history is not None and len(history):
        last["final_train_loss"] = float(history["loss"].iloc[-1])
        plot_history(history, run_dir / "plots" / "training.png")
    result = TrialResult(
        metrics=metrics, cost={k: v for k, v in profile.items() if k != "device"},
        timings={"train_seconds": trained - training, "evaluate_seconds": time.perf_counter() - profiled,
                 "seconds": time.perf_counter() - started},
        head=OmegaConf.to_container(cfg.head, resolve=True, enum_to_str=True),
        fidelity=str(trial.t.fidelity), device=str(trial.device), run_dir=str(run_dir.resolve()), history=last)
    atomic_write_text(run_dir / "metrics.json", json.dumps(result.figures(), indent=2, default=str))
    return result


def plot_history(history: pd.DataFrame, path: Path) -> None:
    """Loss and IoU by epoch (whole epochs on the axis); the held-out val IoU beside the training IoU when the
    run measured it (head fidelity). Built without pyplot's global state, so no backend is switched."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.2))
    ax_loss, ax_iou = fig.subplots(1, 2)
    ax_loss.plot(history["epoch"], history["loss"], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss (2 GIoU + 5 L1)")
    ax_iou.plot(history["epoch"], history["iou"], marker="o", label="training pairs")
    if "val_iou" in history:
        ax_iou.plot(history["epoch"], history["val_iou"], marker="s", label="held-out val pairs")
        ax_iou.legend(fontsize=8)
    ax_iou.set(xlabel="epoch", ylabel="IoU", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
