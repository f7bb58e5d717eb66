"""Where a study lives: its storage, opened once per process, and the helpers that keep it sound.

By default a study is an Optuna journal file, `<sweep dir>/journal.log`, which several local processes
append to safely (Optuna's file lock); any Optuna storage URL (sqlite:///..., postgresql+psycopg://...) works
too, and PostgreSQL lets sweep processes on several machines share one study (study_lock).
How a trial's job finds its trial in the study is the sweeper's (hydra_plugins/lighttrack_sweeper/jobs.py).
"""
from __future__ import annotations

import contextlib
import functools
import os
import random
import socket
import time
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional

import optuna
from optuna.trial import TrialState

from .record import TrialAttr


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


def open_storage(location: str) -> Any:
    """The storage at a URL or the journal file at a path (created with its folder); StorageError if it
    cannot be opened or written. Memoised per process: the sweeper and the jobs it runs in its own process
    share one storage object (a journal is replayed once, not again for each trial); a journal file deleted
    and created again at the same path is another file, opened anew."""
    try:
        if is_url(location):
            return _url_storage(location)
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        if Path(location).exists() and not os.access(location, os.W_OK):
            raise PermissionError(f"{location} is not writable")
        with open(location, "ab"):  # created now (Optuna would create it), so that it has an identity
            pass
        identity = os.stat(location)
        return _journal_storage(location, identity.st_dev, identity.st_ino)
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
def _url_storage(url: str, attempts: int = 10) -> Any:
    """Optuna's storage at a URL. Opening an empty database creates Optuna's tables, types and version rows;
    sweep processes started together race to do it and all but one fail: the loser's transaction was rolled back
    whole, so it opens the storage again (after a random pause), and finds what the winner created."""
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.get_storage(url)
        except Exception as e:
            if attempt == attempts or not _creation_race(e):
                raise
            time.sleep(random.uniform(0.05, 0.3) * attempt)


@functools.lru_cache(maxsize=16)
def _journal_storage(path: str, device: int, inode: int) -> Any:
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
    storage = JournalStorage(JournalFileBackend(path))
    weakref.finalize(storage, os.close, pin)
    return storage


def _is_postgres(location: str) -> bool:
    return is_url(location) and location.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def is_lockable(location: str) -> bool:
    """Whether `study_lock` serialises the sweep processes of this storage (a journal file, PostgreSQL)."""
    return not is_url(location) or _is_postgres(location)


@contextlib.contextmanager
def study_lock(location: str) -> Iterator[None]:
    """Serialises check-then-write steps (enqueueing, asking) between the sweep processes sharing a storage: a
    lock file beside a journal; on PostgreSQL, an advisory lock the database holds for its connection (processes on
    other machines wait for it too, and a process that dies frees it with its connection). Other URL storages get
    no lock: the sweeper's rules settle what concurrent processes asked twice (duplicates, reference copies)."""
    if not is_url(location):
        from tracker.io import file_lock

        with file_lock(location + ".sweeper.lock"):
            yield
    elif _is_postgres(location):
        with _lock_engine(location).connect() as connection:  # a connection of its own, closed (unlocked) on exit
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({_ADVISORY_KEY})")
            yield
    else:
        yield


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
    step), a RUNNING trial with no owner was asked by a process that died in between: failed too."""
    failed = []
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
    return failed
