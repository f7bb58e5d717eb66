"""A database that drops its connections for a while (a PostgreSQL restart, a network outage) does not end a sweep
process (hydra.sweeper.db_retry_seconds): its storage calls are retried (search.study.RetryingRDBStorage), without
taking effect twice, and the PostgreSQL study lock lost with its connection is taken again.

In process: the retry and its backoff, on a SQLite storage whose transactions fail on demand (before their commit, or
after it: the server committed and the reply was lost); the study lock and storage calls across a real PostgreSQL
restart (tests/postgres_server.py). A subprocess: a sweep of the fake app whose database restarts under it."""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.storages._rdb import storage as rdb
from optuna.trial import TrialState

import postgres_server as pg
import search.study.retry as study_module
from search.study import (CLAIMED_ATTR, CREATED_ATTR, RetryingRDBStorage, open_storage, recently_disconnected,
                          retry_call, study_lock)
from test_sweep import BASE, ROOT, _impl

postgres_server, postgres_url = pg.postgres_server, pg.postgres_url  # its fixtures, for pytest to find here
APP = Path(__file__).resolve().parent / "test_heartbeat.py"  # the fake app whose trials sleep FAKE_SLEEP seconds
STUDY = "synthetic_tiny"  # the fake app's study
LOST = "database connection lost, retrying for up to"
BACK = "database reconnected after"


def _dropped() -> optuna.exceptions.StorageInternalError:
    """What RDBStorage raises when its connection drops: Optuna's error, caused by SQLAlchemy's OperationalError."""
    try:
        raise sqlalchemy.exc.OperationalError("SELECT 1", None, ConnectionError("server closed the connection"))
    except sqlalchemy.exc.OperationalError as e:
        error = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        error.__cause__ = e
        return error


