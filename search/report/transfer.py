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
    from tracker.evaluation import evaluate_on, load_model
    from tracker.latency import resolve_device
    from tracker.task import run_checkpoint

    out = run_dir / where
    if scored(run_dir, where):
        return
    checkpoint = run_checkpoint(run_dir)
    if not checkpoint.is_file():
        raise ReportError(f"transfer: {run_dir} holds no trained model ({checkpoint} is missing); "
                          "pass transfer=null to skip the transfer check")
    model, cfg = load_model(checkpoint)
    evaluate_on(model.eval(), cfg, data, out, device=resolve_device("cpu"), progress=progress)


def scored(run_dir: Path, where: str) -> bool:
    from tracker.evaluation import PER_SEQUENCE_FILE, scores_dir

    return (scores_dir(run_dir / where) / PER_SEQUENCE_FILE).is_file()


def _threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def score_runs(run_dirs: Sequence[Path], data: Any, where: str, workers: Optional[int] = None,
               desc: str = "transfer", progress: bool = True) -> None:
    """`evaluate_run` for every run not scored yet, in `workers` spawned processes at once (null: one per core),
    cores / workers torch threads each; with one worker (or one run), here. Held-out data generated on first use is
    built once: the data cache's lock makes the other processes wait for it. Boxes agree with a serial run's up to
    float rounding (another process or thread count rounds differently)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from omegaconf import OmegaConf

    pending = [d for d in run_dirs if not scored(d, where)]
    if not pending:
        return
    cores = os.cpu_count() or 1
    at_once = min(workers or cores, len(pending))
    node = OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else dict(data)
    with tqdm(total=len(run_dirs), initial=len(run_dirs) - len(pending), desc=desc, unit="run",
              disable=not progress) as bar:
        if at_once <= 1:
            for run_dir in pending:
                evaluate_run(run_dir, node, where)
                bar.update()
            return
        with ProcessPoolExecutor(at_once, mp_context=multiprocessing.get_context("spawn"), initializer=_threads,
                                 initargs=(max(1, cores // at_once),)) as pool:
            for done in as_completed([pool.submit(evaluate_run, run_dir, node, where) for run_dir in pending]):
                done.result()
                bar.update()


def transfer_table(frame: pd.DataFrame, table: pd.DataFrame, preset: str, conf: BootstrapConf,
                   overrides: Sequence[str] = (), progress: bool = True, workers: Optional[int] = None
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The references and the front (every seed) scored on `preset`: per architecture `test_auc_mean`,
    `test_auc_ci_low/high`, `test_n_seeds`, `test_static_auc`; and the rank agreement with the val means
    (Kendall's tau and its p-value)."""
    chosen = table[table["pareto"] | table["role"].isin([Role.BASELINE, Role.USER_HEAD])]
    trials = completed(frame)
    trials = trials[trials["arch"].isin(chosen["arch"])]
    data, where = _compose_data(preset, overrides), subdir(preset, overrides)
    score_runs([Path(d) for d in trials["run_dir"]], data, where, workers, f"transfer to {preset}", progress)
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
