"""The report's statistics on per-sequence scores with a known answer."""
from __future__ import annotations

import numpy as np
import pytest

from search.report.stats import BootstrapConf, Verdict, bootstrap_table, kendall_tau, verdict


def _head(rng, mean, seeds, difficulty, seed_sd=1.5, noise=3.0):
    """(seeds, sequences) AUCs: the head's mean, a per-seed offset (training noise), the sequences' shared
    difficulty and per-(seed, sequence) noise."""
    return mean + rng.normal(0, seed_sd, (seeds, 1)) + difficulty[None] + rng.normal(0, noise, (seeds, len(difficulty)))


@pytest.mark.parametrize("seeds", [3, 5])
def test_equal_heads_interval_of_the_difference_holds_zero_about_95_percent(seeds):
    rng = np.random.default_rng(seeds)
    hits, draws = 0, 200
    for r in range(draws):
        difficulty = rng.normal(0, 10, 25)
        table = bootstrap_table({"base": _head(rng, 30, seeds, difficulty), "cand": _head(rng, 30, seeds, difficulty)},
                                "base", BootstrapConf(resamples=1000, seed=r))
        hits += table.loc["cand", "auc_diff_ci_low"] <= 0 <= table.loc["cand", "auc_diff_ci_high"]
    assert 0.88 <= hits / draws <= 0.99, hits / draws


def test_clearly_better_head_has_p_improvement_near_one():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 10, 25)
    table = bootstrap_table({"base": _head(rng, 30, 3, difficulty), "cand": _head(rng, 36, 3, difficulty)}, "base")
    row = table.loc["cand"]
    assert row["p_improvement"] > 0.99 and row["auc_diff_ci_low"] > 0
    assert row["auc_diff"] == pytest.approx(row["auc_mean"] - table.loc["base", "auc_mean"])
    base = table.loc["base"]
    assert base["auc_diff"] == 0 and base["auc_diff_ci_low"] == base["auc_diff_ci_high"] == 0


def test_pairing_sequences_narrows_the_difference():
    """A shared sequence draw cancels the videos' difficulty: the difference's interval is far narrower than
    either head's own interval."""
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0, 15, 25)
    table = bootstrap_table({"base": _head(rng, 30, 3, difficulty), "cand": _head(rng, 31, 3, difficulty)}, "base")
    own = table.loc["cand", "auc_ci_high"] - table.loc["cand", "auc_ci_low"]
    diff = table.loc["cand", "auc_diff_ci_high"] - table.loc["cand", "auc_diff_ci_low"]
    assert diff < own / 2


def test_one_seed_has_no_std_and_the_same_sequences_are_required():
    table = bootstrap_table({"a": np.array([[30.0, 40.0, 50.0]])})
    assert table.loc["a", "n_seeds"] == 1 and np.isnan(table.loc["a", "auc_std"])
    assert np.isnan(table.loc["a", "p_improvement"])
    with pytest.raises(ValueError, match="different numbers of sequences"):
        bootstrap_table({"a": np.ones((2, 3)), "b": np.ones((2, 4))})
    with pytest.raises(ValueError, match="baseline 'z'"):
        bootstrap_table({"a": np.ones((2, 3))}, "z")
    with pytest.raises(ValueError, match="resamples=10 is not allowed"):
        BootstrapConf(resamples=10)


def test_the_same_inputs_give_the_same_intervals():
    rng = np.random.default_rng(2)
    scores = {"a": rng.normal(30, 5, (3, 10)), "b": rng.normal(31, 5, (3, 10))}
    assert bootstrap_table(scores, "a").equals(bootstrap_table(scores, "a"))


@pytest.mark.parametrize("cheaper, low, seeds, expected", [
    (True, 0.4, 3, Verdict.DOMINATES),
    (False, 0.4, 3, Verdict.NO_WORSE),  # better but not cheaper: no worse, never "dominates"
    (True, -0.5, 3, Verdict.NO_WORSE),  # the interval holds zero, its lower end above -margin (1.0)
    (True, -1.5, 3, Verdict.WORSE),
    (True, 0.4, 1, Verdict.UNCONFIRMED),  # one seed: no spread to judge by
])
def test_verdicts_follow_the_interval(cheaper, low, seeds, expected):
    assert verdict(cheaper, low, seeds, 3, margin=1.0) == expected


def test_kendall_tau():
    tau, p = kendall_tau([1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7])
    assert tau == pytest.approx(1.0) and p < 0.01
    tau, _ = kendall_tau([1, 2, 3, 4], [4, 3, 2, 1])
    assert tau == pytest.approx(-1.0)
    assert all(np.isnan(kendall_tau([1, 2], [1, 2])))
