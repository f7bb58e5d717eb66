"""Heartbeats (hydra.sweeper.heartbeat_interval, grace_period, retry_failed): a sweep process killed while its
trial runs leaves the trial RUNNING; it stops beating, and after the grace period the next sweep process marks it
FAIL and re-runs it once (a WAITING copy with the same parameters), on a journal file and on PostgreSQL.

This file is also the fake Hydra app of those sweeps (run as a script): tests/test_sweep.py's fake task (it never
trains a model), which first sleeps FAKE_SLEEP seconds (a long training run to be killed under), in a sweep process
that calls its host FAKE_HOST (a machine of its own: the orphan check, which knows this host's processes only,
cannot tell that it died; only its heartbeats can)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def slow_task(cfg):
    from hydra.core.hydra_config import HydraConfig

    from test_sweep import fake_task

    (Path(HydraConfig.get().runtime.output_dir) / "started").write_text("started")
    time.sleep(float(os.environ.get("FAKE_SLEEP", 0)))
    return fake_task(cfg)


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(HERE)]
    if os.environ.get("FAKE_HOST"):
        import socket

        socket.gethostname = lambda: os.environ["FAKE_HOST"]
    import hydra

    hydra.main(config_path=str(ROOT / "conf"), config_name="sweep", version_base="1.3")(slow_task)()
    sys.exit(0)

import optuna  # noqa: E402
import pytest  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

import postgres_server as pg  # noqa: E402
from search.study import Beating, Heartbeat, fail_orphans, fail_stale_trials, open_storage, retried  # noqa: E402
from test_sweep import BASE, _impl  # noqa: E402

# the test process asks trials of a storage with heartbeats outside study.optimize, as the sweeper does
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
STUDY = "synthetic_tiny"  # the fake app's study (BASE: trainer=tiny on the synthetic data)
postgres_server, postgres_url = pg.postgres_server, pg.postgres_url  # its fixtures, for pytest to find here
BEATS = Heartbeat(interval=1, grace_period=2, retry=1)
SETTINGS = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "hydra.sweeper.max_trials=2"]


def _sweep_command(sweep_dir: Path, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "-m", f"hydra.sweep.dir={sweep_dir}", *BASE, *SETTINGS,
            *args]


def _environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_")}
    env.update(extra)
    return env


def _running(location: str, worker: subprocess.Popen, log: Path, timeout: float = 60) -> tuple:
    """(study, storage, trial): the first trial the worker trains, once it is RUNNING, as the study shows it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert worker.poll() is None, log.read_text()
        if "://" in location or Path(location).exists():
            storage = open_storage(location, BEATS)
            try:
                study = optuna.load_study(study_name=STUDY, storage=storage)
            except KeyError:  # not created yet
                study = None
            running = [] if study is None else [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                                                if t.user_attrs.get("trained")]
            if running:
                return study, storage, running[0]
        time.sleep(0.2)
    raise AssertionError(f"no trial RUNNING after {timeout} s:\n{log.read_text()}")


def _stale(storage, trial) -> bool:
    return trial._trial_id in storage._get_stale_trial_ids(storage.get_study_id_from_name(STUDY))


