"""Does the front transfer? The references and the front, every seed, scored again on a split built differently
from the one they were selected on (conf/data/synthetic_test.yaml for the embedded data), never used for
selection; the val and test rankings compared by Kendall's tau."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
from tqdm.auto import tqdm

from search.record import Role

from .analysis import add_uncertainty, completed
from .config import ReportError
from .load import sequence_tables, tracker_scores
from .stats import BootstrapConf, kendall_tau

log = logging.getLogger(__name__)

AUTO = {"synthetic": "synthetic_test"}  # transfer=auto: the data a study ran on -> its held-out test preset


def transfer_preset(setting: Optional[str], frame: pd.DataFrame) -> Optional[str]:
    """The data preset to score on: the setting, or for `auto` the test preset of the data the trials ran on."""
    if setting != "auto":
        return setting
    from .load import _run_config

    for run_dir in frame.get("run_dir", pd.Series(dtype=object)).dropna():
        data = (_run_config(run_dir).get("data") or {}).get("name")
        if data:
            return AUTO.get(data)
    return None


def subdir(preset: str, overrides: Sequence[str] = ()) -> str:
    """Where a run keeps its evaluation on `preset` (with `overrides`), below its run directory."""
    if not overrides:
        return f"transfer/{preset}"
    from tracker.io import stable_hash

    return f"transfer/{preset}-{stable_hash(list(overrides), 8, 'sha1')}"


def _compose_data(preset: str, extra: Sequence[str] = ()) -> Any:
    from tracker.config import compose_here

    bad = [o for o in extra if not str(o).startswith("data.")]
    if bad:
        raise ReportError(f"transfer_overrides={list(extra)} is not allowed: only data.* overrides ({bad})")
    return compose_here("train", [f"data={preset}", *extra]).data


def evaluate_run(run_dir: Path, data: Any, where: str, progress: bool = False) -> None:
    """Tracks `data`'s evaluation split with a run's trained model; writes under run_dir/<where>/ (skipped when
    it is there: a rerun of the report costs nothing)."""
    from tracker.evaluation import PER_SEQUENCE_FILE, evaluate_on, load_model, scores_dir
    from tracker.latency import resolve_device
    from tracker.task import run_checkpoint

    out = run_dir / where
    if (scores_dir(out) / PER_SEQUENCE_FILE).is_file():
        return
    checkpoint = run_checkpoint(run_dir)
    if not checkpoint.is_file():
        raise ReportError(f"transfer: {run_dir} holds no trained model ({checkpoint} is missing); "
                          "pass transfer=null to skip the transfer check")
    model, cfg = load_model(checkpoint)
    evaluate_on(model.eval(), cfg, data, out, device=resolve_device("cpu"), progress=progress)


def transfer_table(frame: pd.DataFrame, table: pd.DataFrame, preset: str, conf: BootstrapConf,
                   overrides: Sequence[str] = (), progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The references and the front (every seed) scored on `preset`: per architecture `test_auc_mean`,
    `test_auc_ci_low/high`, `test_n_seeds`, `test_static_auc`; and the rank agreement with the val means
    (Kendall's tau and its p-value)."""
    chosen = table[table["pareto"] | table["role"].isin([Role.BASELINE, Role.USER_HEAD])]
    trials = completed(frame)
    trials = trials[trials["arch"].isin(chosen["arch"])]
    data, where = _compose_data(preset, overrides), subdir(preset, overrides)
    for run_dir in tqdm(trials["run_dir"], desc=f"transfer to {preset}", unit="run", disable=not progress):
        evaluate_run(Path(run_dir), data, where)
    tables = sequence_tables(trials, subdir=where)  # each run's scores read once: the model's and the static box's
    scored = add_uncertainty(chosen[["arch", "role", "label", "auc"]].copy(), trials, conf, subdir=where,
                             scores=tracker_scores(tables, "model"))
    static = tracker_scores(tables, "static").values()
    static_auc = float(pd.concat(list(static)).groupby(level=0).mean().mean())
    out = scored.rename(columns={"auc": "val_auc_mean", "n_seeds": "test_n_seeds", "auc_mean": "test_auc_mean",
                                 "auc_ci_low": "test_auc_ci_low", "auc_ci_high": "test_auc_ci_high",
                                 "auc_diff": "test_auc_diff", "auc_diff_ci_low": "test_auc_diff_ci_low",
                                 "auc_diff_ci_high": "test_auc_diff_ci_high", "p_improvement": "test_p_improvement"})
    out = out.drop(columns=["auc_std"])
    tau, p = kendall_tau(out["val_auc_mean"], out["test_auc_mean"])
    return out, {"preset": preset, "kendall_tau": tau, "kendall_p": p, "static_auc": static_auc,
                 "architectures": len(out), "runs": len(trials), "sequences": scored.attrs.get("sequences")}
