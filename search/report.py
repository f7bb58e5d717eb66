"""The Pareto report of a sweep: `python -m search.report study=NAME` (or `storage=URL`, or `multirun=DIR`).

Writes `runs/sweeps/<study>/report/`: `trials.csv` (one row per trial), `pareto.csv` and `summary.md`
(Pareto-optimal architectures against the RepVGG baseline), plots (AUC against head MACs and parameters,
hypervolume by trial, parameter importances) and `best.yaml`, a config that
`python -m tracker.train --config-dir runs/sweeps/<study>/report --config-name best` retrains as is.

A plain Hydra grid (`python -m tracker.train -m ...`) has no study: its run directories are read and put into
an in-memory Optuna study, so both sources share one code path.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import optuna
import pandas as pd
import yaml
from omegaconf import OmegaConf

from search.objectives import DEFAULT_OBJECTIVES, Objective
from search.record import Role, head_key, study_objectives, trial_row
from tracker.io import atomic_write_text as atomic_write

log = logging.getLogger(__name__)

# a grid has no roles: its references are found by these head options
BASELINE_HEAD = {"block": "repvgg", "num_blocks": 2, "channels": 128, "activation": "relu", "kernel_size": 3,
                 "final_kernel_size": 3}
USER_HEAD = {"block": "dsconv", "num_blocks": 2, "channels": 64, "activation": "relu6", "kernel_size": 3,
             "final_kernel_size": 1, "norm": False}


class ReportError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ loading trials
def study_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, parameters (`param_*`), metrics, cost, head, run dir, reasons."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = trial_row(t)
        head = row.pop("head", None) or _run_head(row["run_dir"])
        if head:
            row["head"] = head_key(head)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ReportError(f"study {study.study_name!r} has no trials yet")
    return frame


def _run_head(run_dir: Optional[str]) -> Optional[dict]:
    if not run_dir or not (Path(run_dir) / "config.yaml").is_file():
        return None
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text()).get("head")


def grid_frame(multirun: str | os.PathLike) -> pd.DataFrame:
    """Rows from a Hydra multirun directory of tracker.train jobs (`<dir>/<job>/metrics.json`)."""
    root = Path(multirun)
    jobs = sorted((p.parent.parent for p in root.glob("*/.hydra/overrides.yaml")), key=lambda p: (len(p.name), p.name))
    if not jobs:
        raise ReportError(f"multirun={str(root)!r} holds no Hydra job directories (<dir>/<n>/.hydra/overrides.yaml)")
    rows = []
    for number, job in enumerate(jobs):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        row: dict[str, Any] = {"trial": number, "run_dir": str(job.resolve()), "role": None, "reason": None}
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
        head = _run_head(str(job))
        if head:
            row["head"] = head_key(head)
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


# ------------------------------------------------------------------------------------------------ analysis
def architectures(frame: pd.DataFrame, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """Completed trials grouped by head architecture (the whole head spec): mean and spread of the metrics
    over seeds. The table keeps `objectives` (table.attrs) for pareto_mask and compare_to_baseline."""
    done = frame[(frame.state == "COMPLETE") & frame.get("auc", pd.Series(dtype=float)).notna()].copy()
    if done.empty:
        raise ReportError("no completed trial with an AUC to report")
    missing = [o.name for o in objectives if o.name not in done]
    if missing:
        raise ReportError(f"the completed trials record no {missing}, which the study optimises")
    if "head" not in done:
        done["head"] = done["trial"].astype(str)
    done["head"] = done["head"].fillna(done["trial"].astype(str))
    if "duplicate_of" in done:  # a duplicate repeats its original's figures: count each run once
        done = done[done["duplicate_of"].isna()]
    shown = ("auc", "op50", "precision", "ao", "head_macs", "head_params", "head_params_deploy", "model_macs",
             "head_latency_ms", "model_latency_ms", "fps")
    numeric = [c for c in dict.fromkeys([*shown, *(o.name for o in objectives)]) if c in done]
    grouped = done.groupby("head", sort=False)
    table = grouped[numeric].mean()
    table["auc_std"] = grouped["auc"].std(ddof=1) if len(done) > 1 else np.nan
    table["seeds"] = grouped.size()
    table["trials"] = grouped["trial"].apply(lambda s: ",".join(map(str, s)))
    table["role"] = grouped["role"].apply(lambda s: next((r for r in s if isinstance(r, str)), None))
    table = table.reset_index()
    table.attrs["objectives"] = list(objectives)
    for role, reference in ((Role.BASELINE, BASELINE_HEAD), (Role.USER_HEAD, USER_HEAD)):
        if not (table["role"] == role).any():  # a grid has no roles: find the reference by its config
            match = table["head"].map(lambda h: _matches(h, reference))
            table.loc[match & table["role"].isna(), "role"] = role
    return table


def _matches(head_json: str, reference: dict) -> bool:
    try:
        head = json.loads(head_json)
    except (TypeError, ValueError):
        return False
    return all(head.get(k) == v for k, v in reference.items())


def _objectives(table: pd.DataFrame, objectives: Optional[Sequence[Objective]]) -> list[Objective]:
    """The objectives given, else those architectures() kept on the table, else the default."""
    return list(objectives or table.attrs.get("objectives") or DEFAULT_OBJECTIVES)


def _minimised(frame: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """The objective columns as an array in which lower is better."""
    signs = np.array([-1.0 if o.direction == "maximize" else 1.0 for o in objectives])
    return frame[[o.name for o in objectives]].to_numpy(dtype=float) * signs


def _dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a[i] dominates b[j] (at least as good in every objective, better in one), for every pair: (len a, len b)."""
    return (a[:, None, :] <= b[None, :, :]).all(-1) & (a[:, None, :] < b[None, :, :]).any(-1)


