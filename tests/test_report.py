"""The Pareto report: from a study (as the sweeper records it) and from a plain Hydra grid."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from search.report import ReportConf, ReportError, build_report, pareto_mask
from search.study import open_storage
from tracker.config import CONF_DIR, compose

ROOT = CONF_DIR.parent
TINY = ["trainer=tiny", "latency=quick", "trainer.epochs=1", "data.generate.train_sequences=3", "data.generate.val_sequences=2",
        "data.generate.frames=10", "data.generate.width=128", "data.generate.height=96"]

# (role, head overrides, auc, head_macs, head_params_deploy)
TRIALS = [
    ("baseline", ["head=repvgg"], 40.0, 118_886_400, 297_474),
    ("user_head", ["head=dsconv"], 38.0, 5_657_600, 14_466),
    (None, ["head=dsconv", "head.num_blocks=3"], 41.0, 7_526_400, 19_266),  # dominates the baseline
    (None, ["head=mbconv"], 30.0, 20_000_000, 60_000),  # dominated by the user's head
    (None, ["head=dsconv", "head.channels=32"], 35.0, 3_000_000, 8_000),
]
DEFAULT = [("auc", "maximize"), ("head_macs", "minimize"), ("head_params_deploy", "minimize")]


SEQUENCES = [f"GOT-10k_Val_{i:06d}" for i in range(1, 9)]
DIFFICULTY = np.linspace(-12, 12, len(SEQUENCES))  # a hard video is hard for every head
STATIC_AUC = 15.0


def _write_sequence_scores(run_dir: Path, auc: float, rng: np.random.Generator, noise: float = 2.0,
                           int8_drop: Optional[float] = None) -> tuple[float, Optional[float]]:
    """Per-sequence AUCs around `auc` as tracker.evaluate writes them (and the INT8 tracker's, `int8_drop` lower
    with some noise); returns their means (the trial's AUC, its INT8 AUC)."""
    per_seq = auc + DIFFICULTY + rng.normal(0, noise, len(SEQUENCES))
    columns = {"model": per_seq, "static": STATIC_AUC + DIFFICULTY}
    if int8_drop is not None:
        columns["int8"] = per_seq - int8_drop + rng.normal(0, 0.3, len(SEQUENCES))
    table = pd.DataFrame({"tracker": [t for t in columns for _ in SEQUENCES], "sequence": SEQUENCES * len(columns),
                          "auc": np.concatenate(list(columns.values()))})
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    table.to_csv(run_dir / "plots" / "per_sequence.csv", index=False)
    return float(per_seq.mean()), (None if int8_drop is None else float(columns["int8"].mean()))


def _fake_study(tmp_path: Path, seeds: int = 1, objectives: Optional[list] = None, trials: list = TRIALS,
                seed_sd: float = 0.5, confirm: Optional[int] = None, int8: Optional[dict] = None) -> str:
    """A study laid out as the sweeper writes it: objectives, roles, metrics, cost, head, run dirs, per-sequence
    scores (the attribute names spelled out: they are what studies on disk hold). `objectives`: [(name,
    direction), ...] stored as the sweeper stores them; None: a study that names none (read with the default
    ones). `confirm`: the confirmation stage's seeds, stored as the sweeper stores them."""
    storage = open_storage(str(tmp_path / "runs" / "sweeps" / "fake" / "journal.log"))
    study = optuna.create_study(study_name="fake", storage=storage,
                                directions=[d for _, d in objectives or DEFAULT])
    if objectives:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([n for n, _ in objectives])
        study.set_user_attr("objectives", [{"name": n, "direction": d} for n, d in objectives])
    if confirm:
        study.set_user_attr("confirm", {"seeds": confirm, "front": 4, "max_trials": None})
    rng = np.random.default_rng(0)
    number = 0
    for role, overrides, auc, macs, params in trials:
        for seed in range(seeds):
            cfg = compose("train", [*overrides, *TINY, f"trainer.seed={seed}"])
            run_dir = tmp_path / "runs" / "sweeps" / "fake" / "trials" / str(number)
            run_dir.mkdir(parents=True)
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
            (run_dir / ".hydra").mkdir()
            choices = {"head": overrides[0].split("=")[1], "trainer": "tiny", "data": "synthetic"}
            (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
            drop = None if int8 is None else int8[" ".join(overrides)]
            value, int8_auc = _write_sequence_scores(run_dir, auc + (rng.normal(0, seed_sd) if seeds > 1 else 0.0),
                                                     rng, noise=2.0 if seeds > 1 else 0.0, int8_drop=drop)
            head = OmegaConf.to_container(cfg.head, resolve=True, enum_to_str=True)
            metrics = {"auc": value, "precision": value + 5, "head_macs": macs, "head_params_deploy": params,
                       "head_params": params, "static_auc": STATIC_AUC, "model_macs": 1.5e9 + macs,
                       # depthwise heads run slower than their MACs say: the report must show where MACs mislead
                       "head_latency_ms": 0.05 + macs / 1e8 + (0.5 if "dsconv" in overrides[0] else 0.0),
                       "latency_runtime": "torch", "latency_device": "test cpu", "latency_threads": 1}
            metrics["frame_latency_ms"] = 2.0 + metrics["head_latency_ms"]
            reference_head = 0.05 + 118_886_400 / 1e8  # the baseline's, timed in the same rounds
            metrics.update(head_latency_ratio=metrics["head_latency_ms"] / reference_head,
                           frame_latency_ratio=metrics["frame_latency_ms"] / (2.0 + reference_head))
            if int8_auc is not None:
                metrics.update(int8_auc=int8_auc, int8_auc_drop=value - int8_auc, int8_scope="model",
                               int8_frame_latency_ms=1.0, onnx_frame_latency_ms=2.0)
            study.add_trial(optuna.trial.create_trial(
                values=[metrics[n] for n, _ in objectives or DEFAULT], params={"head": choices["head"]},
                distributions={"head": optuna.distributions.CategoricalDistribution(["repvgg", "dsconv", "mbconv"])},
                user_attrs={"role": role, "run_dir": str(run_dir), "head": head, "metrics": metrics, "seed": seed,
                            "cost": {"head_macs": macs, "head_params_deploy": params}, "duration_s": 1.0}))
            number += 1
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"fail_reason": "NonFiniteLossError: loss became nan"}))
    return "fake"


