"""The Pareto report of a sweep: `python -m search.report study=NAME` (or `storage=URL`, or `multirun=DIR`).

Writes `<runs>/sweeps/<study>/report/`: `trials.csv` (one row per trial: arch, seed, role, run_dir),
`architectures.csv` (one row per architecture: means over seeds, bootstrap intervals, the difference to the
baseline and its verdict), `pareto.csv` (the front's rows of it), `transfer.csv` (the references and the front
on a held-out split), `summary.md` (the claims, in the verdicts' words), plots (AUC against head MACs and
parameters with interval bars, and against measured latency with MACs against latency when the trials timed it,
hypervolume by trial, parameter importances) and `best.yaml` / `best.json`, the
chosen architecture as a config that `python -m tracker.train --config-dir <report> --config-name best` retrains.

A plain Hydra grid (`python -m tracker.train -m ...`) has no study: its run directories are read and put into
an in-memory Optuna study, so both sources share one code path. Layout: load (trials), stats (intervals,
verdicts, Kendall's tau), analysis (architectures, front, verdicts, choice), transfer, hardware (MACs against
latency), plots, export.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from search.record import Role, study_objectives
from tracker.io import atomic_write_text as atomic_write

from .analysis import add_uncertainty, architectures, choose_best, compare_to_baseline, completed, pareto_mask
from .config import ReportConf, ReportError
from .export import arch_frame, best_files, summary_markdown, trial_frame
from .load import confirm_seeds, frame_to_study, grid_frame, load_frame, sequence_tables, study_frame, tracker_scores
from .hardware import int8_uncertainty, latency_facts
from .plots import optuna_plots, plot_front, plot_macs_latency, save_figure
from .stats import BootstrapConf, Verdict
from .transfer import transfer_preset, transfer_table

__all__ = ["ReportConf", "ReportError", "Verdict", "add_uncertainty", "analyse", "architectures", "build_report",
           "choose_best", "compare_to_baseline", "frame_to_study", "grid_frame", "load_frame", "optuna_plots",
           "pareto_mask", "plot_front", "study_frame"]


def analyse(frame: pd.DataFrame, study: Any, conf: ReportConf,
            tables: Optional[dict[int, pd.DataFrame]] = None) -> pd.DataFrame:
    """Architectures with their intervals, front membership and verdicts (what every output is drawn from).
    `tables`: the trials' per-sequence tables (load.sequence_tables), when the caller has read them."""
    try:
        objectives = study_objectives(study)
    except ValueError as e:
        raise ReportError(str(e)) from None
    table = architectures(frame, objectives)
    scores = None if tables is None else tracker_scores(tables)
    table = add_uncertainty(table, frame, BootstrapConf(conf.resamples, conf.confidence), scores=scores)
    table["pareto"] = pareto_mask(table)
    return compare_to_baseline(table, margin=conf.margin)


def build_report(conf: ReportConf, runs_root: Path, progress: bool = True) -> dict[str, Any]:
    frame, study, out = load_frame(conf, runs_root)
    tables = sequence_tables(completed(frame))  # every trial's per-sequence scores, read once
    table = analyse(frame, study, conf, tables)
    table, activations = int8_uncertainty(table, frame, BootstrapConf(conf.resamples, conf.confidence), tables)
    objectives = table.attrs["objectives"]
    min_seeds = conf.min_seeds or confirm_seeds(study)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "trials.csv", trial_frame(frame).to_csv(index=False))
    atomic_write(out / "architectures.csv", arch_frame(table).to_csv(index=False))
    front = table[table["pareto"]].sort_values("head_macs")
    atomic_write(out / "pareto.csv", arch_frame(front).to_csv(index=False))
    floor = float(table["static_auc"].mean()) if "static_auc" in table else None
    plots = {f"auc_vs_{name}": save_figure(plot_front(table, cost, f"AUC against {title}", floor, conf.confidence),
                                          out / f"auc_vs_{name}.png")
             for name, cost, title in (("macs", "head_macs", "head MACs"),
                                       ("params", "head_params_deploy", "deployed head parameters"))}
    hardware = latency_facts(table, frame)
    if hardware is not None:
        plots["auc_vs_latency"] = save_figure(plot_front(table, "frame_latency_ms", "AUC against measured per-frame "
                                                         "latency", floor, conf.confidence), out / "auc_vs_latency.png")
        plots["macs_vs_latency"] = save_figure(plot_macs_latency(table, hardware), out / "macs_vs_latency.png")
    if len(study.trials):
        base = table[table["role"] == Role.BASELINE]
        baseline_values = None if base.empty else [float(base.iloc[0][o.name]) for o in objectives]
        plots.update(optuna_plots(study, out, baseline_values))
    if activations is not None:
        atomic_write(out / "int8_activations.csv", activations.to_csv(index=False))
    transfer = None
    preset = transfer_preset(conf.transfer, frame)
    if preset:
        scores, info = transfer_table(frame, table, preset, BootstrapConf(conf.resamples, conf.confidence),
                                      conf.transfer_overrides, progress=progress, workers=conf.workers)
        atomic_write(out / "transfer.csv", scores.to_csv(index=False))
        transfer = (scores, info)
    best, why = choose_best(table, conf.rule, conf.max_head_macs, conf.max_head_params, min_seeds)
    retrain = f"python -m tracker.train --config-dir {out} --config-name best"
    for stale in ("best.yaml", "best.json"):
        (out / stale).unlink(missing_ok=True)  # a best.yaml from an earlier run must not outlive its choice
    if best is not None:
        text, record = best_files(best, why, frame, study.study_name, out, conf.rule)
        atomic_write(out / "best.yaml", text)
        atomic_write(out / "best.json", json.dumps(record, indent=2))
    summary = summary_markdown(study.study_name, frame, table, objectives, best, why, transfer, min_seeds, retrain,
                               hardware, activations)
    atomic_write(out / "summary.md", summary)
    return {"out_dir": str(out), "trials": len(frame), "complete": int((frame.state == "COMPLETE").sum()),
            "pareto": front["trials"].tolist(), "best_trials": None if best is None else str(best["trials"]),
            "best": None if best is None else best["label"], "plots": plots, "summary": summary,
            "transfer": None if transfer is None else {k: v for k, v in transfer[1].items()}}


def _main(cfg) -> None:
    from omegaconf import OmegaConf

    from tracker.config import runs_root

    conf = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ReportConf), cfg))
    result = build_report(conf, runs_root())  # a ReportError is the user's: one line, no traceback (tracker.app)
    print(result.pop("summary"))
    print(f"report written to {result['out_dir']}")
    print(json.dumps(result, default=str))


from search.objectives import ObjectiveError  # noqa: E402
from search.study import StorageError  # noqa: E402
from tracker.app import hydra_app  # noqa: E402

main = hydra_app(_main, "report", user_errors=(ReportError, StorageError, ObjectiveError))
