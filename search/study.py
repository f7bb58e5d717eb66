"""Where a study lives: its storage, opened once per process, and the helpers that keep it sound.

By default a study is an Optuna journal file, `<sweep dir>/journal.log`, which several local processes
append to safely (Optuna's file lock); any Optuna storage URL (sqlite:///..., postgresql+psycopg://...) works
too, and PostgreSQL lets sweep processes on several machines share one study (study_lock).
How a trial's job finds its trial in the study is the sweeper's (hydra_plugins/lighttrack_sweeper/jobs.py).

Heartbeats (`Heartbeat`, opt-in): the sweep process that holds a RUNNING trial records a heartbeat for it every
`interval` seconds (`Beating`); a RUNNING trial whose last heartbeat is older than the grace period lost its sweep
process (killed, its machine down, on any host) and `fail_stale_trials` marks it FAIL, then re-enqueues it (a
WAITING copy with the same parameters) at most `retry` times. PostgreSQL and the other URL storages are Optuna's
RDBStorage, which keeps heartbeats in its own table (the database's clock); Optuna's JournalStorage has no
heartbeat (optuna 5.0: it does not implement BaseHeartbeat and takes no heartbeat arguments), so a journal file
gets `HeartbeatJournalStorage`, which records each heartbeat in the journal itself as a trial system attribute (the
beating host's wall clock: hosts sharing a journal need clocks that agree to well within the grace period).

A database that drops its connections for a while (a PostgreSQL restart, a network outage) does not end a sweep
process: with `retry_seconds` (hydra.sweeper.db_retry_seconds) a URL storage is `RetryingRDBStorage`, whose every
storage call that fails for a lost connection is tried again, with a backoff, for up to that many seconds (a warning
when the connection is lost, one when it is back, once per outage); its engine pings a pooled connection before
using it (pool_pre_ping), so that one the server closed meanwhile is replaced, not used. A retried write never takes
effect twice: most writes are idempotent (attributes, parameters, heartbeats, intermediate values), and the two that
are not carry a token (a trial system attribute written in the same transaction) by which a retry finds what an
attempt whose reply was lost did: creating a trial (CREATED_ATTR) and taking a waiting trial (CLAIMED_ATTR). The
PostgreSQL study lock lives on a connection of its own: lost with it, it is taken again before the next storage call
of the step that held it (see study_lock).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import random
import select
import socket
import threading
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Container, Iterator, Mapping, Optional, Sequence, TypeVar

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import storage as _rdb
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from .record import OF_A_RUN, TrialAttr

log = logging.getLogger(__name__)


def is_url(storage: str) -> bool:
    return "://" in storage


def storage_location(storage: Optional[str], sweep_dir: str | os.PathLike) -> str:
    """The storage as configured: a URL, or the journal file's absolute path (default: in the sweep dir)."""
    if storage in (None, ""):
        return str((Path(sweep_dir) / "journal.log").resolve())
    return storage if is_url(storage) else str(Path(storage).expanduser().resolve())


class StorageError(ValueError):
    """A storage that cannot be opened (a bad URL, an unreachable database, an unwritable file); one line
    that says why, in place of the database driver's traceback."""


@dataclass(frozen=True)
class Heartbeat:
    """A storage's heartbeat settings (hydra.sweeper.heartbeat_interval, grace_period, retry_failed): a RUNNING
    trial with no heartbeat for `grace_period` seconds (None: Optuna's default, 2 x interval) is failed, and
    re-enqueued at most `retry` times (0: never)."""

    interval: int
    grace_period: Optional[int] = None
    retry: int = 1

    @property
    def grace(self) -> int:
        return self.grace_period if self.grace_period is not None else 2 * self.interval

    def callback(self) -> Optional[Callable[[optuna.Study, FrozenTrial], None]]:
        return RetryStaleTrial(max_retry=self.retry) if self.retry > 0 else None


def heartbeat(interval: Optional[int], grace_period: Optional[int] = None, retry: int = 1) -> Optional[Heartbeat]:
    """The settings as the sweeper's config holds them (interval null: heartbeats off, None)."""
    return None if interval is None else Heartbeat(int(interval), None if grace_period is None else int(grace_period),
                                                   int(retry))


