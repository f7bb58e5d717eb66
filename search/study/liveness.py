"""Which RUNNING trials still have a live sweep process, and what happens to those that do not.

Heartbeats (`Heartbeat`, opt-in): the sweep process that holds a RUNNING trial records a heartbeat for it every
`interval` seconds (`Beating`); a RUNNING trial whose last heartbeat is older than the grace period lost its sweep
process (killed, its machine down, on any host) and `fail_stale_trials` marks it FAIL, then re-enqueues it (a
WAITING copy with the same parameters) at most `retry` times. PostgreSQL and the other URL storages are Optuna's
RDBStorage, which keeps heartbeats in its own table (the database's clock); Optuna's JournalStorage has no
heartbeat (optuna 5.0: it does not implement BaseHeartbeat and takes no heartbeat arguments), so a journal file
gets `HeartbeatJournalStorage`, which records each heartbeat in the journal itself as a trial system attribute (the
beating host's wall clock: hosts sharing a journal need clocks that agree to well within the grace period).
Without heartbeats, `fail_orphans` fails the trials whose sweep process on this host is gone."""
from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Container, Mapping, Optional

import optuna
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from ..record import OF_A_RUN, TrialAttr
from .retry import CLAIMED_ATTR, CREATED_ATTR

log = logging.getLogger(__name__)


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