def pareto_mask(table: pd.DataFrame, objectives: Optional[Sequence[Objective]] = None) -> np.ndarray:
    """True for rows no other row dominates, on the study's objectives (see _objectives)."""
    points = _minimised(table, _objectives(table, objectives))
    return ~_dominates(points, points).any(0)


def compare_to_baseline(table: pd.DataFrame, objectives: Optional[Sequence[Objective]] = None) -> pd.DataFrame:
    """Cost ratios and AUC difference to the baseline; `dominates_baseline` on the study's objectives."""
    base = table[table["role"] == Role.BASELINE]
    if base.empty:
        log.warning("no baseline (head=repvgg) in the sweep: ratios are left empty")
        for col in ("macs_x_fewer", "params_x_fewer", "auc_diff", "dominates_baseline", "within_seed_spread"):
            table[col] = np.nan
        return table
    b = base.iloc[0]
    table["macs_x_fewer"] = b["head_macs"] / table["head_macs"]
    table["params_x_fewer"] = b["head_params_deploy"] / table["head_params_deploy"]
    table["auc_diff"] = table["auc"] - b["auc"]
    objectives = _objectives(table, objectives)
    table["dominates_baseline"] = _dominates(_minimised(table, objectives), _minimised(base.iloc[:1], objectives))[:, 0]
    spread = np.sqrt(table["auc_std"].fillna(0) ** 2 + (0 if math.isnan(b["auc_std"]) else b["auc_std"]) ** 2)
    within = np.where(spread > 0, table["auc_diff"].abs() <= spread, np.nan)
    table["within_seed_spread"] = np.where(table["role"] == Role.BASELINE, np.nan, within)
    return table