def open_storage(location: str, heartbeat: Optional[Heartbeat] = None, retry_seconds: float = 0) -> Any:
    """The storage at a URL or the journal file at a path (created with its folder); StorageError if it
    cannot be opened or written. With `heartbeat`, one that records heartbeats and knows stale trials (see the
    module's docstring). With `retry_seconds` (> 0; URL storages only), storage calls survive a database that drops
    its connections for up to that long (RetryingRDBStorage); opening it is not retried (a database unreachable at the
    start is a setting to fix). Memoised per process and settings: the sweeper and the jobs it runs in its own process
    share one storage object (a journal is replayed once, not again for each trial); a journal file deleted
    and created again at the same path is another file, opened anew."""
    try:
        if is_url(location):
            return _url_storage(location, heartbeat, float(retry_seconds or 0))
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        if Path(location).exists() and not os.access(location, os.W_OK):
            raise PermissionError(f"{location} is not writable")
        with open(location, "ab"):  # created now (Optuna would create it), so that it has an identity
            pass
        identity = os.stat(location)
        return _journal_storage(location, identity.st_dev, identity.st_ino, heartbeat)
    except Exception as e:  # SQLAlchemy, a database driver or the file system: many kinds, one meaning
        text = str(e).strip().splitlines()
        raise StorageError(f"{type(e).__name__}: {text[0] if text else 'no message'}") from None


# what a process that lost the race to create a new database's tables sees (PostgreSQL: IntegrityError on
# `CREATE TYPE studydirection`, DuplicateTable, a duplicate version row; a deadlock between the creators)
_CREATION_RACE = ("already exists", "duplicate key value", "deadlock detected")


def _creation_race(error: BaseException) -> bool:
    import sqlalchemy.exc

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sqlalchemy.exc.DBAPIError) and any(m in str(error) for m in _CREATION_RACE):
            return True
        error = error.__cause__ or error.__context__
    return False


@functools.lru_cache(maxsize=16)
def _url_storage(url: str, heartbeat: Optional[Heartbeat] = None, retry_seconds: float = 0, attempts: int = 10) -> Any:
    """Optuna's storage at a URL (with `heartbeat`: RDBStorage's heartbeat_interval, grace_period and
    heartbeat_stale_trial_callback, the name optuna 5.0 gives failed_trial_callback; with `retry_seconds`: a
    RetryingRDBStorage), under Optuna's cache. Opening an empty database creates Optuna's tables, types and version
    rows; sweep processes started together race to do it and all but one fail: the loser's transaction was rolled
    back whole, so it opens the storage again (after a random pause), and finds what the winner created."""
    settings: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}  # a pooled connection the server closed
    if heartbeat is not None:  # (restarted, or timed out) is replaced when it is next taken, not used and failed
        settings.update(heartbeat_interval=heartbeat.interval, grace_period=heartbeat.grace_period,
                        heartbeat_stale_trial_callback=heartbeat.callback())
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are experimental in Optuna: known, not news
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RetryingRDBStorage(url, retry_seconds=retry_seconds, **settings) if retry_seconds > 0 \
                    else RDBStorage(url, **settings)
            return optuna.storages.get_storage(storage)
        except Exception as e:
            if attempt == attempts or not _creation_race(e):
                raise
            time.sleep(random.uniform(0.05, 0.3) * attempt)


# -- a database that drops its connections: storage calls retried ---------------------------------------------------
DB_RETRY_SECONDS = 60.0  # hydra.sweeper.db_retry_seconds' default
_BACKOFF_FIRST, _BACKOFF_MAX = 0.25, 4.0  # seconds between attempts: doubled after each, at most _BACKOFF_MAX
_sleep, _clock = time.sleep, time.monotonic  # the tests replace them
# the trial system attributes a retried write finds its own earlier attempt by (search.study.RetryingRDBStorage)
CREATED_ATTR = "lighttrack:created"
CLAIMED_ATTR = "lighttrack:claimed"
T = TypeVar("T")


