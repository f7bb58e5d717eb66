"""The study lock: check-then-write steps (enqueueing, asking) of the sweep processes sharing a storage run one at a
time (`study_lock`): a lock file beside a journal, an advisory lock on PostgreSQL."""
from __future__ import annotations

import contextlib
import functools
import logging
import select
from typing import Any, Iterator

from .retry import held_lock, retry_call
from .storage import is_url

log = logging.getLogger(__name__)


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
        outer, held_lock.lock = getattr(held_lock, "lock", None), lock
        try:
            yield lock
        finally:
            held_lock.lock = outer
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