def choose_best(table: pd.DataFrame, rule: str, max_head_macs: Optional[float] = None,
                max_head_params: Optional[float] = None) -> pd.Series:
    """`budget`: the highest AUC within the cost budget; `knee`: the front point nearest the ideal corner
    (AUC and log MACs scaled to [0, 1])."""
    front = table[table["pareto"]]
    if rule == "budget":
        fits = front
        if max_head_macs is not None:
            fits = fits[fits["head_macs"] <= max_head_macs]
        if max_head_params is not None:
            fits = fits[fits["head_params_deploy"] <= max_head_params]
        if fits.empty:
            raise ReportError(f"no Pareto-optimal trial fits the budget head_macs <= {max_head_macs}, "
                              f"head_params_deploy <= {max_head_params}")
        return fits.sort_values(["auc", "head_macs"], ascending=[False, True]).iloc[0]
    if rule == "knee":
        auc = front["auc"].to_numpy(float)
        macs = np.log10(front["head_macs"].to_numpy(float))
        span = lambda v: (v - v.min()) / (np.ptp(v) or 1.0)  # noqa: E731
        distance = np.hypot(1 - span(auc), span(macs))
        return front.iloc[int(np.argmin(distance))]
    raise ReportError(f"select.rule={rule!r} is not allowed: budget or knee")


# ------------------------------------------------------------------------------------------------- outputs
def plot_front(table: pd.DataFrame, cost: str, path: Path, title: str, floor: Optional[float] = None) -> Path:
    """AUC against a cost (log axis), the front as a step line, the references marked; `floor` draws the
    static-box tracker's AUC, the score of not tracking at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    others = table[~table["pareto"]]
    front = table[table["pareto"]].sort_values(cost)
    ax.scatter(others[cost], others["auc"], c="0.65", s=22, label="trials")
    err = front["auc_std"].fillna(0) if front["seeds"].max() > 1 else None
    ax.errorbar(front[cost], front["auc"], yerr=err, fmt="o", c="tab:blue", ms=5, label="Pareto-optimal")
    best = front["auc"].cummax()  # the front as a step: best AUC at or below each cost
    ax.step(front[cost], best, where="post", c="tab:blue", lw=1)
    for role, marker, colour, label in ((Role.BASELINE, "s", "tab:red", "RepVGG baseline"),
                                        (Role.USER_HEAD, "D", "tab:green", "user's DSConv head")):
        rows = table[table["role"] == role]
        if not rows.empty:
            ax.scatter(rows[cost], rows["auc"], marker=marker, s=80, facecolors="none", edgecolors=colour,
                       linewidths=2, label=label, zorder=5)
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, ls="--", c="0.4", lw=1, label=f"static box (AUC {floor:.1f})")
    ax.set_xscale("log")
    ax.set(xlabel={"head_macs": "head MACs (deploy form, log)",
                   "head_params_deploy": "head parameters (deploy form, log)"}[cost], ylabel="AUC (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def reference_point(study: optuna.Study) -> list[float]:
    """A point worse than every completed trial in each objective, for the hypervolume: 0 for a maximised
    figure (or below its lowest value), 1.1 x the largest value of a minimised one."""
    values = np.array([t.values for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))])
    point = []
    for column, direction in zip(values.T, study.directions):
        if direction == optuna.study.StudyDirection.MAXIMIZE:
            point.append(min(0.0, float(column.min()) * (1.1 if column.min() < 0 else 0.9)))
        else:
            point.append(max(0.0, float(column.max()) * (1.1 if column.max() > 0 else 0.9)))
    return point


def _save(ax: Any, path: Path, written: dict[str, str]) -> None:
    import matplotlib.pyplot as plt

    ax.figure.set_size_inches(6.4, 4.0)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=130)
    plt.close(ax.figure)
    written[path.stem] = str(path)


def optuna_plots(study: optuna.Study, out: Path, reference: Optional[Sequence[float]] = None) -> dict[str, str]:
    """Hypervolume by trial (several objectives; `reference`: default reference_point) and parameter
    importances for the study's first objective, drawn by Optuna."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.importance import PedAnovaImportanceEvaluator

    written: dict[str, str] = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    first = study_objectives(study)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # target is negated
        if len(study.directions) > 1 and complete:
            if reference is None or len(reference) != len(study.directions):
                reference = reference_point(study)
            _save(optuna.visualization.matplotlib.plot_hypervolume_history(study, reference),
                  out / "hypervolume.png", written)
        params = {k for t in complete for k in t.params}
        if len(complete) >= 3 and params:
            # PED-ANOVA ranks what makes the target low: several objectives need a target, a maximised one negated;
            # one objective is read with the study's direction
            sign = -1.0 if first.direction == "maximize" else 1.0
            target = (lambda t: sign * t.values[0]) if len(study.directions) > 1 else None
            try:
                ax = optuna.visualization.matplotlib.plot_param_importances(
                    study, evaluator=PedAnovaImportanceEvaluator(), target=target, target_name=first.name)
            except (RuntimeError, ValueError, ZeroDivisionError) as error:
                log.warning("parameter importances not drawn: %s", error)
            else:
                _save(ax, out / "importances.png", written)
    return written