def _killed_worker_is_failed_and_rerun_once(tmp_path: Path, storage_args: list[str], location: str) -> None:
    """A worker is killed (SIGKILL) while its first trial (the baseline) trains; the same command run again after
    the grace period fails that trial and re-runs it once."""
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(_sweep_command(tmp_path / "s", *storage_args), cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT, env=_environment(FAKE_SLEEP="120", FAKE_HOST="elsewhere"))
    try:
        study, storage, victim = _running(location, worker, log)
        assert victim.number == 0 and victim.user_attrs["role"] == "baseline"
        assert victim.user_attrs["host"] == "elsewhere"  # a machine of its own: no orphan check reaches it
        # it beats while it trains: after more than the grace period it is still fresh
        first = storage.get_trial(victim._trial_id).system_attrs.get("lighttrack:heartbeat")
        time.sleep(BEATS.grace + 1)
        assert storage.get_trial(victim._trial_id).state == TrialState.RUNNING and not _stale(storage, victim)
        if first is not None:  # a journal: the heartbeat is the trial's system attribute, and it moved on
            assert storage.get_trial(victim._trial_id).system_attrs["lighttrack:heartbeat"] > first
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    deadline = time.time() + 4 * BEATS.grace
    while not _stale(storage, victim):  # no heartbeat for the grace period
        assert time.time() < deadline, "the killed worker's trial never went stale"
        time.sleep(0.2)
    assert storage.get_trial(victim._trial_id).state == TrialState.RUNNING  # nobody has looked yet

    rerun = subprocess.run(_sweep_command(tmp_path / "s", *storage_args), cwd=ROOT, env=_environment(),
                           capture_output=True, text=True, timeout=120)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.trials
    report = "\n".join(f"{t.number} {t.state.name} {t.user_attrs.get('role')} trained={t.user_attrs.get('trained')} "
                       f"{t.system_attrs.get('retry_history')} {t.user_attrs.get('fail_reason', '')}" for t in trials)
    killed = trials[0]
    assert killed.state == TrialState.FAIL and killed.user_attrs["orphaned"] is True, report
    assert "stopped beating: no heartbeat for more than 2 s" in killed.user_attrs["fail_reason"], report
    (retry,) = [t for t in trials if t.system_attrs.get("retry_history")]
    assert retry.system_attrs["retry_history"] == [0] and retry.system_attrs["failed_trial"] == 0, report
    assert f"re-enqueued: 0 as trial {retry.number}" in output and "[retry of trial 0]" in output, output
    # the retry is the same trial run again: the same parameters and role, trained once, by the rerun
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["trained"] is True, report
    assert retry.params == killed.params and retry.user_attrs["role"] == "baseline", report
    assert retry.user_attrs["config_key"] == killed.user_attrs["config_key"], report
    assert retry.user_attrs.get("duplicate_of") is None and retry.user_attrs["host"] != "elsewhere", report
    assert (Path(retry.user_attrs["run_dir"]) / "ran").is_file()
    assert not (Path(killed.user_attrs["run_dir"]) / "ran").exists()  # killed in its sleep
    assert (Path(killed.user_attrs["run_dir"]) / "started").is_file()
    # nothing left running or waiting; the baseline is enqueued once and its architecture completes exactly once
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], report
    assert [t.number for t in trials if t.user_attrs.get("role") == "baseline"] == [0, retry.number], report
    completed = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("trained")
                 and t.user_attrs["config_key"] == killed.user_attrs["config_key"]]
    assert completed == [retry], report
    # the budget: the two references trained (max_trials=2): the killed run is not counted, its retry is
    assert sum(t.state == TrialState.COMPLETE and t.user_attrs["trained"] for t in trials) == 2, report


# -- a killed sweep worker, on each lockable storage (subprocesses; about 40 s each) ----------------------------
def test_a_killed_workers_trial_is_failed_after_the_grace_period_and_rerun_once_journal(tmp_path):
    _killed_worker_is_failed_and_rerun_once(tmp_path, [], str(tmp_path / "s" / "journal.log"))


def test_a_killed_workers_trial_is_failed_after_the_grace_period_and_rerun_once_postgres(tmp_path, postgres_url):
    _killed_worker_is_failed_and_rerun_once(tmp_path, [f"hydra.sweeper.storage='{postgres_url}'"], postgres_url)


# -- the rules, in process ------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    (dict(heartbeat_interval=0), r"hydra\.sweeper\.heartbeat_interval=0 is not allowed: null \(no heartbeats\) or an "
                                 r"integer >= 1 \(seconds\)"),
    (dict(heartbeat_interval=1.5), r"hydra\.sweeper\.heartbeat_interval=1\.5 is not allowed"),
    (dict(heartbeat_interval=5, grace_period=-1), r"hydra\.sweeper\.grace_period=-1 is not allowed: null \(2 x "),
    (dict(heartbeat_interval=5, grace_period=5), r"hydra\.sweeper\.grace_period=5 is not allowed with "
                                                 r"hydra\.sweeper\.heartbeat_interval=5: null \(2 x the interval\) or "
                                                 r"an integer > the interval"),
    (dict(grace_period=10), r"hydra\.sweeper\.grace_period=10 is not used: heartbeats are off"),
    (dict(heartbeat_interval=5, retry_failed=-1), r"hydra\.sweeper\.retry_failed=-1 is not allowed: an integer >= 0"),
    (dict(retry_failed=True), r"hydra\.sweeper\.retry_failed=True is not allowed"),
])
def test_heartbeat_settings_are_checked_before_any_trial(settings, message):
    from hydra_plugins.lighttrack_sweeper._impl import SweepConfigError

    with pytest.raises(SweepConfigError, match=message):
        _impl(**settings)


def test_heartbeats_are_off_by_default_and_the_settings_reach_the_storage(tmp_path):
    from optuna.storages._heartbeat import is_heartbeat_enabled

    from hydra_plugins.lighttrack_sweeper.config import LightTrackSweeperConf

    conf = LightTrackSweeperConf()
    assert (conf.heartbeat_interval, conf.grace_period, conf.retry_failed) == (None, None, 1)
    assert _impl().heartbeat is None and _impl(heartbeat_interval=60).heartbeat == Heartbeat(60, None, 1)
    assert _impl(heartbeat_interval=60).heartbeat.grace == 120  # Optuna's default: twice the interval
    journal = str(tmp_path / "journal.log")
    assert not is_heartbeat_enabled(open_storage(journal))
    beating = open_storage(journal, Heartbeat(60, 90, 0))
    assert is_heartbeat_enabled(beating) and beating.get_heartbeat_interval() == 60 and beating.grace_period == 90
    assert beating.get_heartbeat_stale_trial_callback() is None  # retry_failed=0: failed, never re-run
    rdb = open_storage(f"sqlite:///{tmp_path / 'study.db'}", Heartbeat(60, None, 2))
    assert rdb._backend.heartbeat_interval == 60 and rdb._backend.grace_period is None
    assert rdb.get_heartbeat_stale_trial_callback()._max_retry == 2