def test_pareto_mask():
    table = pd.DataFrame({"auc": [40, 38, 41, 30], "head_macs": [100, 5, 7, 20], "head_params_deploy": [9, 1, 2, 3]})
    assert pareto_mask(table).tolist() == [False, True, True, False]


def test_report_from_a_study(tmp_path):
    name = _fake_study(tmp_path)
    result = build_report(ReportConf(transfer=None, study=name), tmp_path / "runs")
    out = Path(result["out_dir"])
    assert out == tmp_path / "runs" / "sweeps" / "fake" / "report"
    for file in ["trials.csv", "architectures.csv", "pareto.csv", "summary.md", "best.yaml", "best.json",
                 "auc_vs_macs.png", "auc_vs_params.png", "hypervolume.png", "importances.png",
                 "auc_vs_latency.png", "macs_vs_latency.png"]:
        assert (out / file).is_file(), file
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 6 and (trials.state == "FAIL").sum() == 1
    assert {"arch", "seed", "role", "run_dir", "label"} <= set(trials.columns) and "head" not in trials
    assert "NonFiniteLossError" in trials.loc[trials.state == "FAIL", "reason"].iloc[0]
    pareto = pd.read_csv(out / "pareto.csv")
    assert sorted(pareto["trials"].astype(str)) == ["1", "2", "4"]  # the baseline and mbconv are dominated
    for column in ("arch", "label", "role", "n_seeds", "auc_mean", "auc_std", "auc_ci_low", "auc_ci_high",
                   "auc_diff", "auc_diff_ci_low", "auc_diff_ci_high", "p_improvement", "verdict", "head.block"):
        assert column in pareto, column
    assert "head" not in pareto  # the head spec is one column per field, not a JSON string
    row = pareto[pareto["trials"].astype(str) == "2"].iloc[0]
    assert row["macs_x_fewer"] == pytest.approx(118_886_400 / 7_526_400)
    assert row["auc_diff"] == pytest.approx(1.0)
    assert row["verdict"] == "unconfirmed"  # one seed each: no seed spread to judge a difference by
    archs = pd.read_csv(out / "architectures.csv")
    assert len(archs) == 5 and archs.loc[archs["role"] == "baseline", "verdict"].tolist() == ["baseline"]
    assert set(trials["arch"].dropna()) == set(archs["arch"])
    summary = (out / "summary.md").read_text()
    assert "Baseline (RepVGG head, `repvgg x2 w128 relu k3 f3`): AUC 40.0" in summary
    assert "bootstrap" in summary and "unconfirmed" in summary and "nan" not in summary.lower()
    assert "e+0" not in summary  # counts read 118.9 M, not 1.19e+08
    # measured latency: where MACs mislead, and the most a head can save
    assert "## MACs against measured latency" in summary and "torch on test cpu, 1 thread(s)" in summary
    assert "compared by their time over the reference head's, timed in the same rounds" in summary
    assert "Kendall's tau between head MACs and head latency" in summary
    assert "Fewer MACs but a slower head: `dsconv" in summary
    share = 100 * (0.05 + 118_886_400 / 1e8) / (2.05 + 118_886_400 / 1e8)
    assert f"no head can make the frame more than {share:.1f} % faster" in summary
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["head"]["num_blocks"] == 3 and best["head"]["block"] == "dsconv"  # highest AUC, no budget
    text = (out / "best.yaml").read_text()
    assert "study 'fake'" in text and "trials 2" in text and "AUC 41.0" in text
    assert len(text.splitlines()) < 40  # the head and what differs from the presets, not a resolved dump
    assert json.loads((out / "best.json").read_text())["trials"] == [2]