def is_connection_error(error: BaseException) -> bool:
    """Whether a storage call failed because the database could not be reached: SQLAlchemy's OperationalError (the
    server closed the connection, refused a new one, a deadlock or a timeout: all of them worth another attempt),
    InterfaceError, a DBAPI error SQLAlchemy took for a disconnect, or Optuna's StorageInternalError caused by one.
    Integrity and data errors, and Optuna's own (a finished trial, a missing study), are not."""
    import sqlalchemy.exc as sa

    if not isinstance(error, (sa.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
        return False
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)) or \
                isinstance(error, sa.DBAPIError) and error.connection_invalidated:
            return True
        error = error.__cause__ or error.__context__
    return False


def _describe(error: BaseException) -> str:
    """The driver's one line on why (not Optuna's generic StorageInternalError message)."""
    import sqlalchemy.exc as sa

    cause, seen = error, set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, sa.DBAPIError) and cause.orig is not None:
            error = cause.orig
            break
        cause = cause.__cause__ or cause.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'no message'}"


class _Outage:
    """One database's connection trouble, as this process sees it (all its storages and locks on that URL): the
    warnings, once per outage, and when the last trouble was (a reconnection, or a disconnect the engine's pre-ping
    repaired unseen)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: Optional[float] = None  # time.monotonic() of the failure that began the outage in progress
        self.last: Optional[float] = None  # of the last sign of trouble (failure, reconnection, pre-ping disconnect)

    def lost(self, error: BaseException, seconds: float) -> None:
        with self._lock:
            self.last = _clock()
            if self.since is None:
                self.since = self.last
                log.warning("database connection lost, retrying for up to %g s (hydra.sweeper.db_retry_seconds): %s",
                            seconds, _describe(error))

    def back(self) -> None:
        if self.since is None:  # the usual case, without the lock
            return
        with self._lock:
            if self.since is not None:
                self.last = _clock()
                log.warning("database reconnected after %.1f s", self.last - self.since)
                self.since = None

    def disconnected(self) -> None:
        self.last = _clock()

    def within(self, seconds: float) -> bool:
        """Whether the database is out now, or was less than `seconds` ago."""
        last = self.last
        return self.since is not None or last is not None and _clock() - last < seconds


_OUTAGES: dict[str, _Outage] = {}
_OUTAGES_LOCK = threading.Lock()


def _outage(url: str) -> _Outage:
    with _OUTAGES_LOCK:
        return _OUTAGES.setdefault(url, _Outage())


def recently_disconnected(location: str, seconds: float) -> bool:
    """Whether this process lost its connection to the database at `location` less than `seconds` ago (or now):
    every sweep process lost it too, and their trials' heartbeats lapsed meanwhile; they beat again within an
    interval of getting it back."""
    return is_url(location) and location in _OUTAGES and _OUTAGES[location].within(seconds)


def retry_call(call: Callable[[int], T], url: str, seconds: float,
               before: Optional[Callable[[], None]] = None) -> T:
    """call(attempt) (attempt: 0, then 1, 2, ... for the retries, so that a non-idempotent call can look for what an
    attempt whose reply was lost did), after before() (the same), tried again while it fails for a lost connection
    (is_connection_error), with a backoff from _BACKOFF_FIRST doubling up to _BACKOFF_MAX s, for up to `seconds` after
    the first failure; then its error is raised. Any other error is raised at once; `seconds` 0: no retry."""
    outage, attempt, delay, deadline = _outage(url), 0, _BACKOFF_FIRST, None
    while True:
        try:
            if before is not None:
                before()
            result = call(attempt)
        except Exception as e:
            if seconds <= 0 or not is_connection_error(e):
                raise
            now = _clock()
            deadline = now + seconds if deadline is None else deadline
            outage.lost(e, seconds)
            if now >= deadline:
                log.error("database unreachable for %g s (hydra.sweeper.db_retry_seconds): giving up: %s", seconds,
                          _describe(e))
                raise
            _sleep(min(delay * random.uniform(0.8, 1.2), deadline - now))
            attempt, delay = attempt + 1, min(2 * delay, _BACKOFF_MAX)
            continue
        outage.back()
        return result


_CALLS = threading.local()  # depth: whether this thread is inside a retried storage call (only the outermost retries)


class RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose storage calls survive a database that drops its connections for up to
    `retry_seconds` (retry_call): each call is one transaction, which a lost connection rolls back, so trying it again
    is safe, with one exception: the commit's reply lost (the server committed, then the connection dropped). Most
    writes do the same again (attributes and heartbeats are upserts; a parameter or an intermediate value written
    twice is the same row), a finished trial told again is found finished as told, and the two that would take effect
    twice leave a token in their transaction by which a retry finds what the lost attempt did: `_create_new_trial`
    (a trial system attribute CREATED_ATTR: the retry returns the trial the attempt created) and taking a WAITING trial
    (`set_trial_state_values(RUNNING)`, CLAIMED_ATTR: the retry knows the trial it finds RUNNING is its own). Before
    each attempt, the study lock this thread holds is checked, and taken again if its connection was lost
    (study_lock). Opening the storage is not retried; creating a study is, and a retry may find the study its lost
    attempt created (DuplicatedStudyError, which optuna.create_study(load_if_exists=True), as the sweeper calls it,
    takes for the study to load)."""

    def __init__(self, url: str, *, retry_seconds: float = DB_RETRY_SECONDS, **kwargs: Any) -> None:
        self.retry_url, self.retry_seconds = url, retry_seconds  # the location as configured: the outage's key
        super().__init__(url, **kwargs)
        self._listen()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._listen()

    def _listen(self) -> None:
        """A disconnect the engine saw, also one its pre-ping repaired unseen, is a sign of trouble (_Outage.last)."""
        import sqlalchemy

        outage = _outage(self.retry_url)

        def seen(context: Any) -> None:
            if context.is_disconnect:
                outage.disconnected()

        sqlalchemy.event.listen(self.engine, "handle_error", seen)

    def _retried(self, call: Callable[[int], T]) -> T:
        if getattr(_CALLS, "depth", 0):  # a call inside a retried one: the outer one retries the whole
            return call(0)
        _CALLS.depth = 1
        try:
            return retry_call(call, self.retry_url, self.retry_seconds, before=_check_held_lock)
        finally:
            _CALLS.depth = 0

    def delete_study(self, study_id: int) -> None:
        def attempt(n: int) -> None:
            try:
                RDBStorage.delete_study(self, study_id)
            except KeyError:
                if not n:  # a retry that finds it gone: the attempt whose reply was lost deleted it
                    raise

        self._retried(attempt)

    def _create_new_trial(self, study_id: int, template_trial: Optional[FrozenTrial] = None) -> FrozenTrial:
        """RDBStorage._create_new_trial's transaction (its own retries left out: they would create the trial again),
        with a token; a retry first looks for the trial with its token."""
        token = uuid.uuid4().hex

        def attempt(n: int) -> FrozenTrial:
            if n:
                found = self._trial_with(study_id, CREATED_ATTR, token)
                if found is not None:
                    log.warning("trial %d was created before the connection dropped: not created again", found.number)
                    return found
            template = _with_token(template_trial, token)
            with _rdb._create_scoped_session(self.scoped_session) as session:
                _rdb.models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
                trial = self._get_prepared_new_trial(study_id, template, session)
                frozen = copy.deepcopy(template)
                frozen.number, frozen.datetime_start, frozen._trial_id = \
                    trial.number, trial.datetime_start, trial.trial_id
            return frozen

        return self._retried(attempt)

    def _trial_with(self, study_id: int, key: str, token: str) -> Optional[FrozenTrial]:
        import json

        models = _rdb.models
        with _rdb._create_scoped_session(self.scoped_session) as session:
            found = (session.query(models.TrialModel).join(models.TrialSystemAttributeModel)
                     .filter(models.TrialModel.study_id == study_id, models.TrialSystemAttributeModel.key == key,
                             models.TrialSystemAttributeModel.value_json == json.dumps(token))
                     .one_or_none())
            return None if found is None else self._build_frozen_trial_from_trial_model(found)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Optional[Sequence[float]] = None) -> bool:
        if state == TrialState.RUNNING:
            return self._claim(trial_id, values)

        def attempt(n: int) -> bool:
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # a retry that finds the trial finished as it was to be: the attempt whose reply was lost did it
                if n and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return self._retried(attempt)

    def _claim(self, trial_id: int, values: Optional[Sequence[float]]) -> bool:
        """A WAITING trial taken (RUNNING; False if another process took it first): RDBStorage's transaction, plus the
        token. A retry that finds it RUNNING with its own token took it (the reply was lost), not another process."""
        import json

        import sqlalchemy.exc

        models, token = _rdb.models, uuid.uuid4().hex

        def attempt(n: int) -> bool:
            try:
                with _rdb._create_scoped_session(self.scoped_session) as session:
                    trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                    self.check_trial_is_updatable(trial_id, trial.state)
                    if trial.state != TrialState.WAITING:
                        mine = models.TrialSystemAttributeModel.find_by_trial_and_key(trial, CLAIMED_ATTR, session) \
                            if n else None
                        return mine is not None and json.loads(mine.value_json) == token
                    for objective, value in enumerate(values or ()):
                        self._set_trial_value_without_commit(session, trial, objective, value)
                    trial.state, trial.datetime_start = TrialState.RUNNING, datetime.now()
                    self._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel, trial_id,
                                                        CLAIMED_ATTR, token)
            except sqlalchemy.exc.IntegrityError:
                return False
            return True

        return self._retried(attempt)


