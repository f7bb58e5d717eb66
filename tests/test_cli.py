"""The command line explains itself: every console script's `--help` says what it does, lists its options and
examples and no schema; configs compose from any working directory; shell completion offers the presets; and
LightTrack's Hydra plugins leave every other Hydra app alone (nothing listed, nothing heavy imported)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tracker.config import CONF_DIR

BIN = Path(sys.executable).parent
APPS = ["train", "sweep", "evaluate", "metrics", "profile", "export", "data", "report", "trunk"]
GROUP_LINE = re.compile(r"^([\w/]+)=([\w|]+)\s")  # `head=repvgg|dsconv|mbconv   the head preset ...`


def script(app: str) -> str:
    path = BIN / f"lighttrack-{app}"
    if not path.exists():
        pytest.fail(f"{path} is missing: reinstall the package (pip install -e '.[dev]' --no-deps)")
    return str(path)


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **env})


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """`lighttrack-<app> --help` of every app, started together, from a folder that is not the repository."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    procs = {app: subprocess.Popen([script(app), "--help"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for app in APPS}
    done = {}
    for app, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        done[app] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert not any(cwd.iterdir()), f"--help wrote {sorted(p.name for p in cwd.iterdir())}"
    return done


def _help(helps, app: str) -> str:
    result = helps[app]
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _check_help(text: str, app: str) -> None:
    lines = text.splitlines()
    assert re.match(rf"lighttrack-{app}: \w+", lines[0]), lines[:2]  # what the app does, first
    examples = lines[lines.index("== Examples ==") + 1:]
    examples = examples[:examples.index("")]
    assert len(examples) >= 3 and all(e.startswith(f"lighttrack-{app} ") or e == f"lighttrack-{app}"
                                      for e in examples), examples
    assert "_schema" not in text
    assert not re.search(r"\$[A-Z_]{3,}", text)  # every template variable was substituted


@pytest.mark.parametrize("app", APPS)
def test_help_says_what_the_app_does_with_examples_and_no_schema(helps, app):
    _check_help(_help(helps, app), app)


@pytest.mark.parametrize("app", APPS)
def test_help_lists_every_preset_of_the_groups_it_names(helps, app):
    """The groups' lines are written by hand (conf/hydra/help/): a preset added to conf/<group>/ must be added."""
    named = {}
    for line in _help(helps, app).splitlines():
        match = GROUP_LINE.match(line)
        if match and (CONF_DIR / match[1]).is_dir():
            named[match[1]] = match[2].split("|")
    for group, options in named.items():
        assert sorted(options) == sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")), group