def test_budget_and_knee_rules(tmp_path):
    name = _fake_study(tmp_path)
    build_report(ReportConf(transfer=None, study=name, max_head_macs=4e6), tmp_path / "runs")
    out = tmp_path / "runs" / "sweeps" / "fake" / "report"
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["head"]["channels"] == 32
    build_report(ReportConf(transfer=None, study=name, rule="knee"), tmp_path / "runs")
    # nothing fits: the report is still written, names the cheapest front cost, and no stale best.yaml is left
    result = build_report(ReportConf(transfer=None, study=name, max_head_macs=10), tmp_path / "runs")
    assert result["best"] is None and not (out / "best.yaml").exists()
    assert "cheapest is dsconv x2 w32" in (out / "summary.md").read_text()
    assert (out / "pareto.csv").is_file()
    with pytest.raises(ReportError, match="rule='best' is not allowed"):
        build_report(ReportConf(transfer=None, study=name, rule="best"), tmp_path / "runs")
    with pytest.raises(ReportError, match="no study 'missing'"):
        build_report(ReportConf(transfer=None, study="missing"), tmp_path / "runs")


def test_seeded_trials_carry_intervals_and_verdicts(tmp_path):
    name = _fake_study(tmp_path, seeds=3, seed_sd=0.3, confirm=3)
    result = build_report(ReportConf(transfer=None, study=name), tmp_path / "runs")
    out = Path(result["out_dir"])
    archs = pd.read_csv(out / "architectures.csv").set_index("label")
    assert (archs["n_seeds"] == 3).all() and (archs["auc_std"] > 0).all()
    assert (archs["auc_ci_low"] < archs["auc_mean"]).all() and (archs["auc_mean"] < archs["auc_ci_high"]).all()
    verdicts = archs["verdict"].to_dict()
    assert verdicts["repvgg x2 w128 relu k3 f3"] == "baseline"
    assert verdicts["mbconv x2 w64 relu6 k3 f1 e4 bn"] == "worse"  # 10 points below: its interval says so
    assert archs.loc["mbconv x2 w64 relu6 k3 f1 e4 bn", "p_improvement"] < 0.01
    # the summary's words follow the intervals: each claim's verdict is the one in the table
    summary = (out / "summary.md").read_text()
    for label, v in verdicts.items():
        if v != "baseline" and (archs.loc[label, "pareto"] or label.startswith("dsconv x2 w64")):
            words = {"dominates": "dominates the baseline", "no_worse": "no worse than the baseline",
                     "worse": "worse than the baseline"}[v]
            assert f"`{label}` is **{words}**" in summary, label
    assert "3 seed(s)" in summary and "sequences" in summary