def best_config(row: pd.Series, frame: pd.DataFrame) -> dict[str, Any]:
    """A primary config that composes conf/train.yaml with the chosen head and the trial's settings."""
    trial = frame[frame["trial"] == int(str(row["trials"]).split(",")[0])].iloc[0]
    run_dir = Path(str(trial["run_dir"]))
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    choices = {}
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        runtime = yaml.safe_load(hydra_file.read_text())["hydra"]["runtime"]["choices"]
        choices = {k: v for k, v in runtime.items() if k in ("head", "model", "data", "trainer", "evaluation")}
    choices.setdefault("head", resolved["head"]["block"])
    head = {k: v for k, v in resolved["head"].items() if not k.startswith("_")}
    config = {"defaults": ["train", *({f"override {k}": v} for k, v in choices.items()), "_self_"],
              "head": head}
    for group in ("data", "trainer", "evaluation"):
        if group in resolved:
            config[group] = resolved[group]
    return config


@dataclass
class ReportConf:
    study: Optional[str] = None
    storage: Optional[str] = None  # default: runs/sweeps/<study>/journal.log
    multirun: Optional[str] = None  # a Hydra multirun directory of tracker.train jobs, instead of a study
    out_dir: Optional[str] = None  # default: runs/sweeps/<study>/report (or <multirun>/report)
    rule: str = "budget"  # budget | knee
    max_head_macs: Optional[float] = None
    max_head_params: Optional[float] = None


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


def build_report(conf: ReportConf, runs_root: Path) -> dict[str, Any]:
    if conf.rule not in ("budget", "knee"):
        raise ReportError(f"rule={conf.rule!r} is not allowed: budget or knee")
    frame, study, out = load_frame(conf, runs_root)
    try:
        objectives = study_objectives(study)
    except ValueError as e:
        raise ReportError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "trials.csv", frame.to_csv(index=False))
    table = architectures(frame, objectives)
    table["pareto"] = pareto_mask(table)
    table = compare_to_baseline(table)
    front = table[table["pareto"]].sort_values("head_macs")
    atomic_write(out / "pareto.csv", front.to_csv(index=False))
    best = choose_best(table, conf.rule, conf.max_head_macs, conf.max_head_params)
    atomic_write(out / "best.yaml", "# chosen by rule=" + conf.rule + "; retrain: python -m tracker.train "
                 f"--config-dir {out} --config-name best\n" + yaml.safe_dump(best_config(best, frame), sort_keys=False))
    floor = float(frame["static_auc"].median()) if "static_auc" in frame else None
    plots = {"auc_vs_macs": str(plot_front(table, "head_macs", out / "auc_vs_macs.png", "AUC against head MACs",
                                           floor)),
             "auc_vs_params": str(plot_front(table, "head_params_deploy", out / "auc_vs_params.png",
                                             "AUC against head parameters", floor))}
    if len(study.trials):
        plots.update(optuna_plots(study, out))
    summary = summary_markdown(frame, table, front, best, conf)
    atomic_write(out / "summary.md", summary)
    return {"out_dir": str(out), "trials": len(frame), "complete": int((frame.state == "COMPLETE").sum()),
            "pareto": front["trials"].tolist(), "best_trials": str(best["trials"]), "plots": plots,
            "summary": summary}