def test_report_help_template(tmp_path):
    """conf/report.yaml's help, through the helper search.report's main calls."""
    code = "from tracker.app import hydra_app; hydra_app(lambda cfg: None, 'report')()"
    result = run([sys.executable, "-c", code, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_help(result.stdout, "report")


def test_sweep_help_lists_the_sweepers_options(helps):
    text = _help(helps, "sweep")
    for option in ("hydra.sweeper.max_trials", "hydra.sweeper.n_trials", "hydra/sweeper/sampler",
                   "hydra/sweeper/pruner", "hydra.sweeper.storage", "hydra.sweeper.study_name",
                   "hydra.sweeper.objectives", "hydra.sweeper.budget", "hydra.sweeper.confirm.seeds",
                   "hydra.sweeper.confirm.front", "hydra.sweeper.confirm.max_trials"):
        assert re.search(rf"^{re.escape(option)}\S*\s+\S", text, re.M), option


def test_a_config_composes_from_another_working_directory(tmp_path):
    result = run([script("train"), "head=dsconv", "head.num_blocks=3", "trainer=tiny", "--cfg", "job"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "block: dsconv" in result.stdout and "num_blocks: 3" in result.stdout
    data = run([sys.executable, "-m", "tracker.data.generate", "frames=7", "--cfg", "job"], tmp_path)
    assert data.returncode == 0, data.stderr[-3000:]
    assert "frames: 7" in data.stdout and "difficulty: medium" in data.stdout
    assert not any(tmp_path.iterdir())


def test_the_data_app_prints_what_the_generator_prints_and_imports_no_torch(tmp_path, capsys):
    from tracker.data import synthetic

    args = [f"root={tmp_path / 'bench'}", "train_sequences=1", "val_sequences=1", "frames=3", "width=48",
            "height=32", "workers=1"]
    watch = "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr))\n"
    code = watch + "from tracker.data.generate import main; main()"
    result = run([sys.executable, "-c", code, *args, "progress=false"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == "False"  # no torch
    assert synthetic.main(args) == 0  # the same benchmark, found complete
    assert json.loads(result.stdout.strip().splitlines()[-1]) == json.loads(capsys.readouterr().out.splitlines()[-1])
    bad = run([script("data"), "difficulty=extreme"], tmp_path)
    assert bad.returncode == 2 and "difficulty=extreme is not allowed" in bad.stderr


def test_completion_offers_the_head_presets(tmp_path):
    install = run([script("train"), "-sc", "install=bash"], tmp_path)
    assert install.returncode == 0 and "complete" in install.stdout
    assert install.stdout.rstrip().endswith("lighttrack-train")
    query = run([script("train"), "-sc", "query=bash"], tmp_path, COMP_LINE="lighttrack-train head=")
    assert query.returncode == 0, query.stderr[-3000:]
    assert sorted(query.stdout.split()) == sorted(f"head={p.stem}" for p in (CONF_DIR / "head").glob("*.yaml"))


@pytest.fixture
def unrelated_app(tmp_path) -> Path:
    """A Hydra app with nothing of ours: its own config folder, one group."""
    (tmp_path / "conf" / "db").mkdir(parents=True)
    (tmp_path / "conf" / "config.yaml").write_text("defaults:\n  - db: mysql\n  - _self_\nname: other\n")
    (tmp_path / "conf" / "db" / "mysql.yaml").write_text("driver: mysql\n")
    (tmp_path / "conf" / "db" / "postgres.yaml").write_text("driver: postgres\n")
    app = tmp_path / "app.py"
    app.write_text("import hydra\n\n\n@hydra.main(config_path='conf', config_name='config', version_base='1.3')\n"
                   "def main(cfg):\n    print(cfg)\n\n\nif __name__ == '__main__':\n    main()\n")
    return app


def test_an_unrelated_hydra_apps_help_lists_nothing_of_ours(unrelated_app):
    result = run([sys.executable, str(unrelated_app), "--help"], unrelated_app.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    groups = lines[lines.index("== Configuration groups ==") + 2:lines.index("== Config ==")]
    assert [g for g in groups if g.strip()] == ["db: mysql, postgres"]
    assert "_schema" not in result.stdout and "lighttrack" not in result.stdout
    hydra_help = run([sys.executable, str(unrelated_app), "--hydra-help"], unrelated_app.parent)
    assert hydra_help.returncode == 0 and "basic" in hydra_help.stdout
    assert "lighttrack" not in hydra_help.stdout and "sampler" not in hydra_help.stdout


def test_the_plugin_scan_of_an_unrelated_app_imports_nothing_heavy(unrelated_app):
    code = (
        "import json, sys\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra._internal.utils import create_config_search_path\n"
        "Plugins.instance()\n"
        f"create_config_search_path({str(unrelated_app.parent / 'conf')!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    result = run([sys.executable, "-c", code], unrelated_app.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = set(json.loads(result.stdout))
    assert "hydra_plugins.lighttrack_schemas" in modules and "hydra_plugins.lighttrack_sweeper" in modules  # scanned
    heavy = {m for m in modules if m.split(".")[0] in {"torch", "optuna", "tracker", "heads", "numpy", "pandas"}}
    assert not heavy, sorted(heavy)


@pytest.mark.parametrize("app,args,message", [
    ("train", ["trainer=tiny", "data.split=vall"], r"^error: data\.split=vall is not allowed: "),
    ("train", ["trainer=tiny", "trainer.lr_gamma=2"], r"^error: trainer\.lr_gamma=2\.0 is not allowed: a factor"),
    ("evaluate", ["checkpoint=/nowhere/model.pt"], r"^error: .*/nowhere/model\.pt"),
    ("report", ["study=no_such_study"], r"^error: .*no_such_study"),
])
def test_a_user_error_is_one_line_without_a_traceback_and_leaves_no_run_directory(tmp_path, app, args, message):
    runs = tmp_path / "runs"
    result = run([script(app), *args], tmp_path, LIGHTTRACK_RUNS=str(runs), HYDRA_FULL_ERROR="")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and re.search(message, result.stderr, re.M), result.stderr[-3000:]
    left = [p for p in (runs / app).rglob("*") if p.is_dir() and p.parent == runs / app] if (runs / app).exists() else []
    assert left == [], left


def test_a_bug_keeps_its_traceback_and_full_error_shows_every_one(tmp_path):
    bug = "from tracker.app import hydra_app; hydra_app(lambda cfg: 1 / 0, 'export')()"
    result = run([sys.executable, "-c", bug], tmp_path, LIGHTTRACK_RUNS=str(tmp_path / "runs"), HYDRA_FULL_ERROR="")
    assert result.returncode == 1 and "ZeroDivisionError" in result.stderr and "Traceback" in result.stderr
    user = run([script("train"), "trainer=tiny", "data.split=vall"], tmp_path, LIGHTTRACK_RUNS=str(tmp_path / "runs"),
               HYDRA_FULL_ERROR="1")
    assert user.returncode == 1 and "Traceback" in user.stderr and "ConfigError" in user.stderr