def test_a_head_below_the_static_box_neither_dominates_nor_is_chosen(tmp_path):
    cheap_bad = (None, ["head=dsconv", "head.channels=16"], 12.0, 1_000_000, 4_000)  # below the static box
    name = _fake_study(tmp_path, trials=[*TRIALS, cheap_bad])
    result = build_report(ReportConf(transfer=None, study=name, max_head_macs=2e6), tmp_path / "runs")
    archs = pd.read_csv(Path(result["out_dir"]) / "architectures.csv").set_index("label")
    assert bool(archs.loc["dsconv x2 w16 relu6 k3 f1 no-bn", "below_static"])
    assert archs.loc["dsconv x2 w16 relu6 k3 f1 no-bn", "verdict"] != "dominates"
    assert result["best"] is None  # the only head within the budget does not track
    summary = (Path(result["out_dir"]) / "summary.md").read_text()
    assert "**Warning:** 1 architecture(s) score at or below the static box" in summary


def test_best_yaml_needs_the_confirmed_seeds(tmp_path):
    name = _fake_study(tmp_path, confirm=3)  # the study aims at 3 seeds; every architecture has one
    result = build_report(ReportConf(transfer=None, study=name), tmp_path / "runs")
    assert result["best"] is None and "has 3 seeds" in result["summary"]
    result = build_report(ReportConf(transfer=None, study=name, min_seeds=1), tmp_path / "runs")
    assert result["best"] == "dsconv x3 w64 relu6 k3 f1 no-bn"


def test_best_yaml_composes_and_retrains(tmp_path, monkeypatch):
    from tracker.task import run_trial

    monkeypatch.setenv("LIGHTTRACK_RUNS", str(tmp_path / "runs"))
    name = _fake_study(tmp_path)
    out = Path(build_report(ReportConf(transfer=None, study=name), tmp_path / "runs")["out_dir"])
    cfg = compose("best", [f"data.cache_dir={tmp_path / 'data'}"], config_dir=out)
    assert cfg.head.block == "dsconv" and cfg.head.num_blocks == 3 and cfg.trainer.epochs == 1
    result = run_trial(cfg, tmp_path / "retrain", progress=False)
    assert result.cost["head_params"] == 19_266