def summary_markdown(frame: pd.DataFrame, table: pd.DataFrame, front: pd.DataFrame, best: pd.Series,
                     conf: ReportConf) -> str:
    states = frame["state"].value_counts().to_dict()
    cols = ["trials", "head", "auc", "auc_std", "seeds", "head_macs", "head_params_deploy", "macs_x_fewer",
            "params_x_fewer", "auc_diff", "dominates_baseline", "within_seed_spread", "role"]
    shown = front[[c for c in cols if c in front]].copy()
    shown["head"] = shown["head"].map(_short_head)
    if "role" in shown:
        shown["role"] = shown["role"].fillna("")
    lines = ["# Sweep report", "", f"{len(frame)} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in
                                                                          states.items()) + ".", ""]
    base = table[table["role"] == Role.BASELINE]
    if not base.empty:
        b = base.iloc[0]
        lines += [f"Baseline (RepVGG head): AUC {b['auc']:.2f}, {b['head_macs']:,.0f} head MACs, "
                  f"{b['head_params_deploy']:,.0f} deployed head parameters.", ""]
    if "static_auc" in frame and frame["static_auc"].notna().any():
        lines += [f"Static-box tracker (the first box forever) on the same sequences: AUC "
                  f"{frame['static_auc'].median():.2f}; a head below it does not track.", ""]
    aims = ", ".join(f"{o.name} {'up' if o.direction == 'maximize' else 'down'}" for o in _objectives(table, None))
    lines += [f"## Pareto-optimal architectures ({aims})", "",
              shown.to_markdown(index=False, floatfmt=".3g"), ""]
    spread = front.get("within_seed_spread")
    if spread is not None and spread.notna().any():
        within = front[spread == True]  # noqa: E712
        lines += [f"{len(within)} of the front's {int(spread.notna().sum())} AUC differences to the baseline are "
                  "within the seed-to-seed spread (|diff| <= combined std): those are not distinguishable from "
                  "the baseline.", ""]
    else:
        lines += ["Each architecture ran with one seed: AUC differences carry no spread estimate. Rerun with "
                  "several `trainer.seed` values to see which differences are real.", ""]
    lines += [f"## Chosen architecture (rule: {conf.rule})", "", f"Trial(s) {best['trials']}: "
              f"{_short_head(best['head'])}, AUC {best['auc']:.2f}, {best['head_macs']:,.0f} MACs. "
              "Retrain it with `python -m tracker.train --config-dir <this folder> --config-name best`.", ""]
    return "\n".join(lines)


def _short_head(head_json: str) -> str:
    try:
        h = json.loads(head_json)
    except (TypeError, ValueError):
        return str(head_json)
    text = f"{h.get('block')} x{h.get('num_blocks')} w{h.get('channels')} {h.get('activation')} k{h.get('kernel_size')}"
    text += f" f{h.get('final_kernel_size')}"
    if h.get("block") == "mbconv":
        text += f" e{h.get('expansion')}"
    if "norm" in h:
        text += " bn" if h["norm"] else " no-bn"
    # any other option tells architectures apart too: shown as it is
    shown = {"block", "num_blocks", "channels", "activation", "kernel_size", "final_kernel_size", "expansion", "norm"}
    return text + "".join(f" {k}={v}" for k, v in sorted(h.items()) if k not in shown and not k.startswith("_"))


def _main(cfg) -> None:
    conf = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ReportConf), cfg))
    from tracker.config import runs_root

    result = build_report(conf, runs_root())
    print(result.pop("summary"))
    print(f"report written to {result['out_dir']}")
    print(json.dumps(result))


def main() -> None:
    import hydra

    hydra.main(config_path="../conf", config_name="report", version_base="1.3")(_main)()


if __name__ == "__main__":
    main()
