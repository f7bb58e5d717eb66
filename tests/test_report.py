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
TINY = ["trainer=tiny", "trainer.epochs=1", "data.generate.train_sequences=3", "data.generate.val_sequences=2",
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


def _fake_study(tmp_path: Path, seeds: int = 1, objectives: Optional[list] = None, trials: list = TRIALS) -> str:
    """A study laid out as the sweeper writes it: objectives, roles, metrics, cost, head, run dirs (the attribute
    names spelled out: they are what studies on disk hold). `objectives`: [(name, direction), ...] stored as the
    sweeper stores them; None: a study that names none (read with the default ones)."""
    storage = open_storage(str(tmp_path / "runs" / "sweeps" / "fake" / "journal.log"))
    study = optuna.create_study(study_name="fake", storage=storage,
                                directions=[d for _, d in objectives or DEFAULT])
    if objectives:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([n for n, _ in objectives])
        study.set_user_attr("objectives", [{"name": n, "direction": d} for n, d in objectives])
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
            value = auc + (rng.normal(0, 0.5) if seeds > 1 else 0.0)
            head = OmegaConf.to_container(cfg.head, resolve=True, enum_to_str=True)
            metrics = {"auc": value, "precision": value + 5, "head_macs": macs, "head_params_deploy": params,
                       "head_params": params}
            study.add_trial(optuna.trial.create_trial(
                values=[metrics[n] for n, _ in objectives or DEFAULT], params={"head": choices["head"]},
                distributions={"head": optuna.distributions.CategoricalDistribution(["repvgg", "dsconv", "mbconv"])},
                user_attrs={"role": role, "run_dir": str(run_dir), "head": head, "metrics": metrics,
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
    result = build_report(ReportConf(study=name), tmp_path / "runs")
    out = Path(result["out_dir"])
    assert out == tmp_path / "runs" / "sweeps" / "fake" / "report"
    for file in ["trials.csv", "pareto.csv", "summary.md", "best.yaml", "auc_vs_macs.png", "auc_vs_params.png",
                 "hypervolume.png", "importances.png"]:
        assert (out / file).is_file(), file
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 6 and (trials.state == "FAIL").sum() == 1
    assert "NonFiniteLossError" in trials.loc[trials.state == "FAIL", "reason"].iloc[0]
    pareto = pd.read_csv(out / "pareto.csv")
    assert sorted(pareto["trials"].astype(str)) == ["1", "2", "4"]  # the baseline and mbconv are dominated
    row = pareto[pareto["trials"].astype(str) == "2"].iloc[0]
    assert row["macs_x_fewer"] == pytest.approx(118_886_400 / 7_526_400)
    assert row["auc_diff"] == pytest.approx(1.0) and bool(row["dominates_baseline"])
    summary = (out / "summary.md").read_text()
    assert "Baseline (RepVGG head): AUC 40.00" in summary and "one seed" in summary
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["head"]["num_blocks"] == 3 and best["head"]["block"] == "dsconv"  # highest AUC, no budget


def test_budget_and_knee_rules(tmp_path):
    name = _fake_study(tmp_path)
    build_report(ReportConf(study=name, max_head_macs=4e6), tmp_path / "runs")
    best = yaml.safe_load((tmp_path / "runs" / "sweeps" / "fake" / "report" / "best.yaml").read_text())
    assert best["head"]["channels"] == 32
    build_report(ReportConf(study=name, rule="knee"), tmp_path / "runs")
    with pytest.raises(ReportError, match="budget"):
        build_report(ReportConf(study=name, max_head_macs=10), tmp_path / "runs")
    with pytest.raises(ReportError, match="rule='best' is not allowed"):
        build_report(ReportConf(study=name, rule="best"), tmp_path / "runs")
    with pytest.raises(ReportError, match="no study 'missing'"):
        build_report(ReportConf(study="missing"), tmp_path / "runs")


def test_seeded_trials_are_mean_and_spread(tmp_path):
    name = _fake_study(tmp_path, seeds=3)
    build_report(ReportConf(study=name), tmp_path / "runs")
    pareto = pd.read_csv(tmp_path / "runs" / "sweeps" / "fake" / "report" / "pareto.csv")
    assert (pareto["seeds"] == 3).all() and (pareto["auc_std"] > 0).all()
    assert pareto.loc[pareto["role"] == "baseline", "within_seed_spread"].isna().all()  # not compared to itself
    assert pareto.loc[pareto["role"] != "baseline", "within_seed_spread"].notna().all()
    assert "within the seed-to-seed spread" in (tmp_path / "runs" / "sweeps" / "fake" / "report" /
                                                  "summary.md").read_text()


def test_best_yaml_composes_and_retrains(tmp_path, monkeypatch):
    from tracker.train import run_trial

    monkeypatch.setenv("LIGHTTRACK_RUNS", str(tmp_path / "runs"))
    name = _fake_study(tmp_path)
    out = Path(build_report(ReportConf(study=name), tmp_path / "runs")["out_dir"])
    cfg = compose("best", [f"data.cache_dir={tmp_path / 'data'}"], config_dir=out)
    assert cfg.head.block == "dsconv" and cfg.head.num_blocks == 3 and cfg.trainer.epochs == 1
    result = run_trial(cfg, tmp_path / "retrain", progress=False)
    assert result["head_params"] == 19_266


def test_report_reads_a_plain_grid(tmp_path):
    env = {**__import__("os").environ, "LIGHTTRACK_RUNS": str(tmp_path / "runs")}
    grid = subprocess.run([sys.executable, "-m", "tracker.train", "-m", "head=repvgg,dsconv", *TINY,
                           f"data.cache_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'grid'}"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert grid.returncode == 0, grid.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "search.report", f"multirun={tmp_path / 'grid'}",
                          f"hydra.run.dir={tmp_path / 'report_run'}"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["complete"] == 2
    trials = pd.read_csv(tmp_path / "grid" / "report" / "trials.csv")
    assert set(trials["param_head"]) == {"repvgg", "dsconv"}
    pareto = pd.read_csv(tmp_path / "grid" / "report" / "pareto.csv")
    user = pareto[pareto["role"] == "user_head"].iloc[0]  # found by its config: a grid has no roles
    assert user["macs_x_fewer"] == pytest.approx(297_216 / 14_144)  # per feature cell, any feature size
    assert (tmp_path / "grid" / "report" / "best.yaml").is_file()


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
    assert "6 trials" in text
    assert "The RepVGG baseline scores AUC 40.0" in text and "1 architecture(s) dominate it" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # two fronts, hypervolume, importances


def test_the_front_is_on_the_objectives_the_study_stored(tmp_path):
    # fewest parameters (on the 3-objective front), but the user's head has more AUC and fewer MACs
    few_params = (None, ["head=dsconv", "head.num_blocks=3", "head.channels=32"], 36.0, 6_000_000, 5_000)
    name = _fake_study(tmp_path, objectives=[("auc", "maximize"), ("head_macs", "minimize")],
                       trials=[*TRIALS, few_params])
    result = build_report(ReportConf(study=name), tmp_path / "runs")
    out = Path(result["out_dir"])
    assert sorted(pd.read_csv(out / "pareto.csv")["trials"].astype(str)) == ["1", "2", "4"]
    assert "## Pareto-optimal architectures (auc up, head_macs down)" in (out / "summary.md").read_text()
    assert (out / "hypervolume.png").is_file()
    # the same trials on the default objectives: that head is on the front
    name = _fake_study(tmp_path / "default", trials=[*TRIALS, few_params])
    build_report(ReportConf(study=name), tmp_path / "default" / "runs")
    front = pd.read_csv(tmp_path / "default" / "runs" / "sweeps" / "fake" / "report" / "pareto.csv")
    assert sorted(front["trials"].astype(str)) == ["1", "2", "4", "5"]


def test_single_objective_study_gets_its_front_and_importance_plot(tmp_path):
    name = _fake_study(tmp_path, objectives=[("auc", "maximize")])
    result = build_report(ReportConf(study=name), tmp_path / "runs")
    out = Path(result["out_dir"])
    assert result["pareto"] == ["2"] and set(result["plots"]) == {"auc_vs_macs", "auc_vs_params", "importances"}
    assert (out / "importances.png").is_file() and not (out / "hypervolume.png").exists()
    # a grid (no study) is read with the sweeper's default objectives
    from search.objectives import DEFAULT_OBJECTIVES
    from search.report import frame_to_study
    from search.record import study_objectives

    grid = frame_to_study(pd.DataFrame({"state": ["COMPLETE"], "auc": [1.0], "head_macs": [2],
                                        "head_params_deploy": [3]}))
    assert study_objectives(grid) == list(DEFAULT_OBJECTIVES)


def test_architectures_differ_in_any_head_field(tmp_path):
    from search.report import _short_head, architectures, study_frame

    study = optuna.create_study(directions=[d for _, d in DEFAULT])
    user = OmegaConf.to_container(compose("train", ["head=dsconv"]).head, resolve=True, enum_to_str=True)
    heads = [user, user, {**user, "norm": True}, {**user, "dropout": 0.1}]  # dropout: a head option added later
    for i, head in enumerate(heads):
        study.add_trial(optuna.trial.create_trial(
            values=[30.0 + i, 5e6, 1e4], user_attrs={"head": head, "metrics": {"auc": 30.0 + i, "head_macs": 5e6,
                                                                              "head_params_deploy": 1e4}}))
    table = architectures(study_frame(study))
    assert table["seeds"].tolist() == [2, 1, 1] and table["trials"].tolist() == ["0,1", "2", "3"]
    assert len(set(table["head"].map(_short_head))) == 3  # told apart in the tables too
    assert _short_head(table["head"][1]).endswith(" bn") and _short_head(table["head"][2]).endswith("dropout=0.1")


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
        "PRUNE_REASON": "prune_reason", "NOTE": "note", "ORPHANED": "orphaned"}
    assert {k: v for k, v in vars(StudyAttr).items() if k.isupper()} == {
        "OBJECTIVES": "objectives", "BUDGET": "budget", "SPACE": "space", "RECIPE": "recipe",
        "SWEEP_PROCESSES": "sweep_processes"}
    old = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={
        "role": "baseline", "duration_s": 2.0, "run_dir": "/r", "prune_reason": "over budget", "cost": {"head_macs": 3},
        "metrics": {"auc": 1.0}, "head": {"block": "repvgg"}})
    assert trial_row(old) == {"trial": old.number, "state": "PRUNED", "role": "baseline", "duration_s": 2.0,
                              "run_dir": "/r", "duplicate_of": None, "reason": "over budget", "head_macs": 3,
                              "auc": 1.0, "head": {"block": "repvgg"}}
    # no other module spells a record name: the sweeper, the study and the report go through search.record
    for path in ("hydra_plugins/lighttrack_sweeper/_impl.py", "search/study.py", "search/report.py"):
        text = (ROOT / path).read_text()
        spelled = re.findall(r"(?:set_user_attr\(|user_attrs\.get\(|user_attrs\[|user_attrs=\{)\s*[\"'](\w+)", text)
        assert not spelled, (path, spelled)