class Faults:
    """Makes the next `before` transactions fail before their commit (nothing written), and the next `after` ones that
    write fail after it (written, the reply lost), by replacing RDBStorage's session helper."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, storage) -> None:
        self.before = self.after = self.transactions = 0
        self.wrote = False
        real = rdb._create_scoped_session

        def statement(conn, cursor, sql, parameters, context, executemany):
            self.wrote = self.wrote or sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))

        sqlalchemy.event.listen(storage._backend.engine, "before_cursor_execute", statement)

        @contextlib.contextmanager
        def flaky(scoped_session, ignore_integrity_error=False):
            self.transactions += 1
            if self.before:
                self.before -= 1
                raise _dropped()
            self.wrote = False
            with real(scoped_session, ignore_integrity_error) as session:
                yield session
            if self.after and self.wrote:
                self.after -= 1
                raise _dropped()

        monkeypatch.setattr(rdb, "_create_scoped_session", flaky)


@pytest.fixture
def sleeps(monkeypatch):
    """No real pause between attempts: each is recorded, and moves a fake clock on."""
    clock, taken = [1000.0], []

    def sleep(seconds: float) -> None:
        taken.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(study_module, "_sleep", sleep)
    monkeypatch.setattr(study_module, "_clock", lambda: clock[0])
    return taken


def _retrying_sqlite(tmp_path: Path, seconds: float = 30) -> tuple:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", retry_seconds=seconds)
    study = optuna.create_study(study_name="s", storage=storage)
    return storage, study


def _down(server: pg.PostgresServer, timeout: float = 60) -> None:
    """Returns once the server is down (its socket gone)."""
    deadline = time.time() + timeout
    while list(server.root.glob(".s.PGSQL.*")):
        assert time.time() < deadline, "the server never stopped"
        time.sleep(0.02)


def _messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- the retry, in process (a SQLite storage whose transactions fail on demand) --------------------------------------
def test_a_call_is_retried_with_a_backoff_and_one_warning_per_outage(tmp_path, monkeypatch, sleeps, caplog):
    storage, study = _retrying_sqlite(tmp_path)
    assert isinstance(storage._backend, RetryingRDBStorage) and storage._backend.engine.pool._pre_ping
    faults = Faults(monkeypatch, storage)
    caplog.set_level(logging.WARNING, logger="search.study")
    faults.before = 6
    assert study.trials == []  # six failures, then the answer
    assert faults.transactions == 7
    assert len(sleeps) == 6 and all(0.8 * d <= s <= 1.2 * d for s, d in zip(sleeps, [0.25, 0.5, 1, 2, 4, 4])), sleeps
    (lost,) = _messages(caplog, LOST)
    assert "up to 30 s" in lost and "ConnectionError: server closed the connection" in lost, lost  # the driver's
    assert _messages(caplog, BACK) == [f"{BACK} {sum(sleeps):.1f} s"]
    # another outage, another pair of warnings; a call that never fails logs nothing
    faults.before = 1
    study.enqueue_trial({"x": 1})
    assert len(_messages(caplog, LOST)) == 2 and len(_messages(caplog, BACK)) == 2
    study.trials
    assert len(_messages(caplog, LOST)) == 2
    # with heartbeats, the sweeper judges no trial stale for a grace period after an outage (SweeperImpl._fail_stale):
    # every process lost the database, and beats again once it is back
    location = storage._backend.retry_url
    assert recently_disconnected(location, 10) and not recently_disconnected("postgresql://elsewhere/db", 10)
    study_module._sleep(10)
    assert not recently_disconnected(location, 10)


def test_a_call_gives_up_after_db_retry_seconds_and_other_errors_are_not_retried(tmp_path, monkeypatch, sleeps,
                                                                                  caplog):
    storage, study = _retrying_sqlite(tmp_path, seconds=10)
    faults = Faults(monkeypatch, storage)
    faults.before = 1000
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.trials
    assert sum(sleeps) == pytest.approx(10) and faults.transactions == len(sleeps) + 1, sleeps  # 10 s, then its error
    assert _messages(caplog, "database unreachable for 10 s (hydra.sweeper.db_retry_seconds): giving up")
    faults.before, sleeps[:] = 0, []
    with pytest.raises(KeyError):  # no such trial: an answer, not an outage
        storage.get_trial(12345)
    with pytest.raises(ValueError):
        retry_call(lambda attempt: int("x"), "sqlite://", 10)
    assert sleeps == []
    # 0: no retry, the first lost connection is the end (and the storage is Optuna's own)
    plain = open_storage(f"sqlite:///{tmp_path / 'plain.db'}", retry_seconds=0)
    assert type(plain._backend) is RDBStorage and plain._backend.engine.pool._pre_ping
    optuna.create_study(study_name="s", storage=plain)
    faults.before = 1
    with pytest.raises(optuna.exceptions.StorageInternalError):
        optuna.load_study(study_name="s", storage=plain).trials
    assert sleeps == []


def test_a_retried_write_whose_first_attempt_was_committed_takes_effect_once(tmp_path, monkeypatch, sleeps):
    """The server committed, the reply was lost: the retry must not create a second trial, nor take a second waiting
    trial and leave the first one RUNNING with nobody to run it, nor fail on a trial it finished itself."""
    storage, study = _retrying_sqlite(tmp_path)
    faults = Faults(monkeypatch, storage)
    # a new trial (study.ask with an empty queue): created once, and the retry returns it
    faults.after = 1
    asked = study.ask()
    assert [t.number for t in study.trials] == [0] and asked.number == 0
    assert study.trials[0].system_attrs[CREATED_ATTR]
    # an enqueued trial: created once, with its parameters
    faults.after = 1
    study.enqueue_trial({"x": 3}, user_attrs={"role": "baseline"})
    assert [(t.number, t.state) for t in study.trials] == [(0, TrialState.RUNNING), (1, TrialState.WAITING)]
    # taken from the queue: the retry finds it RUNNING with its own token, so the ask returns it (without the token
    # it would take it for another process's, and ask a new trial)
    faults.after = 1
    popped = study.ask()
    assert popped.number == 1 and popped.suggest_int("x", 0, 9) == 3 and len(study.trials) == 2
    assert study.trials[1].state == TrialState.RUNNING and study.trials[1].system_attrs[CLAIMED_ATTR]
    # a trial another process took is not this one's
    study.enqueue_trial({"x": 4})
    other = storage.get_all_trials(study._study_id, states=(TrialState.WAITING,))[0]
    assert storage.set_trial_state_values(other._trial_id, TrialState.RUNNING)  # "the other process"
    faults.before = 1
    assert not storage.set_trial_state_values(other._trial_id, TrialState.RUNNING)
    # told: the retry finds the trial finished as told, which is no error
    faults.after = 1
    study.tell(asked, 0.5)
    faults.after = 1
    study.tell(popped, state=TrialState.FAIL)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    assert study.trials[0].value == 0.5
    # attributes, parameters and intermediate values written twice are written once
    faults.after = 1
    study.tell(other.number, 1.0)
    third = study.ask()
    for write in (lambda: third.set_user_attr("k", 1), lambda: third.suggest_float("y", 0, 1),
                  lambda: third.report(0.1, 1)):
        faults.after = 1
        write()
    frozen = storage.get_trial(third._trial_id)
    assert frozen.user_attrs == {"k": 1} and list(frozen.params) == ["y"] and frozen.intermediate_values == {1: 0.1}
    assert faults.after == 0 and len(sleeps) == 10  # one retry for each fault


def test_db_retry_seconds_is_checked_before_any_trial():
    from hydra_plugins.lighttrack_sweeper._impl import SweepConfigError
    from hydra_plugins.lighttrack_sweeper.config import LightTrackSweeperConf

    assert LightTrackSweeperConf().db_retry_seconds == 60 and _impl().db_retry == 60
    assert _impl(db_retry_seconds=0).db_retry == 0 and _impl(db_retry_seconds=2.5).db_retry == 2.5
    for value in (-1, float("nan"), float("inf"), True, "60"):
        with pytest.raises(SweepConfigError, match=rf"hydra\.sweeper\.db_retry_seconds={value!r} is not allowed: a "
                                                   r"number of seconds >= 0 \(.*0: no retry\)"):
            _impl(db_retry_seconds=value)


# -- a real PostgreSQL restart ------------------------------------------------------------------------------------
def test_storage_calls_and_the_study_lock_survive_a_postgres_restart(postgres_server, postgres_url, caplog):
    """Storage calls made while the server is down wait for it; the advisory lock, lost with its connection, is taken
    again before the next storage call of the step that held it, and `intact_since` says it was lost."""
    caplog.set_level(logging.WARNING, logger="search.study")
    storage = open_storage(postgres_url, retry_seconds=30)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1})
    def free() -> bool:  # another session tries the lock (and lets it go again)
        return pg.advisory_lock_is_free(postgres_url)

    restart = threading.Thread(target=postgres_server.restart, args=(2,))
    restart.start()
    try:
        _down(postgres_server)
        trial = study.ask()  # waits for the server
        study.tell(trial, 1.0)
    finally:
        restart.join()
    assert [(t.number, t.state, t.system_attrs["fixed_params"]) for t in study.trials] == \
        [(0, TrialState.COMPLETE, {"x": 1})]  # the enqueued trial, taken once
    assert len(_messages(caplog, LOST)) == 1 and len(_messages(caplog, BACK)) == 1

    study_module._OUTAGES[postgres_url].last = None
    with study_lock(postgres_url, 30) as lock:
        losses = lock.losses
        assert not free()
        postgres_server.restart(0.5)
        assert free()  # lost with its connection, until this process notices
        assert not recently_disconnected(postgres_url, 60)
        study.trials  # the step's next storage call takes it again first
        assert lock.losses == losses + 1 and not free()
        # the storage's pooled connection, ended by the restart, was replaced unseen (pool_pre_ping): no retry, no
        # warning, but a sign of trouble all the same
        assert recently_disconnected(postgres_url, 60) and len(_messages(caplog, LOST)) == 1
        assert not lock.intact_since(losses) and lock.intact_since(lock.losses)
    assert free()
    assert _messages(caplog, "the study lock was lost with its database connection: taking it again")


def test_a_sweep_survives_a_postgres_restart_mid_sweep(postgres_server, postgres_url, tmp_path):
    """The server restarts (down 3 s) while the sweep's second trained trial runs: the sweep waits for it, then
    ends as if nothing happened: exit 0, exactly the budget trained, each trial once, nothing left running."""
    budget = 6
    log = tmp_path / "sweep.log"
    command = [sys.executable, str(APP), "-m", f"hydra.sweep.dir={tmp_path / 's'}", *BASE,
               f"hydra.sweeper.storage='{postgres_url}'", f"hydra.sweeper.max_trials={budget}",
               "hydra.sweeper.db_retry_seconds=30"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_")}
    env["FAKE_SLEEP"] = "1.5"
    with open(log, "w") as out:
        worker = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        started, deadline = tmp_path / "s" / "trials" / "1" / "started", time.time() + 90
        while not started.exists():  # the second trial runs: it sleeps 1.5 s, then it is told while the server is down
            assert worker.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.02)
        postgres_server.restart(3)
        returncode = worker.wait(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    output = log.read_text()
    assert returncode == 0, output
    assert f"{LOST} 30 s" in output and BACK in output, output
    trials = optuna.load_study(study_name=STUDY, storage=postgres_url).trials
    report = "\n".join(f"{t.number} {t.state.name} trained={t.user_attrs.get('trained')} "
                       f"{t.user_attrs.get('fail_reason', '')}" for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials))), report
    assert all(t.state == TrialState.COMPLETE for t in trials), report  # none RUNNING, WAITING or FAIL
    trained = [t for t in trials if t.user_attrs.get("trained")]
    assert len(trained) == budget, report
    ran = {str(p.parent) for p in (tmp_path / "s" / "trials").glob("*/ran")}
    assert ran == {t.user_attrs["run_dir"] for t in trained}, report
