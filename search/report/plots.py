"""The report's figures. Every function returns a matplotlib Figure built without pyplot's global state (no
backend switch: a notebook keeps showing its own figures), except Optuna's plots, which are closed after saving."""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure

from search.record import Role, study_objectives

log = logging.getLogger(__name__)

COST_LABELS = {"head_macs": "head MACs (deploy form, log)", "head_params_deploy": "head parameters (deploy form, log)",
               "frame_latency_ms": "per-frame latency, ms (measured, batch 1, log)",
               "head_latency_ms": "head latency, ms (measured, batch 1, log)"}


def save_figure(fig: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return str(path)


def _ci(rows: pd.DataFrame) -> Optional[np.ndarray]:
    """Asymmetric error bars (2, n) from the interval columns, where there are any."""
    if "auc_ci_low" not in rows or rows["auc_ci_low"].isna().all():
        return None
    return np.vstack([(rows["auc"] - rows["auc_ci_low"]).clip(lower=0).fillna(0),
                      (rows["auc_ci_high"] - rows["auc"]).clip(lower=0).fillna(0)])


def plot_front(table: pd.DataFrame, cost: str, title: str, floor: Optional[float] = None,
               confidence: float = 0.95) -> Figure:
    """Mean AUC against a cost (log axis) per architecture, with bootstrap intervals as error bars; the front
    as a step line; the references marked; `floor`: the static-box tracker's AUC (not tracking at all)."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    others = table[~table["pareto"]]
    front = table[table["pareto"]].sort_values(cost)
    ax.errorbar(others[cost], others["auc"], yerr=_ci(others), fmt="o", c="0.65", ms=4, elinewidth=0.8,
                label="architectures")
    ax.errorbar(front[cost], front["auc"], yerr=_ci(front), fmt="o", c="tab:blue", ms=5, capsize=3,
                label=f"Pareto-optimal (mean, {confidence:.0%} interval)")
    ax.step(front[cost], front["auc"].cummax(), where="post", c="tab:blue", lw=1)
    for role, marker, colour, label in ((Role.BASELINE, "s", "tab:red", "RepVGG baseline"),
                                        (Role.USER_HEAD, "D", "tab:green", "user's DSConv head")):
        rows = table[table["role"] == role]
        if not rows.empty:
            ax.scatter(rows[cost], rows["auc"], marker=marker, s=80, facecolors="none", edgecolors=colour,
                       linewidths=2, label=label, zorder=5)
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, ls="--", c="0.4", lw=1, label=f"static box (AUC {floor:.1f})")
    ax.set_xscale("log")
    ax.set(xlabel=COST_LABELS.get(cost, cost), ylabel="AUC (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_macs_latency(table: pd.DataFrame, facts: dict[str, Any]) -> Figure:
    """Head MACs against measured head latency per architecture (log-log), references marked: where the points
    leave a rising line, MACs mislead about speed on this runtime."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    measure = facts.get("head_measure", "head_latency_ms")
    timed = table[table[measure].notna()]
    ax.scatter(timed["head_macs"], timed[measure], c="tab:blue", s=20, label="architectures")
    for role, marker, colour, label in ((Role.BASELINE, "s", "tab:red", "RepVGG baseline"),
                                        (Role.USER_HEAD, "D", "tab:green", "user's DSConv head")):
        rows = timed[timed["role"] == role]
        if not rows.empty:
            ax.scatter(rows["head_macs"], rows[measure], marker=marker, s=80, facecolors="none",
                       edgecolors=colour, linewidths=2, label=label, zorder=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    tau = facts.get("tau_head")
    rank = f"Kendall's tau {tau:.2f} (p {facts['p_head']:.3f})" if tau is not None and math.isfinite(tau) else \
        "too few architectures for a rank correlation"
    ylabel = ("head time / reference head's, same rounds (log)" if measure == "head_latency_ratio"
              else "head latency, ms (median, log)")
    ax.set(xlabel=COST_LABELS["head_macs"], ylabel=ylabel,
           title=f"Head MACs against measured latency: {rank}\n{facts['runtime']} on {facts['device']}, "
                 f"{facts['threads']} thread(s)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def normalised_study(study: optuna.Study, baseline: Optional[Sequence[float]]) -> tuple[optuna.Study, list[float],
                                                                                        str]:
    """The study's completed trials with every objective divided by the baseline's value (by its largest
    magnitude without a baseline), in memory, and a reference point worse than all of them: 0 for a maximised
    objective, 1.1 x the largest ratio for a minimised one. Hypervolumes in raw AUC x MACs x parameters are
    unreadable; these are in units of the baseline."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    values = np.array([t.values for t in complete], float)
    scale = np.asarray(baseline, float) if baseline is not None else np.abs(values).max(0)
    scale = np.where(scale == 0, 1.0, scale)
    scaled = values / scale
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials([optuna.trial.create_trial(values=list(v)) for v in scaled])
    reference = [0.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.1 * float(max(col.max(), 0))
                 for col, d in zip(scaled.T, study.directions)]
    unit = "the baseline's value" if baseline is not None else "the largest value"
    return copy, reference, unit


def optuna_plots(study: optuna.Study, out: Path, baseline_values: Optional[Sequence[float]] = None
                 ) -> dict[str, str]:
    """Hypervolume by trial (several objectives; objectives in units of the baseline) and parameter
    importances for the study's first objective, drawn by Optuna and titled with what they rest on."""
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator

    written: dict[str, str] = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    objectives = study_objectives(study)
    first = objectives[0]

    def save(ax: Any, name: str, title: str) -> None:
        ax.set_title(title, fontsize=9)
        ax.figure.set_size_inches(6.4, 4.0)
        ax.figure.tight_layout()
        written[name] = save_figure(ax.figure, out / f"{name}.png")
        plt.close(ax.figure)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # target is negated
        if len(study.directions) > 1 and complete:
            scaled, reference, unit = normalised_study(study, baseline_values)
            ax = optuna.visualization.matplotlib.plot_hypervolume_history(scaled, reference)
            ax.set_ylabel("hypervolume (objectives / " + unit + ")")
            point = ", ".join(f"{o.name} {r:.3g}" for o, r in zip(objectives, reference))
            save(ax, "hypervolume", f"Hypervolume of the front by trial ({len(complete)} complete trials)\n"
                                    f"objectives divided by {unit}; reference point: {point}")
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
                counts = {k: sum(k in t.params for t in complete) for k in params}
                conditional = sorted(k for k, n in counts.items() if n < len(complete))
                note = (f"; conditional ({', '.join(conditional)}) rest on the trials where they apply"
                        if conditional else "")
                save(ax, "importances", f"Importance for {first.name} (PED-ANOVA, {len(complete)} complete "
                                        f"trials{note})")
    return written
