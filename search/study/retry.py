"""A database that drops its connections for a while (a PostgreSQL restart, a network outage) does not end a sweep
process: with `retry_seconds` (hydra.sweeper.db_retry_seconds) a URL storage is `RetryingRDBStorage`, whose every
storage call that fails for a lost connection is tried again, with a backoff, for up to that many seconds (a warning
when the connection is lost, one when it is back, once per outage); its engine pings a pooled connection before
using it (pool_pre_ping), so that one the server closed meanwhile is replaced, not used. A retried write never takes
effect twice: most writes are idempotent (attributes, parameters, heartbeats, intermediate values), and the two that
are not carry a token (a trial system attribute written in the same transaction) by which a retry finds what an
attempt whose reply was lost did: creating a trial (CREATED_ATTR) and taking a waiting trial (CLAIMED_ATTR). The
PostgreSQL study lock lives on a connection of its own: lost with it, it is taken again before the next storage call
of the step that held it (`held_lock`, search.study.lock).

The two Optuna 5.0 RDBStorage transactions copied here (`_create_new_trial`, taking a WAITING trial) must be checked
against Optuna's on an upgrade."""
from __future__ import annotations

import copy
import functools
import json
import logging
import random
import threading
import time
import uuid
from datetime import datetime
from typing import Any, Callable, Optional, Sequence, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import storage as _rdb
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

DB_RETRY_SECONDS = 60.0  # hydra.sweeper.db_retry_seconds' default
_BACKOFF_FIRST, _BACKOFF_MAX = 0.25, 4.0  # seconds between attempts: doubled after each, at most _BACKOFF_MAX
_sleep, _clock = time.sleep, time.monotonic  # the tests replace them
# the trial system attributes a retried write finds its own earlier attempt by (RetryingRDBStorage)
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
    return location in _OUTAGES and _OUTAGES[location].within(seconds)  # keyed by URL: a journal path never is


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


held_lock = threading.local()  # lock: the study lock this thread holds (search.study.lock), checked before its calls


def check_held_lock() -> None:
    lock = getattr(held_lock, "lock", None)
    if lock is not None:
        lock.check()


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
            return retry_call(call, self.retry_url, self.retry_seconds, before=check_held_lock)
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