def _retried_method(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def retried(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retried(lambda attempt: method(self, *args, **kwargs))

    return retried


# the calls that read, or write what a second attempt writes the same (Optuna's cache calls the private ones)
for _name in ("create_new_study", "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
              "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "get_trial_user_attrs",
              "get_trial_system_attrs", "get_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial",
              "get_all_trials", "_get_trials", "get_best_trial", "_get_best_trial_id", "_get_stale_trial_ids",
              "set_study_user_attr", "set_study_system_attr", "set_trial_param", "_set_trial_param",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "record_heartbeat"):
    setattr(RetryingRDBStorage, _name, _retried_method(_name))
del _name


def _with_token(template: Optional[FrozenTrial], token: str) -> FrozenTrial:
    """The trial to create, with its token (no template: a new RUNNING trial, as RDBStorage creates one)."""
    if template is None:
        return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, values=None, datetime_start=datetime.now(),
                           datetime_complete=None, params={}, distributions={}, user_attrs={},
                           system_attrs={CREATED_ATTR: token}, intermediate_values={}, trial_id=-1)
    marked = copy.copy(template)
    marked.system_attrs = {**template.system_attrs, CREATED_ATTR: token}
    return marked


@functools.lru_cache(maxsize=16)
def _journal_storage(path: str, device: int, inode: int, heartbeat: Optional[Heartbeat] = None) -> Any:
    """The journal file that is (device, inode) at `path`. The storage holds the file open for as long as it
    lives, so that no file created later can be given that inode (file systems reuse a deleted file's inode
    at once) and be served this storage's stale replay."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    pin = os.open(path, os.O_RDONLY)
    opened = os.fstat(pin)
    if (opened.st_dev, opened.st_ino) != (device, inode):
        os.close(pin)
        raise FileNotFoundError(f"{path} was replaced while it was opened")
    backend = JournalFileBackend(path)
    storage = JournalStorage(backend) if heartbeat is None else HeartbeatJournalStorage(backend, heartbeat)
    weakref.finalize(storage, os.close, pin)
    return storage


# the system attribute a journal trial's heartbeat is kept in: the wall-clock time (time.time()) of the last one
HEARTBEAT_ATTR = "lighttrack:heartbeat"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage with the heartbeat RDBStorage has (optuna.storages.fail_stale_trials works on it
    as on RDBStorage): each heartbeat is a line of the journal (a trial system attribute, HEARTBEAT_ATTR: the
    beating process's time.time()); a RUNNING trial whose last one is older than the grace period is stale, one
    that never beat is not (as in RDBStorage)."""

    def __init__(self, backend: Any, heartbeat: Heartbeat) -> None:
        super().__init__(backend)
        self.heartbeat_interval, self.grace_period = heartbeat.interval, heartbeat.grace_period
        self.heartbeat_stale_trial_callback = heartbeat.callback()

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if isinstance(t.system_attrs.get(HEARTBEAT_ATTR), (int, float))
                and now - t.system_attrs[HEARTBEAT_ATTR] > grace]

    def get_heartbeat_interval(self) -> Optional[int]:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Optional[Callable[[optuna.Study, FrozenTrial], None]]:
        return self.heartbeat_stale_trial_callback


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry (optuna.storages.RetryFailedTrialCallback, named RetryHeartbeatStaleTrialCallback since 4.9):
    a WAITING copy of the failed trial, with its parameters, its fixed parameters and the user attributes that say
    what it runs (role, stage, repeat, seed, head), and system attributes `failed_trial` (the first trial of the
    series) and `retry_history` (every earlier one); at most `max_retry` copies in a series. The copy starts
    without what a run of the trial wrote (owner, reason, orphaned, trained, cost, run dir: search.record.OF_A_RUN)
    and without the failed trial's last heartbeat: it is a new run of the same trial, not a stale one."""

    def __init__(self, max_retry: Optional[int] = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in OF_A_RUN}
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items()
                              if k not in (HEARTBEAT_ATTR, CREATED_ATTR, CLAIMED_ATTR)}
        super().__call__(study, trial)