def test_report_reads_a_plain_grid(tmp_path):
    env = {**__import__("os").environ, "LIGHTTRACK_RUNS": str(tmp_path / "runs")}
    grid = subprocess.run([sys.executable, "-m", "tracker.train", "-m", "head=repvgg,dsconv", *TINY,
                           f"data.cache_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'grid'}"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert grid.returncode == 0, grid.stderr[-2000:]
    tiny_test = '["data.generate.val_sequences=3","data.generate.frames=8","data.generate.width=128",' \
                '"data.generate.height=96"]'
    out = subprocess.run([sys.executable, "-m", "search.report", f"multirun={tmp_path / 'grid'}",
                          f"hydra.run.dir={tmp_path / 'report_run'}", f"transfer_overrides={tiny_test}"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["complete"] == 2
    trials = pd.read_csv(tmp_path / "grid" / "report" / "trials.csv")
    assert set(trials["param_head"]) == {"repvgg", "dsconv"}
    pareto = pd.read_csv(tmp_path / "grid" / "report" / "pareto.csv")
    user = pareto[pareto["role"] == "user_head"].iloc[0]  # found by its config: a grid has no roles
    assert user["macs_x_fewer"] == pytest.approx(297_216 / 14_144)  # per feature cell, any feature size
    # one epoch of training does not beat the static box: nothing is chosen, and the summary says why
    summary = (tmp_path / "grid" / "report" / "summary.md").read_text()
    if not (tmp_path / "grid" / "report" / "best.yaml").is_file():
        assert "scores at or below the static box: none of them tracks. No best.yaml was written." in summary
    # transfer=auto: the synthetic runs were scored again on the held-out test preset, cached in their run dirs
    transfer = pd.read_csv(tmp_path / "grid" / "report" / "transfer.csv")
    assert set(transfer["role"]) == {"baseline", "user_head"} and transfer["test_n_seeds"].tolist() == [1, 1]
    assert transfer["test_auc_mean"].between(0, 100).all()
    assert result["transfer"]["preset"] == "synthetic_test" and result["transfer"]["sequences"] == 3
    assert "## Transfer to `synthetic_test` (never used for selection)" in summary and "Kendall's tau" in summary
    assert len(list((tmp_path / "grid").glob("*/transfer/synthetic_test-*/plots/per_sequence.csv"))) == 2


def test_notebook_runs_on_a_tiny_study(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    name = _fake_study(tmp_path)
    monkeypatch.setenv("LIGHTTRACK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LIGHTTRACK_STUDY", name)
    notebook = nbformat.read(ROOT / "notebooks" / "pareto.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", "")) for o in outputs)
    assert "6 trials" in text and "hierarchical bootstrap" in text
    assert "The RepVGG baseline scores AUC 40.0 [" in text and "are unconfirmed (too few seeds)" in text
    assert "The user's DSConv head (dsconv x2 w64 relu6 k3 f1 no-bn) is unconfirmed" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # two fronts with interval bars, hypervolume, importances, latency (when measured)
    assert not (tmp_path / "runs" / "sweeps" / name / "report").exists()  # the notebook writes nothing


def test_the_front_is_on_the_objectives_the_study_stored(tmp_path):
    # fewest parameters (on the 3-objective front), but the user's head has more AUC and fewer MACs
    few_params = (None, ["head=dsconv", "head.num_blocks=3", "head.channels=32"], 36.0, 6_000_000, 5_000)
    name = _fake_study(tmp_path, objectives=[("auc", "maximize"), ("head_macs", "minimize")],
                       trials=[*TRIALS, few_params])
    result = build_report(ReportConf(transfer=None, study=name), tmp_path / "runs")
    out = Path(result["out_dir"])
    assert sorted(pd.read_csv(out / "pareto.csv")["trials"].astype(str)) == ["1", "2", "4"]
    assert "## Pareto-optimal architectures (auc up, head_macs down; on the means)" in (out / "summary.md").read_text()
    assert (out / "hypervolume.png").is_file()
    # the same trials on the default objectives: that head is on the front
    name = _fake_study(tmp_path / "default", trials=[*TRIALS, few_params])
    build_report(ReportConf(transfer=None, study=name), tmp_path / "default" / "runs")
    front = pd.read_csv(tmp_path / "default" / "runs" / "sweeps" / "fake" / "report" / "pareto.csv")
    assert sorted(front["trials"].astype(str)) == ["1", "2", "4", "5"]


def test_single_objective_study_gets_its_front_and_importance_plot(tmp_path):
    name = _fake_study(tmp_path, objectives=[("auc", "maximize")])
    result = build_report(ReportConf(transfer=None, study=name), tmp_path / "runs")
    out = Path(result["out_dir"])
    assert result["pareto"] == ["2"] and set(result["plots"]) == {"auc_vs_macs", "auc_vs_params", "importances",
                                                                  "auc_vs_latency", "macs_vs_latency"}
    assert (out / "importances.png").is_file() and not (out / "hypervolume.png").exists()
    # a grid (no study) is read with the sweeper's default objectives
    from search.objectives import DEFAULT_OBJECTIVES
    from search.report import frame_to_study
    from search.record import study_objectives

    grid = frame_to_study(pd.DataFrame({"state": ["COMPLETE"], "auc": [1.0], "head_macs": [2],
                                        "head_params_deploy": [3]}))
    assert study_objectives(grid) == list(DEFAULT_OBJECTIVES)


def test_architectures_differ_in_any_head_field(tmp_path):
    from search.report import architectures, study_frame

    study = optuna.create_study(directions=[d for _, d in DEFAULT])
    user = OmegaConf.to_container(compose("train", ["head=dsconv"]).head, resolve=True, enum_to_str=True)
    heads = [user, user, {**user, "norm": True}, {**user, "dropout": 0.1}]  # dropout: a head option added later
    for i, head in enumerate(heads):
        study.add_trial(optuna.trial.create_trial(
            values=[30.0 + i, 5e6, 1e4], user_attrs={"head": head, "metrics": {"auc": 30.0 + i, "head_macs": 5e6,
                                                                              "head_params_deploy": 1e4}}))
    table = architectures(study_frame(study))
    assert table["n_seeds"].tolist() == [2, 1, 1] and table["trials"].tolist() == ["0,1", "2", "3"]
    assert table["label"].tolist() == ["dsconv x2 w64 relu6 k3 f1 no-bn", "dsconv x2 w64 relu6 k3 f1 bn",
                                       "dsconv x2 w64 relu6 k3 f1 no-bn dropout=0.1"]  # from the spec: no field lost
    assert table["arch"].nunique() == 3


def test_the_trial_record_keeps_the_stored_names():
    """search.record owns the attribute names; they are the ones studies on disk carry."""
    import re

    from search.record import Role, StudyAttr, TrialAttr, trial_row

    assert (Role.BASELINE, Role.USER_HEAD) == ("baseline", "user_head")
    assert {k: v for k, v in vars(TrialAttr).items() if k.isupper()} == {
        "ROLE": "role", "REFERENCE_OVERRIDES": "reference_overrides", "REFERENCE_PARAMS": "reference_params",
        "OVERRIDES": "overrides", "HOST": "host", "PID": "pid", "TRAINED": "trained", "HEAD": "head",
        "CONFIG_KEY": "config_key", "COST": "cost", "RUN_DIR": "run_dir", "DUPLICATE_OF": "duplicate_of",
        "DURATION_S": "duration_s", "METRICS": "metrics", "FAIL_REASON": "fail_reason",
        "PRUNE_REASON": "prune_reason", "NOTE": "note", "ORPHANED": "orphaned", "SEED": "seed", "STAGE": "stage",
        "CONFIRM_SEED": "confirm_seed", "REPEAT_OF": "repeat_of"}
    assert {k: v for k, v in vars(StudyAttr).items() if k.isupper()} == {
        "OBJECTIVES": "objectives", "BUDGET": "budget", "SPACE": "space", "RECIPE": "recipe",
        "SWEEP_PROCESSES": "sweep_processes", "CONFIRM": "confirm"}
    old = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={
        "role": "baseline", "duration_s": 2.0, "run_dir": "/r", "prune_reason": "over budget", "cost": {"head_macs": 3},
        "metrics": {"auc": 1.0}, "head": {"block": "repvgg"}})
    assert trial_row(old) == {"trial": old.number, "state": "PRUNED", "role": "baseline", "stage": "search",
                              "seed": None, "duration_s": 2.0,
                              "run_dir": "/r", "duplicate_of": None, "reason": "over budget", "head_macs": 3,
                              "auc": 1.0, "head": {"block": "repvgg"}}
    # no other module spells a record name: the sweeper, the study and the report go through search.record
    for path in (*map(str, ROOT.glob("hydra_plugins/lighttrack_sweeper/*.py")), *map(str, ROOT.glob("search/study/*.py")),
                 *map(str, ROOT.glob("search/report/*.py"))):
        text = (ROOT / path).read_text()
        spelled = re.findall(r"(?:set_user_attr\(|user_attrs\.get\(|user_attrs\[|user_attrs=\{)\s*[\"'](\w+)", text)
        assert not spelled, (path, spelled)


def test_a_plain_grid_over_seeds_is_read_as_repeats(tmp_path):
    """`python -m tracker.train -m head=repvgg,dsconv trainer.seed=1,2,3`: six job folders, two architectures
    of three seeds each, compared with the same intervals as a study's."""
    rng = np.random.default_rng(0)
    job = 0
    for head, auc, macs, params in (("repvgg", 40.0, 118_886_400, 297_474), ("dsconv", 30.0, 5_657_600, 14_466)):
        for seed in (1, 2, 3):
            run_dir = tmp_path / "grid" / str(job)
            (run_dir / ".hydra").mkdir(parents=True)
            (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"head={head}", f"trainer.seed={seed}"]))
            OmegaConf.save(compose("train", [f"head={head}", *TINY, f"trainer.seed={seed}"]), run_dir / "config.yaml",
                           resolve=True)
            value, _ = _write_sequence_scores(run_dir, auc + rng.normal(0, 0.3), rng)
            (run_dir / "metrics.json").write_text(json.dumps({"auc": value, "head_macs": macs, "static_auc": 15.0,
                                                              "head_params_deploy": params}))
            job += 1
    result = build_report(ReportConf(transfer=None, multirun=str(tmp_path / "grid")), tmp_path / "runs")
    archs = pd.read_csv(Path(result["out_dir"]) / "architectures.csv").set_index("role")
    assert archs["n_seeds"].tolist() == [3, 3] and archs.loc["baseline", "seeds"] == "1,2,3"
    assert archs.loc["user_head", "verdict"] == "worse" and archs.loc["user_head", "p_improvement"] < 0.01
    trials = pd.read_csv(Path(result["out_dir"]) / "trials.csv")
    assert sorted(trials["seed"]) == [1, 1, 2, 2, 3, 3] and trials["arch"].nunique() == 2