def test_a_trial_beats_from_ask_to_tell_and_the_thread_stops(tmp_path):
    storage = open_storage(str(tmp_path / "journal.log"), BEATS)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    held, told = study.ask(), study.ask()
    with Beating(storage, 0.2) as beating:
        beating.add(held._trial_id)
        beating.add(told._trial_id)
        beating.discard(told._trial_id)
        study.tell(told, 1.0)
        time.sleep(0.5)
        beats = storage.get_trial(held._trial_id).system_attrs["lighttrack:heartbeat"]
        time.sleep(0.5)
        assert storage.get_trial(held._trial_id).system_attrs["lighttrack:heartbeat"] > beats
        thread = beating._thread
    assert not thread.is_alive()
    assert fail_stale_trials(study, storage) == []  # within the grace period
    time.sleep(BEATS.grace + 0.2)
    assert fail_stale_trials(study, storage, held={held._trial_id}) == []  # the caller's own: alive, if late
    assert fail_stale_trials(study, storage) == [held.number]  # no beat since the thread stopped
    assert study.trials[told.number].state == TrialState.COMPLETE  # a finished trial is never stale


def test_a_retry_is_the_same_trial_run_again_for_every_rule(tmp_path):
    """The WAITING copy keeps what the trial runs (parameters, role, stage) and drops what its run wrote; it is the
    role's reference, no duplicate of the failed trial, and it counts against max_trials instead of it."""
    from hydra_plugins.lighttrack_sweeper._impl import SweeperImpl

    storage = open_storage(str(tmp_path / "journal.log"), BEATS)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    study.enqueue_trial({"x": 3}, user_attrs={"role": "baseline", "reference_params": ["x"]})
    victim = study.ask()
    victim.suggest_int("x", 0, 9)
    for key, value in {"host": "elsewhere", "pid": 1, "trained": True, "config_key": "k", "run_dir": "/r",
                       "cost": {"head_macs": 1}}.items():
        victim.set_user_attr(key, value)
    storage.record_heartbeat(victim._trial_id)
    time.sleep(BEATS.grace + 0.2)
    assert fail_stale_trials(study, storage) == [0]
    retry = study.trials[1]
    assert retry.state == TrialState.WAITING and retry.params == {"x": 3}
    assert retry.user_attrs == {"role": "baseline", "reference_params": ["x"]}
    assert retry.system_attrs["failed_trial"] == 0 and "lighttrack:heartbeat" not in retry.system_attrs
    assert retried(study.trials) == {0}
    again = study.ask()  # the queue gives it out first, with its parameters
    assert again.number == 1 and again.suggest_int("x", 0, 9) == 3
    again.set_user_attr("config_key", "k")
    assert SweeperImpl._reference(study, "baseline", again.number) is None  # it is the reference: it trains
    assert SweeperImpl._earlier(study, "k", again.number) is None  # the failed run is nobody's original
    again.set_user_attr("trained", True)
    sweeper = _impl(max_trials=2, count_failed=True)
    sweeper.launched = 0
    assert sweeper._room(study)  # the retry counts, once; the failed trial it re-runs does not (with count_failed)
    sweeper.max_trials = 1
    assert not sweeper._room(study)
    # the retry in turn dies: failed, not retried again (retry_failed=1: one re-run per trial)
    again.set_user_attr("host", "elsewhere")
    storage.record_heartbeat(again._trial_id)
    time.sleep(BEATS.grace + 0.2)
    assert fail_stale_trials(study, storage) == [1] and len(study.trials) == 2


def test_an_orphan_found_by_its_dead_pid_is_retried_as_a_stale_one_is(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage = open_storage(str(tmp_path / "journal.log"), BEATS)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    orphan = study.ask()
    study.ask()  # asked by a process that died before recording itself as its owner
    orphan.suggest_int("x", 0, 9)
    for key, value in {"host": socket.gethostname(), "pid": dead.pid, "trained": True}.items():
        orphan.set_user_attr(key, value)
    assert fail_orphans(study, storage, unowned=True) == [0, 1]  # before any grace period: its pid is gone
    (retry,) = study.get_trials(states=(TrialState.WAITING,))  # one that never started is not re-run
    assert retry.system_attrs["retry_history"] == [0] and retry.params == orphan.params
    assert "orphaned" not in retry.user_attrs and "pid" not in retry.user_attrs