def retried(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of the trials a retry re-runs (a stale trial re-enqueued by RetryStaleTrial): the retry is that
    trial now, for every count and check."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def retry_of(system_attrs: Mapping[str, Any]) -> Optional[int]:
    """The trial a retry re-runs (the last of its series) by the retry's system attributes; None for a trial that
    is no retry."""
    history = system_attrs.get("retry_history") or []
    return history[-1] if history else None


def _is_postgres(location: str) -> bool:
    return is_url(location) and location.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def is_lockable(location: str) -> bool:
    """Whether `study_lock` serialises the sweep processes of this storage (a journal file, PostgreSQL)."""
    return not is_url(location) or _is_postgres(location)


class StudyLock:
    """What study_lock yields: a lock that cannot be lost (a lock file), or none (other URL storages)."""

    losses = 0  # how many times the lock was lost (with its database connection) and taken again

    def intact_since(self, losses: int) -> bool:
        """Whether the lock was held throughout since `losses` was read (it is held now, in any case)."""
        return True


class _AdvisoryLock(StudyLock):
    """PostgreSQL's advisory lock, held by a connection of its own: a connection that drops (a server restart, a
    network outage) takes the lock with it, and another sweep process may take it meanwhile. `check` (before each
    storage call of the thread that holds it, RetryingRDBStorage, and at `intact_since`) finds it lost and takes it
    again, waiting for it as at the start: no two processes run a step at once, but the step that lost it ran in two
    parts, with another process's step possibly between them (`losses` counts it: a step whose checks must hold when
    it writes takes them again, SweeperImpl._loop). Checking costs no round trip: a connection the server ended has
    its socket readable (the server's goodbye, or its end of file), one that is idle and alive has not."""

    def __init__(self, url: str, retry_seconds: float) -> None:
        self.url, self.retry_seconds = url, retry_seconds
        self.connection: Any = None
        self.losses = 0

    def _take(self) -> None:
        connection = _lock_engine(self.url).connect()
        try:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({_ADVISORY_KEY})")
        except BaseException:
            _close_quietly(connection)
            raise
        self.connection = connection

    def acquire(self) -> None:
        retry_call(lambda attempt: self._take(), self.url, self.retry_seconds)

    def check(self) -> None:
        """One try: the lock held on a live connection, taken again if it was lost (a connection error if the
        database is still out: the caller retries)."""
        if self.connection is not None:
            if _connection_alive(self.connection):
                return
            _close_quietly(self.connection)
            self.connection = None
            self.losses += 1
            log.warning("the study lock was lost with its database connection: taking it again (another sweep process "
                        "may have taken a step meanwhile)")
        self._take()

    def intact_since(self, losses: int) -> bool:
        retry_call(lambda attempt: self.check(), self.url, self.retry_seconds)
        return self.losses == losses

    def release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is None:
            return
        if not _connection_alive(connection):
            log.warning("the study lock was lost with its database connection before the step that held it ended: "
                        "another sweep process may have taken a step meanwhile")
        _close_quietly(connection)  # the lock ends with its session


def _connection_alive(connection: Any) -> bool:
    """Whether an idle connection (SQLAlchemy's) still has its session on the server."""
    try:
        raw = connection.connection.dbapi_connection
        if raw is None or getattr(raw, "closed", False) or getattr(raw, "broken", False):
            return False
        readable, _, _ = select.select([raw.fileno()], [], [], 0)
    except Exception:  # a connection SQLAlchemy invalidated, a closed socket
        return False
    if not readable:
        return True
    try:  # the server sent something unasked: most likely that it ends the session; ask it
        connection.exec_driver_sql("SELECT 1")
        return True
    except Exception:
        return False


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # a connection already lost: nothing to close
        pass


_HELD = threading.local()  # lock: the _AdvisoryLock this thread holds (study_lock), checked before its storage calls


def _check_held_lock() -> None:
    lock = getattr(_HELD, "lock", None)
    if lock is not None:
        lock.check()


@contextlib.contextmanager
def study_lock(location: str, retry_seconds: float = 0) -> Iterator[StudyLock]:
    """Serialises check-then-write steps (enqueueing, asking) between the sweep processes sharing a storage: a
    lock file beside a journal; on PostgreSQL, an advisory lock the database holds for its connection (processes on
    other machines wait for it too, and a process that dies frees it with its connection). Other URL storages get
    no lock: the sweeper's rules settle what concurrent processes asked twice (duplicates, reference copies).
    With `retry_seconds`, taking the PostgreSQL lock survives a database out for that long, and a lock lost with its
    connection during the step is taken again (_AdvisoryLock); yields the lock (StudyLock)."""
    if not is_url(location):
        from tracker.io import file_lock

        with file_lock(location + ".sweeper.lock"):
            yield StudyLock()
    elif _is_postgres(location):
        lock = _AdvisoryLock(location, retry_seconds)  # a connection of its own, closed (unlocked) on exit
        lock.acquire()
        outer, _HELD.lock = getattr(_HELD, "lock", None), lock
        try:
            yield lock
        finally:
            _HELD.lock = outer
            lock.release()
    else:
        yield StudyLock()


# one advisory lock per database (as one lock file per journal): an arbitrary fixed 63-bit number
_ADVISORY_KEY = 0x4C54_5357_4545_50  # "LTSWEEP"


@functools.lru_cache(maxsize=16)
def _lock_engine(url: str) -> Any:
    """Connections for study_lock: opened for each locked step and closed after it (no pool, so a lock never
    outlives its step), outside any transaction (a server's idle-in-transaction timeout cannot end one)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def trial_id(storage: Any, study_name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def owner_attrs() -> dict[str, Any]:
    return {TrialAttr.HOST: socket.gethostname(), TrialAttr.PID: os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphans(study: optuna.Study, storage: Any, unowned: bool = False) -> list[int]:
    """RUNNING trials whose sweep process (on this host) is gone are failed with that reason. With `unowned` (the
    caller holds `study_lock`, under which every sweep process asks a trial and records itself as its owner in one
    step), a RUNNING trial with no owner was asked by a process that died in between: failed too.
    On a storage with heartbeats and a retry callback, a trial whose process died while it ran is retried as a
    stale one is (a WAITING copy), whichever finds it first; an unowned one never started: not retried."""
    failed = []
    retry = storage.get_heartbeat_stale_trial_callback() if is_heartbeat_enabled(storage) else None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get(TrialAttr.PID), t.user_attrs.get(TrialAttr.HOST)
        reason = None
        if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            reason = f"its sweep process (pid {pid}) died while it ran"
        elif unowned and host is None:
            reason = "its sweep process died between asking it and recording itself as its owner"
        if reason is not None:
            number = trial_id(storage, study.study_name, t.number)
            storage.set_trial_user_attr(number, TrialAttr.FAIL_REASON, reason)
            storage.set_trial_user_attr(number, TrialAttr.ORPHANED, True)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
            if retry is not None and host is not None:
                retry(study, copy.deepcopy(storage.get_trial(number)))
    return failed


def fail_stale_trials(study: optuna.Study, storage: Any, held: Container[int] = ()) -> list[int]:
    """RUNNING trials whose heartbeat is older than the storage's grace period (their sweep process died or hangs,
    on any host) are failed, with that reason and `orphaned` as fail_orphans records them, and passed to the
    storage's stale-trial callback (RetryStaleTrial: re-enqueued); their numbers. Nothing without heartbeats.
    `held`: the trial ids the calling process holds (Beating): it is alive, so a late beat of its own is no death.
    This is optuna.storages.fail_stale_trials step for step (the same stale trials, the same FAIL, the same
    callback), but it records the reason before the FAIL: a finished trial's attributes cannot be written."""
    if not is_heartbeat_enabled(storage):
        return []
    grace = _grace_period(storage)
    failed = []
    for stale in storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name)):
        if stale in held:
            continue
        attrs = storage.get_trial(stale).user_attrs
        owner = f"pid {attrs.get(TrialAttr.PID, '?')} on {attrs.get(TrialAttr.HOST, '?')}"
        try:
            storage.set_trial_user_attr(stale, TrialAttr.FAIL_REASON, f"its sweep process ({owner}) stopped beating: "
                                        f"no heartbeat for more than {grace} s (it died, or hung)")
            storage.set_trial_user_attr(stale, TrialAttr.ORPHANED, True)
            if storage.set_trial_state_values(stale, state=TrialState.FAIL):
                failed.append(stale)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process failed it first (or it just ended)
            continue
    callback = storage.get_heartbeat_stale_trial_callback()
    for stale in failed:
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(stale)))
    return [storage.get_trial(stale).number for stale in failed]


