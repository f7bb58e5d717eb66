"""Reading trials: from an Optuna study as the sweeper records it, or from a plain Hydra grid of tracker.train
runs (put into an in-memory study, so both share one path). One row per trial, with its architecture (`arch`,
`label`, the head spec), its seed and its run directory."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import optuna
import pandas as pd
import yaml

from heads.spec import head_label
from search.objectives import DEFAULT_OBJECTIVES, Objective
from search.record import REFERENCE_HEADS, StudyAttr, arch_key, head_key, trial_row

from .config import ReportConf, ReportError


def _run_config(run_dir: Optional[str]) -> dict:
    if not run_dir or not (Path(run_dir) / "config.yaml").is_file():
        return {}
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}


def _identify(row: dict[str, Any], head: Optional[dict]) -> dict[str, Any]:
    """Adds `arch`, `label`, `head` (sorted JSON) and the seed (from the run's config when not recorded)."""
    config = None
    if not head or row.get("seed") is None:
        config = _run_config(row.get("run_dir"))
        head = head or config.get("head")
        if row.get("seed") is None:
            row["seed"] = (config.get("trainer") or {}).get("seed")
    if head:
        row.update(arch=arch_key(head), label=head_label(head), head=head_key(head))
    return row


def study_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, role, stage, seed, arch, label, parameters (`param_*`), metrics, cost, head
    (sorted JSON), run dir, reasons."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = trial_row(t)
        rows.append(_identify(row, row.pop("head", None)))
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ReportError(f"study {study.study_name!r} has no trials yet")
    return frame


def grid_frame(multirun: str | os.PathLike) -> pd.DataFrame:
    """Rows from a Hydra multirun directory of tracker.train jobs (`<dir>/<job>/metrics.json`). A grid has no
    roles: its references are the runs whose head is what a reference preset composes to."""
    from tracker.config import head_preset

    root = Path(multirun)
    jobs = sorted((p.parent.parent for p in root.glob("*/.hydra/overrides.yaml")), key=lambda p: (len(p.name), p.name))
    if not jobs:
        raise ReportError(f"multirun={str(root)!r} holds no Hydra job directories (<dir>/<n>/.hydra/overrides.yaml)")
    references = {head_key(head_preset(preset)): role for role, preset in REFERENCE_HEADS.items()}
    rows = []
    for number, job in enumerate(jobs):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        row: dict[str, Any] = {"trial": number, "run_dir": str(job.resolve()), "role": None, "reason": None,
                               "seed": None}
        row.update({f"param_{o.split('=', 1)[0]}": o.split("=", 1)[1] for o in overrides if "=" in o})
        metrics = job / "metrics.json"
        if metrics.is_file():
            values = json.loads(metrics.read_text())
            row.update({k: v for k, v in values.items() if isinstance(v, (int, float, str, bool)) or v is None})
            row["state"] = "COMPLETE"
            row["duration_s"] = values.get("train_seconds")
        else:
            row["state"] = "FAIL"
            error = job / "error.txt"
            row["reason"] = error.read_text().strip().splitlines()[-1] if error.is_file() else "no metrics.json"
        row = _identify(row, None)
        row["role"] = references.get(row.get("head"))
        rows.append(row)
    return pd.DataFrame(rows)


def frame_to_study(frame: pd.DataFrame, name: str = "grid",
                   objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> optuna.Study:
    """An in-memory study of a grid's completed runs, so that Optuna's plots and importances apply."""
    study = optuna.create_study(study_name=name, directions=[o.direction for o in objectives])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.name for o in objectives])
    params = [c for c in frame.columns if c.startswith("param_")]
    for _, row in frame[frame.state == "COMPLETE"].iterrows():
        values = [float(row[o.name]) for o in objectives]
        choices = {p[6:]: optuna.distributions.CategoricalDistribution(sorted(frame[p].dropna().astype(str).unique()))
                   for p in params if isinstance(row[p], str)}
        study.add_trial(optuna.trial.create_trial(
            values=values, params={k: str(row[f"param_{k}"]) for k in choices}, distributions=choices))
    return study


def load_frame(conf: ReportConf, runs_root: Path) -> tuple[pd.DataFrame, optuna.Study, Path]:
    """The trials' rows, the study (a grid's in memory, on the default objectives) and the output folder."""
    if conf.multirun:
        frame = grid_frame(conf.multirun)
        return frame, frame_to_study(frame), Path(conf.out_dir or Path(conf.multirun) / "report")
    if not conf.study:
        raise ReportError("study=NAME (with optional storage=URL) or multirun=DIR is required")
    from search.study import open_storage, storage_location

    sweep_dir = runs_root / "sweeps" / conf.study
    location = storage_location(conf.storage, sweep_dir)
    if not conf.storage and not Path(location).is_file():
        raise ReportError(f"no study {conf.study!r}: {location} does not exist (run the sweep, or pass storage=URL)")
    try:
        study = optuna.load_study(study_name=conf.study, storage=open_storage(location))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(location))]
        raise ReportError(f"study {conf.study!r} is not in {location}; it holds {names}") from None
    return study_frame(study), study, Path(conf.out_dir or sweep_dir / "report")


def confirm_seeds(study: optuna.Study) -> int:
    """The seeds per architecture the study's confirmation stage aims at (1 without one)."""
    return int((study.user_attrs.get(StudyAttr.CONFIRM) or {}).get("seeds") or 1)


def sequence_tables(frame: pd.DataFrame, subdir: Optional[str] = None) -> dict[int, pd.DataFrame]:
    """Per-sequence AUCs of each completed, non-duplicate trial, every tracker's in one read (trial number ->
    table by sequence, one column per tracker: `model`, `static`), from its run directory (`subdir`: an
    evaluation below it, such as a transfer split's)."""
    from tracker.evaluation import scores_dir
    from tracker.evaluation.results import read_per_sequence_table

    out = {}
    for _, row in frame.iterrows():
        run_dir = row.get("run_dir")
        if row.get("state") != "COMPLETE" or not isinstance(run_dir, str) or _is_duplicate(row):
            continue
        table = read_per_sequence_table(scores_dir(Path(run_dir) / subdir if subdir else run_dir))
        if table is not None:
            out[int(row["trial"])] = table
    return out


def tracker_scores(tables: dict[int, pd.DataFrame], tracker: str = "model") -> dict[int, pd.Series]:
    """One tracker's per-sequence AUCs out of `sequence_tables` (trial number -> Series by sequence), the
    trials that have them."""
    from tracker.evaluation.results import tracker_column

    columns = {trial: tracker_column(table, tracker) for trial, table in tables.items()}
    return {trial: scores for trial, scores in columns.items() if scores is not None}


def sequence_scores(frame: pd.DataFrame, tracker: str = "model", subdir: Optional[str] = None
                    ) -> dict[int, pd.Series]:
    """Per-sequence AUCs of each completed, non-duplicate trial (trial number -> Series by sequence), read
    from its run directory (`subdir`: an evaluation below it, such as a transfer split's)."""
    return tracker_scores(sequence_tables(frame, subdir), tracker)


def _is_duplicate(row: pd.Series) -> bool:
    value = row.get("duplicate_of")
    return value is not None and not (isinstance(value, float) and np.isnan(value))
