"""From trials to architectures: means over seeds, bootstrap intervals, the front on the study's objectives, the
verdict against the baseline, and the choice of the best architecture."""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from search.objectives import DEFAULT_OBJECTIVES, Objective, as_minimised, dominates, non_dominated
from search.record import Role

from .config import ReportError
from .load import _is_duplicate, sequence_scores
from .stats import METHOD, BootstrapConf, Verdict, bootstrap_table, verdict

log = logging.getLogger(__name__)

ACCURACY = "auc"  # the figure the intervals and verdicts are about (per-sequence AUC is what evaluation writes)
# trial figures averaged per architecture (those present), besides the study's objectives
SHOWN = ("auc", "op50", "precision", "ao", "static_auc", "head_macs", "head_params", "head_params_deploy",
         "model_macs", "head_latency_ms", "frame_latency_ms", "head_latency_share", "head_latency_ratio",
         "frame_latency_ratio",
         "model_latency_ms", "int8_auc", "int8_auc_drop", "int8_frame_latency_ms", "onnx_frame_latency_ms", "fps")


def completed(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials an architecture's figures come from: complete, with an AUC, each run once (a duplicate
    repeats its original's figures)."""
    done = frame[(frame.state == "COMPLETE") & frame.get(ACCURACY, pd.Series(dtype=float)).notna()].copy()
    if "duplicate_of" in done:
        done = done[~done.apply(_is_duplicate, axis=1)]
    if "arch" not in done:
        done["arch"] = None
    missing = done["arch"].isna()
    done.loc[missing, "arch"] = "trial-" + done.loc[missing, "trial"].astype(str)
    for col in ("label", "head"):
        if col not in done:
            done[col] = None
        done[col] = done[col].fillna(done["arch"])
    return done


def architectures(frame: pd.DataFrame, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """Completed trials grouped by architecture (the whole head spec): the mean of each figure over seeds,
    `n_seeds`, the trial numbers and seeds, the role. The table keeps `objectives` (table.attrs)."""
    done = completed(frame)
    if done.empty:
        raise ReportError("no completed trial with an AUC to report")
    missing = [o.name for o in objectives if o.name not in done]
    if missing:
        raise ReportError(f"the completed trials record no {missing}, which the study optimises")
    numeric = [c for c in dict.fromkeys([*SHOWN, *(o.name for o in objectives)]) if c in done]
    grouped = done.groupby("arch", sort=False)
    table = grouped[numeric].mean()
    table["n_seeds"] = grouped.size()
    table["trials"] = grouped["trial"].apply(lambda s: ",".join(map(str, s)))
    table["seeds"] = grouped["seed"].apply(lambda s: ",".join(str(int(v)) for v in s if pd.notna(v))) \
        if "seed" in done else ""
    table["role"] = grouped["role"].apply(lambda s: next((r for r in s if isinstance(r, str)), None))
    table["label"] = grouped["label"].first()
    table["head"] = grouped["head"].first()
    table = table.reset_index()
    table.attrs["objectives"] = list(objectives)
    return table


def add_uncertainty(table: pd.DataFrame, frame: pd.DataFrame, conf: BootstrapConf = BootstrapConf(),
                    subdir: Optional[str] = None, scores: Optional[dict[int, pd.Series]] = None) -> pd.DataFrame:
    """The bootstrap columns (stats.COLUMNS) for every architecture of `table`, from the trials' per-sequence
    AUCs (in `subdir` of each run directory when given: another split's evaluation; `scores`: those AUCs
    already read, trial number -> Series by sequence). The sequences every trial was scored on are used;
    without per-sequence scores only the seeds are resampled (table.attrs["method"] says which)."""
    done = completed(frame)
    done = done[done["arch"].isin(table["arch"])]
    if scores is None:
        scores = sequence_scores(done, subdir=subdir)
    common = None
    if scores and all(int(t) in scores for t in done["trial"]):
        common = sorted(set.intersection(*(set(s.index) for s in scores.values())))
        dropped = {len(s) for s in scores.values()} - {len(common)}
        if dropped:
            log.warning("trials were scored on different sequences: %d shared ones are used", len(common))
    if subdir is not None and common is None:
        raise ReportError(f"not every trial has per-sequence scores in {subdir}")
    groups = done.groupby("arch", sort=False)["trial"].apply(list)
    if common and len(common) >= 2:
        arrays = {a: np.stack([scores[int(t)].loc[common].to_numpy() for t in trials]) for a, trials in groups.items()}
        method, sequences = METHOD, len(common)
    else:
        arrays = {a: done.set_index("trial").loc[trials, ACCURACY].to_numpy(float)[:, None]
                  for a, trials in groups.items()}
        method, sequences = "bootstrap over seeds only (no per-sequence scores were found)", 0
    base = table.loc[table["role"] == Role.BASELINE, "arch"]
    stats = bootstrap_table(arrays, base.iloc[0] if len(base) else None, conf)
    attrs = dict(table.attrs)
    table = table.drop(columns=[c for c in stats.columns if c in table]).merge(
        stats, left_on="arch", right_index=True, how="left")
    table.attrs.update(attrs)
    table.attrs.update(method=method, sequences=sequences, resamples=conf.resamples, confidence=conf.confidence)
    return table


def _objectives(table: pd.DataFrame, objectives: Optional[Sequence[Objective]]) -> list[Objective]:
    """The objectives given, else those architectures() kept on the table, else the default."""
    return list(objectives or table.attrs.get("objectives") or DEFAULT_OBJECTIVES)


def _minimised(frame: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    return as_minimised(frame[[o.name for o in objectives]].to_numpy(dtype=float), objectives)


def pareto_mask(table: pd.DataFrame, objectives: Optional[Sequence[Objective]] = None) -> np.ndarray:
    """True for rows no other row dominates, on the study's objectives (means over seeds)."""
    objectives = _objectives(table, objectives)
    return non_dominated(table[[o.name for o in objectives]].to_numpy(dtype=float), objectives)


def cost_objectives(table: pd.DataFrame, objectives: Optional[Sequence[Objective]] = None) -> list[Objective]:
    """What "cheaper" means: the study's objectives other than accuracy (head MACs for a single-objective study)."""
    costs = [o for o in _objectives(table, objectives) if o.name != ACCURACY]
    return costs or [Objective("head_macs", "minimize")]


def compare_to_baseline(table: pd.DataFrame, objectives: Optional[Sequence[Objective]] = None,
                        margin: float = 1.0) -> pd.DataFrame:
    """Cost ratios to the baseline, `cheaper` (at least as good in every cost objective, better in one),
    `below_static` (mean AUC not above the static box's on the same sequences), and `verdict` (stats.Verdict:
    `dominates` needs a cheaper head whose difference interval lies above zero, and one that tracks)."""
    for col in ("auc_diff_ci_low", "auc_diff_ci_high", "auc_diff"):  # no intervals (add_uncertainty): unconfirmed
        if col not in table:
            table[col] = np.nan
    static = table["static_auc"] if "static_auc" in table else pd.Series(np.nan, index=table.index)
    table["below_static"] = table["auc"] <= static
    base = table[table["role"] == Role.BASELINE]
    if base.empty:
        log.warning("no baseline (head=repvgg) in the sweep: ratios and verdicts are left empty")
        for col in ("macs_x_fewer", "params_x_fewer", "cheaper", "verdict"):
            table[col] = np.nan
        table["dominates_baseline"] = False
        return table
    b = base.iloc[0]
    table["macs_x_fewer"] = b["head_macs"] / table["head_macs"]
    table["params_x_fewer"] = b["head_params_deploy"] / table["head_params_deploy"]
    costs = cost_objectives(table, objectives)
    table["cheaper"] = dominates(_minimised(table, costs), _minimised(base.iloc[:1], costs))[:, 0]
    verdicts = []
    for _, row in table.iterrows():
        if row["role"] == Role.BASELINE:
            verdicts.append(Verdict.BASELINE)
            continue
        v = verdict(bool(row["cheaper"]), row["auc_diff_ci_low"], int(row["n_seeds"]), int(b["n_seeds"]), margin)
        if v == Verdict.DOMINATES and row["below_static"]:  # cheaper and better than a baseline that does not track
            v = Verdict.NO_WORSE
        verdicts.append(v)
    table["verdict"] = verdicts
    table["dominates_baseline"] = table["verdict"] == Verdict.DOMINATES
    table.attrs["margin"] = margin
    return table


def choose_best(table: pd.DataFrame, rule: str, max_head_macs: Optional[float] = None,
                max_head_params: Optional[float] = None, min_seeds: int = 1) -> tuple[Optional[pd.Series], str]:
    """The architecture best.yaml retrains, among the front's members with at least `min_seeds` seeds that
    track (above the static box), are not worse than the baseline (when there is one) and fit the budget: `budget`, the highest mean AUC; `knee`, the point nearest
    the ideal corner (AUC and log MACs scaled to [0, 1]). Returns (row, why) or (None, why not)."""
    front = table[table["pareto"]]
    seeded = front[front["n_seeds"] >= min_seeds]
    if seeded.empty:
        return None, (f"no Pareto-optimal architecture has {min_seeds} seeds yet (rerun the sweep to let its "
                      "confirmation stage add them, or pass min_seeds=1)")
    eligible = seeded[~seeded["below_static"].astype(bool)]
    if eligible.empty:
        return None, (f"every Pareto-optimal architecture with {min_seeds} seed(s) scores at or below the static "
                      "box: none of them tracks")
    if "verdict" in eligible:
        kept = eligible[eligible["verdict"] != Verdict.WORSE]
        if kept.empty:
            return None, (f"every Pareto-optimal architecture with {min_seeds} seed(s) is worse than the baseline "
                          f"({', '.join(eligible['label'])}): keep the baseline")
        eligible = kept
    if rule == "budget":
        fits = eligible
        if max_head_macs is not None:
            fits = fits[fits["head_macs"] <= max_head_macs]
        if max_head_params is not None:
            fits = fits[fits["head_params_deploy"] <= max_head_params]
        if fits.empty:
            cheapest = eligible.sort_values("head_macs").iloc[0]
            return None, (f"no eligible Pareto-optimal architecture fits the budget head_macs <= {max_head_macs}, "
                          f"head_params_deploy <= {max_head_params}; the cheapest is {cheapest['label']} with "
                          f"{cheapest['head_macs']:,.0f} MACs and {cheapest['head_params_deploy']:,.0f} parameters")
        return fits.sort_values(["auc", "head_macs"], ascending=[False, True]).iloc[0], \
            "the highest mean AUC among eligible front members within the budget"
    auc = eligible["auc"].to_numpy(float)
    macs = np.log10(eligible["head_macs"].to_numpy(float))
    span = lambda v: (v - v.min()) / (np.ptp(v) or 1.0)  # noqa: E731
    distance = np.hypot(1 - span(auc), span(macs))
    return eligible.iloc[int(np.argmin(distance))], "the eligible front member nearest the ideal corner (knee)"