def _grace_period(storage: Any) -> int:
    """The grace period of a storage with heartbeats (RDBStorage's under Optuna's cache, or a journal's)."""
    backend = storage._backend if isinstance(storage, optuna.storages._CachedStorage) else storage
    grace = getattr(backend, "grace_period", None)
    return grace if grace is not None else 2 * storage.get_heartbeat_interval()


class Beating:
    """Records a heartbeat for each trial this sweep process holds (from its ask to its tell), every `interval`
    seconds, in a background thread; Optuna beats only inside study.optimize, which the ask/tell sweeper does not
    use. The trials are the sweep process's whether the launcher runs them in it or in worker processes: while it
    lives and holds them they beat, and when it dies they stop. A beat that fails (the database unreachable for
    longer than RetryingRDBStorage waits, or a storage that does not retry) is logged and tried again at the next
    interval."""

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lighttrack-heartbeat", daemon=True)
        self._thread.start()

    @property
    def held(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._held)

    def add(self, trial_id: int) -> None:
        """Hold a trial: it beats now, and every interval until `discard`."""
        with self._lock:
            self._held.add(trial_id)
        self._beat(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._held.discard(trial_id)

    def close(self) -> None:
        """Stops the thread (its beat in progress finishes first); the held trials beat no more."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._held.clear()

    def __enter__(self) -> "Beating":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                held = sorted(self._held)
            for held_id in held:
                if self._stop.is_set():
                    return
                self._beat(held_id)

    def _beat(self, held_id: int) -> None:
        with self._lock:
            if held_id not in self._held:  # told meanwhile: a finished trial takes no heartbeat
                return
        try:
            self.storage.record_heartbeat(held_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told (or failed by another process) between the check and the beat
        except Exception as e:  # the storage unreachable for a moment: the next interval tries again
            log.warning("heartbeat of trial id %d failed: %s: %s", held_id, type(e).__name__, e)
