"""Opening a study's storage, once per process.

By default a study is an Optuna journal file, `<sweep dir>/journal.log`, which several local processes append to
safely (Optuna's file lock); any Optuna storage URL (sqlite:///..., postgresql+psycopg://...) works too, and
PostgreSQL lets sweep processes on several machines share one study (search.study.lock). With heartbeats, a journal
is a `HeartbeatJournalStorage` (search.study.liveness); with `retry_seconds`, a URL storage is a `RetryingRDBStorage`
(search.study.retry)."""
from __future__ import annotations

import functools
import os
import random
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from .liveness import Heartbeat, HeartbeatJournalStorage
from .retry import RetryingRDBStorage


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


@functools.lru_cache(maxsize=16)
def _journal_storage(path: str, device: int, inode: int, heartbeat: Optional[Heartbeat] = None) -> Any:
    """The journal file that is (device, inode) at `path`. The storage holds the file open for as long as it
    lives, so that no file created later can be given that inode (file systems reuse a deleted file's inode
    at once) and be served this storage's stale replay."""
    pin = os.open(path, os.O_RDONLY)
    opened = os.fstat(pin)
    if (opened.st_dev, opened.st_ino) != (device, inode):
        os.close(pin)
        raise FileNotFoundError(f"{path} was replaced while it was opened")
    backend = JournalFileBackend(path)
    storage = JournalStorage(backend) if heartbeat is None else HeartbeatJournalStorage(backend, heartbeat)
    weakref.finalize(storage, os.close, pin)
    return storage