def test_best_yaml_is_never_a_head_worse_than_the_baseline(tmp_path):
    # the dsconv heads are clearly worse than the baseline and the baseline is dominated by nothing confirmed:
    # nothing to retrain but the baseline itself, which is on the front
    worse = [TRIALS[0], TRIALS[1], (None, ["head=dsconv", "head.channels=32"], 30.0, 3_000_000, 8_000)]
    name = _fake_study(tmp_path, seeds=3, seed_sd=0.3, confirm=3, trials=worse)
    result = build_report(ReportConf(transfer=None, study=name), tmp_path / "runs")
    archs = pd.read_csv(Path(result["out_dir"]) / "architectures.csv").set_index("label")
    assert (archs.drop(index="repvgg x2 w128 relu k3 f3")["verdict"] == "worse").all()
    assert result["best"] == "repvgg x2 w128 relu k3 f3"


def test_transfer_reads_each_runs_scores_once(tmp_path, monkeypatch):
    """The transfer check takes the model's and the static box's per-sequence AUCs from one read of each run's
    per_sequence.csv (the runs' evaluations on the split are there already: nothing is tracked again)."""
    import shutil
    from collections import Counter

    from search.report import transfer

    name = _fake_study(tmp_path)
    runs = sorted((tmp_path / "runs" / "sweeps" / "fake" / "trials").iterdir())
    for run_dir in runs:
        shutil.copytree(run_dir / "plots", run_dir / transfer.subdir("held_out") / "plots")
    monkeypatch.setattr(transfer, "_compose_data", lambda preset, extra=(): None)
    reads, read_csv = Counter(), pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda path, *a, **k: reads.update([str(path)]) or read_csv(path, *a, **k))
    result = build_report(ReportConf(transfer="held_out", study=name), tmp_path / "runs", progress=False)
    scores = {p: n for p, n in reads.items() if p.endswith("per_sequence.csv")}
    assert set(scores.values()) == {1} and sum("/transfer/held_out/" in p for p in scores) == result["transfer"]["runs"]
    assert result["transfer"]["static_auc"] == pytest.approx(STATIC_AUC)  # the static box's, read in the same pass
    table = pd.read_csv(Path(result["out_dir"]) / "transfer.csv")
    assert table["test_auc_mean"].to_numpy() == pytest.approx(table["val_auc_mean"].to_numpy())


