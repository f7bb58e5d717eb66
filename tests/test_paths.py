"""One runs root: conf/paths/default.yaml's `paths.runs` (LIGHTTRACK_RUNS moves it) is where every app's run
directory and the data cache go, and tracker.config.runs_root(), the code's reader, names the same folder."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tracker.config import CONF_DIR, compose, runs_root

REPO_RUNS = CONF_DIR.parent / "runs"
# primary configs that cannot compose the paths group: their job configs are typed by schemas without the node
# (search/report/config.py ReportConf, tracker/data/generate.py GenerateConf); they read LIGHTTRACK_RUNS directly
WITHOUT_PATHS = {"report", "data_generate"}
APPS = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


@pytest.fixture
def runs(monkeypatch):
    """Sets LIGHTTRACK_RUNS (None: unset, as in a fresh shell) for one test; compose() may set it, undone after."""
    def set_runs(value: str | Path | None) -> None:
        monkeypatch.setenv("LIGHTTRACK_RUNS", "placeholder")  # recorded, so whatever compose() sets is undone
        monkeypatch.delenv("LIGHTTRACK_DATA_CACHE", raising=False)
        if value is None:
            monkeypatch.delenv("LIGHTTRACK_RUNS")
        else:
            monkeypatch.setenv("LIGHTTRACK_RUNS", str(value))
    return set_runs


def _under(path: str, root: Path) -> bool:
    return Path(path).is_absolute() and Path(path).is_relative_to(root)


@pytest.mark.parametrize("where", ["set", "unset"])
def test_the_train_config_and_runs_root_agree(runs, tmp_path, where):
    root = tmp_path / "elsewhere" if where == "set" else REPO_RUNS
    runs(root if where == "set" else None)
    cfg = compose("train", ["trainer=tiny"], return_hydra_config=True)
    assert runs_root() == root
    assert cfg.paths.runs == str(root) and cfg.paths.data == str(root / "data")
    assert cfg.data.cache_dir == cfg.paths.data
    for run_dir in (cfg.hydra.run.dir, cfg.hydra.sweep.dir):
        assert _under(run_dir, root), run_dir


@pytest.mark.parametrize("app", APPS)
def test_every_apps_run_directory_is_under_the_runs_root(runs, tmp_path, app):
    runs(tmp_path)
    cfg = compose(app, return_hydra_config=True)
    if app == "data_generate":  # writes nothing of Hydra's own; its cache is the data presets' cache
        assert cfg.hydra.run.dir == "." and cfg.cache_dir == str(tmp_path / "data")
        return
    assert _under(cfg.hydra.run.dir, tmp_path), cfg.hydra.run.dir
    assert ("paths" in cfg) == (app not in WITHOUT_PATHS)
    for node in ("data", "test_data"):
        if node in cfg and "cache_dir" in cfg[node]:
            assert cfg[node].cache_dir == str(tmp_path / "data"), node
    if app == "sweep":
        assert cfg.hydra.sweep.dir == str(tmp_path / "sweeps" / cfg.hydra.sweeper.study_name)


def test_the_data_cache_has_its_own_variable_and_presets_compose_alone(runs, tmp_path, monkeypatch):
    runs(tmp_path / "runs")
    monkeypatch.setenv("LIGHTTRACK_DATA_CACHE", str(tmp_path / "cache"))
    assert compose("train").data.cache_dir == str(tmp_path / "cache")
    monkeypatch.delenv("LIGHTTRACK_DATA_CACHE")
    # a preset composed without a primary config (no paths node): the same folder, through its fallback
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        alone = hydra_compose(config_name=None, overrides=["+data=synthetic"])
    assert "paths" not in alone and alone.data.cache_dir == str(tmp_path / "runs" / "data")


def test_the_runs_root_is_spelled_in_one_place():
    """LIGHTTRACK_RUNS is read (${oc.env:...}) by conf/paths/default.yaml; elsewhere in conf/ only where the paths
    node cannot be (the configs in WITHOUT_PATHS, the data presets' fallback for a preset composed alone)."""
    readers = {}
    for path in CONF_DIR.rglob("*.yaml"):
        lines = [line for line in path.read_text().splitlines()
                 if "oc.env:LIGHTTRACK_RUNS" in line and not line.lstrip().startswith("#")]
        if lines:
            readers[str(path.relative_to(CONF_DIR))] = lines
    assert set(readers) <= {"paths/default.yaml", *(f"{name}.yaml" for name in WITHOUT_PATHS),
                            "data/synthetic.yaml", "data/synthetic_test.yaml"}, sorted(readers)
    for name in ("data/synthetic.yaml", "data/synthetic_test.yaml"):
        assert all(re.match(r"cache_dir: \$\{oc\.select:paths\.data,", line) for line in readers.get(name, []))


def test_where_things_are_written_is_not_part_of_a_studys_recipe(runs, tmp_path):
    """Existing studies stay resumable: the paths node is dropped from the recipe like data.cache_dir, so a recipe
    stored before the node existed, or with another runs root, is the same recipe."""
    import json

    from hydra_plugins.lighttrack_sweeper._recipe import comparable_recipe, study_recipe
    from tracker.config import config_differences

    runs(tmp_path)
    today = study_recipe(compose("sweep"))
    assert "paths" not in today and "cache_dir" not in today["data"]
    moved = json.loads(json.dumps(today))
    moved["paths"] = {"runs": "/elsewhere", "data": "/elsewhere/data"}
    moved["data"]["cache_dir"] = "/elsewhere/data"
    assert config_differences(comparable_recipe(moved), today) == []


def test_an_app_exports_its_runs_root_to_the_code(tmp_path):
    """A relative LIGHTTRACK_RUNS is made absolute before composing, and `paths.runs=DIR` on the command line moves
    what the code reads (runs_root: the trunk and feature caches) with the run directory."""
    code = ("from tracker.app import hydra_app; from tracker.config import runs_root\n"
            "hydra_app(lambda cfg: print(cfg.paths.runs, runs_root()), 'export')()")

    def app(*args: str, **env: str) -> list[str]:
        import os

        result = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600, env={**os.environ, **env})
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.split()

    assert app(LIGHTTRACK_RUNS="rel") == [str(tmp_path / "rel")] * 2
    assert (tmp_path / "rel" / "export").is_dir()
    assert app(f"paths.runs={tmp_path / 'moved'}") == [str(tmp_path / "moved")] * 2
    assert (tmp_path / "moved" / "export").is_dir()
    assert OmegaConf.load(next((tmp_path / "moved" / "export").glob("*/.hydra/config.yaml"))).paths.runs == \
        str(tmp_path / "moved")
