"""How sure the report is: bootstrap intervals over seeds and sequences, verdicts against the baseline, and
the rank correlation between two splits.

Every architecture is a (seeds x sequences) table of per-sequence AUCs: each seed is a training run, each
sequence one scored video, the same sequences for every architecture. The trial's AUC is its row's mean and an
architecture's AUC is the mean over its seeds. The interval is a two-level (hierarchical) bootstrap, stratified
by architecture: each resample draws the sequences with replacement, one draw shared by every architecture and
seed (sequences are paired: a hard video is hard for every head, so differences are judged on the same draw),
then each architecture's seeds with replacement. With few seeds the plain bootstrap understates the seed
spread by (n-1)/n, so the seed means are spread out by sqrt(n/(n-1)) about their mean before the draw (the
usual small-sample correction). Percentile intervals.

scipy's `bootstrap` resamples independent observations of one level; this design (two levels, a draw shared
across architectures) is not one it expresses, so the resampling is a few lines of numpy here, and scipy gives
Kendall's tau.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import pandas as pd

METHOD = ("hierarchical bootstrap (sequences paired across architectures, then seeds within each architecture; "
          "seed means widened by sqrt(n/(n-1))), percentile interval")

COLUMNS = ("n_seeds", "auc_mean", "auc_std", "auc_ci_low", "auc_ci_high", "auc_diff", "auc_diff_ci_low",
           "auc_diff_ci_high", "p_improvement")


class Verdict:
    """What a candidate is, against the baseline (the words every claim in the report uses)."""

    BASELINE = "baseline"
    DOMINATES = "dominates"  # cheaper, and the AUC difference's interval lies above zero
    NO_WORSE = "no_worse"  # the interval's lower end is above -margin
    WORSE = "worse"
    UNCONFIRMED = "unconfirmed"  # fewer seeds than needed: no seed spread to judge a difference by

    WORDS = {BASELINE: "the baseline", DOMINATES: "dominates the baseline",
             NO_WORSE: "no worse than the baseline", WORSE: "worse than the baseline",
             UNCONFIRMED: "unconfirmed (too few seeds)"}


@dataclass(frozen=True)
class BootstrapConf:
    resamples: int = 4000
    confidence: float = 0.95
    seed: int = 0  # the resampling's own seed: the same study gives the same intervals

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 100:
            raise ValueError(f"bootstrap.resamples={self.resamples!r} is not allowed: an integer >= 100")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"bootstrap.confidence={self.confidence!r} is not allowed: between 0.5 and 1")


def _seed_means(scores: np.ndarray, sequence_draws: np.ndarray) -> np.ndarray:
    """(resamples, seeds): each seed's mean over each drawn set of sequences, widened about their mean."""
    means = scores[:, sequence_draws].mean(-1).T  # (seeds, resamples, sequences) -> (resamples, seeds)
    n = scores.shape[0]
    if n > 1:
        centre = means.mean(1, keepdims=True)
        means = centre + np.sqrt(n / (n - 1)) * (means - centre)
    return means


def bootstrap_table(scores: Mapping[str, np.ndarray], baseline: Optional[str] = None,
                    conf: BootstrapConf = BootstrapConf()) -> pd.DataFrame:
    """One row per architecture (the mapping's keys): COLUMNS. `scores[arch]` is (seeds, sequences) with the
    same sequences, in the same order, for every architecture. The `auc_diff*` columns and `p_improvement`
    (the share of resamples in which the candidate beats the baseline) are NaN without a baseline."""
    if not scores:
        raise ValueError("bootstrap_table: no architectures")
    arrays = {k: np.atleast_2d(np.asarray(v, dtype=float)) for k, v in scores.items()}
    widths = {a.shape[1] for a in arrays.values()}
    if len(widths) != 1:
        raise ValueError(f"bootstrap_table: architectures were scored on different numbers of sequences {widths}")
    if baseline is not None and baseline not in arrays:
        raise ValueError(f"bootstrap_table: the baseline {baseline!r} is not among the architectures")
    rng = np.random.default_rng(conf.seed)
    n_seq = widths.pop()
    sequence_draws = rng.integers(0, n_seq, (conf.resamples, n_seq))
    draws = {}
    for arch, a in arrays.items():
        means = _seed_means(a, sequence_draws)
        seed_draws = rng.integers(0, a.shape[0], means.shape)
        draws[arch] = np.take_along_axis(means, seed_draws, 1).mean(1)
    tail = 100 * (1 - conf.confidence) / 2
    rows = []
    for arch, a in arrays.items():
        per_seed = a.mean(1)
        row = {"arch": arch, "n_seeds": a.shape[0], "auc_mean": per_seed.mean(),
               "auc_std": per_seed.std(ddof=1) if a.shape[0] > 1 else np.nan}
        row["auc_ci_low"], row["auc_ci_high"] = np.percentile(draws[arch], [tail, 100 - tail])
        if baseline is not None:
            diff = draws[arch] - draws[baseline]
            row["auc_diff"] = per_seed.mean() - arrays[baseline].mean(1).mean()
            row["auc_diff_ci_low"], row["auc_diff_ci_high"] = np.percentile(diff, [tail, 100 - tail])
            row["p_improvement"] = float((diff > 0).mean())
        else:
            row.update(auc_diff=np.nan, auc_diff_ci_low=np.nan, auc_diff_ci_high=np.nan, p_improvement=np.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("arch")[list(COLUMNS)]


def verdict(cheaper: bool, diff_ci_low: float, n_seeds: int, baseline_seeds: int, margin: float,
            min_seeds: int = 2) -> str:
    """`dominates` when cheaper and the difference's interval lies above zero; `no_worse` when its lower end is
    above -margin; else `worse`; `unconfirmed` when either side ran with fewer than `min_seeds` seeds."""
    if min(n_seeds, baseline_seeds) < min_seeds or not np.isfinite(diff_ci_low):
        return Verdict.UNCONFIRMED
    if cheaper and diff_ci_low > 0:
        return Verdict.DOMINATES
    if diff_ci_low > -margin:
        return Verdict.NO_WORSE
    return Verdict.WORSE


def kendall_tau(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Kendall's tau-b between two scorings of the same architectures and its two-sided p-value (NaN, NaN
    with fewer than three architectures)."""
    from scipy.stats import kendalltau

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return float("nan"), float("nan")
    result = kendalltau(a, b)
    return float(result.statistic), float(result.pvalue)
