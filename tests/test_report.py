"""The Pareto report: from a study (as the sweeper records it) and from a plain Hydra grid."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def _fake_study(tmp_path: Path, seeds: int = 1) -> str:
    """A study laid out as the sweeper writes it: objectives, roles, metrics, cost, head, run dirs."""
    storage = open_storage(str(tmp_path / "runs" / "sweeps" / "fake" / "journal.log"))
    study = optuna.create_study(study_name="fake", storage=storage,
                                directions=["maximize", "minimize", "minimize"])
    rng = np.random.default_rng(0)
    number = 0
    for role, overrides, auc, macs, params in TRIALS:
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
            study.add_trial(optuna.trial.create_trial(
                values=[value, macs, params], params={"head": choices["head"]},
                distributions={"head": optuna.distributions.CategoricalDistribution(["repvgg", "dsconv", "mbconv"])},
                user_attrs={"role": role, "run_dir": str(run_dir), "head": head,
                            "metrics": {"auc": value, "precision": value + 5, "head_macs": macs,
                                        "head_params_deploy": params, "head_params": params},
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