def test_transfer_words_say_when_the_front_does_not_hold_or_nothing_tracks():
    from search.report.export import transfer_words

    scores = pd.DataFrame({"label": list("abcde"), "test_auc_mean": [30.0, 28.0, 25.0, 22.0, 11.0]})
    assert "carries over" in transfer_words(scores, {"kendall_tau": 1.0, "kendall_p": 0.01, "static_auc": 10.0})
    text = transfer_words(scores, {"kendall_tau": 0.8, "kendall_p": 0.08, "static_auc": 10.0})
    assert "not significant with 5 architectures" in text and "No head tracks" not in text
    assert "**The front does not hold on this split**" in transfer_words(
        scores, {"kendall_tau": -0.2, "kendall_p": 0.7, "static_auc": 10.0})
    close = scores.assign(test_auc_mean=[14.0, 13.0, 12.0, 11.0, 9.0])
    text = transfer_words(close, {"kendall_tau": 0.8, "kendall_p": 0.08, "static_auc": 10.0})
    assert "**No head tracks well on this split**: every test AUC is within 4.0 points" in text
    assert "1 of 5 architectures do not beat the static box on it: `e`" in text


def test_int8_drops_get_intervals_and_the_activation_question_an_answer(tmp_path):
    # the ReLU6 study's shape: two heads x {relu, relu6}, 3 seeds; relu6 loses far less on dsconv, the same on repvgg
    heads = [("baseline", ["head=repvgg"], 40.0, 118_886_400, 297_474),
             (None, ["head=repvgg", "head.activation=relu6"], 40.0, 118_886_400, 297_474),
             (None, ["head=dsconv", "head.activation=relu"], 38.0, 5_657_600, 14_466),
             ("user_head", ["head=dsconv"], 38.0, 5_657_600, 14_466)]
    drops = {"head=repvgg": 1.0, "head=repvgg head.activation=relu6": 1.0,
             "head=dsconv head.activation=relu": 6.0, "head=dsconv": 1.0}
    name = _fake_study(tmp_path, seeds=3, trials=heads, int8=drops,
                       objectives=[("auc", "maximize"), ("int8_auc_drop", "minimize")])
    result = build_report(ReportConf(transfer=None, study=name), tmp_path / "runs")
    out = Path(result["out_dir"])
    archs = pd.read_csv(out / "architectures.csv").set_index("label")
    for label, drop in (("repvgg x2 w128 relu k3 f3", 1.0), ("dsconv x2 w64 relu k3 f1 no-bn", 6.0)):
        row = archs.loc[label]
        assert row["int8_auc_drop_ci_low"] < row["int8_auc_drop_mean"] < row["int8_auc_drop_ci_high"]
        assert abs(row["int8_auc_drop_mean"] - drop) < 0.5
    compared = pd.read_csv(out / "int8_activations.csv").set_index("label")
    assert set(compared["activation"]) == {"relu6"} and len(compared) == 2
    user = compared.loc["dsconv x2 w64 relu6 k3 f1 no-bn"]
    assert user["drop_diff_ci_high"] < 0 and user["p_smaller_drop"] > 0.95  # 5 points less lost: certain
    same = compared.loc["repvgg x2 w128 relu6 k3 f3"]
    assert same["drop_diff_ci_low"] < 0 < same["drop_diff_ci_high"]  # the same drop: no difference claimed
    summary = (out / "summary.md").read_text()
    assert "## INT8 (post-training static quantisation, ONNX Runtime)" in summary
    assert "`dsconv x2 w64 relu6 k3 f1 no-bn` **quantises better than ReLU**" in summary
    assert "`repvgg x2 w128 relu6 k3 f3` **no measurable difference from ReLU**" in summary


def test_a_costlier_head_is_said_to_cost_more_not_fewer():
    """A front member with more MACs than the baseline reads '1.5x more MACs', never '0.7x fewer MACs'."""
    import pandas as pd

    from search.report.export import _claim

    row = pd.Series({"label": "repvgg x5 w96", "verdict": "worse", "macs_x_fewer": 1 / 1.5, "params_x_fewer": 4.0,
                     "auc_diff": 3.4, "auc_diff_ci_low": -4.1, "auc_diff_ci_high": 11.0, "p_improvement": 0.83,
                     "n_seeds": 3})
    text = _claim(row)
    assert "1.5x more MACs" in text and "4.0x fewer parameters" in text and "fewer MACs" not in text
