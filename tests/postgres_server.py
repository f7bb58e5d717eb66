"""A throwaway PostgreSQL server for the tests that need a real database (no mock).

`postgres_server` (session-scoped: one server per test session, or per xdist worker) runs `initdb` into a fresh
folder under /tmp and `pg_ctl start` with no TCP listener at all: its only socket is a unix socket in that folder.
It is stopped (`pg_ctl stop -m immediate`) and its folder removed at the end, also when a test or the start
itself failed. `postgres_url` creates an empty database on it for one test and yields its SQLAlchemy URL.

PostgreSQL refuses to run as root: as root, the server runs as an unprivileged system account (`postgres`
where it exists, else `nobody`), which owns the folder. Missing binaries or a missing driver fail the tests with
how to install them: CI installs PostgreSQL (.ci/run), so a skip would hide a broken set-up.
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

SUPERUSER = "lighttrack"
INSTALL = ("PostgreSQL's server programs (initdb, pg_ctl) are neither on PATH nor in /usr/lib/postgresql/*/bin. "
           "These tests start a throwaway server themselves and need them: install PostgreSQL "
           "(Debian/Ubuntu: `sudo apt-get install -y postgresql`, whose /usr/lib/postgresql/<version>/bin is found "
           "without PATH; macOS: `brew install postgresql@15`; any OS: `conda install -c conda-forge postgresql`), "
           "as .ci/run does on CI.")
DRIVER = "the PostgreSQL driver psycopg 3 is not installed: .venv/bin/pip install -e '.[postgres]' (or '.[dev]')"
UNPRIVILEGED = ("postgres", "nobody")  # PostgreSQL will not run as root: the first of these accounts that exists


def bin_dir() -> Optional[Path]:
    """The folder holding pg_ctl, initdb and postgres: pg_ctl's on PATH (a symlink resolved), else the newest
    Debian-style /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                           key=lambda p: [int(x) for x in Path(p).parent.name.split(".")
                                                          if x.isdigit()], reverse=True)]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("pg_ctl", "initdb", "postgres")):
            return folder
    return None


def _account() -> Optional[pwd.struct_passwd]:
    """None when not root (the server runs as this user), else the unprivileged account it runs as."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the accounts {UNPRIVILEGED} exists to run PostgreSQL as "
                       "(it refuses to run as root): create one (`useradd --system postgres`) or run the tests "
                       "as another user")


class PostgresServer:
    """One server in its own folder under /tmp (short: a unix socket path is limited to 107 bytes)."""

    def __init__(self) -> None:
        folder = bin_dir()
        if folder is None:
            pytest.fail(INSTALL, pytrace=False)
        self.bin = folder
        self.account = _account()
        self.root = Path(tempfile.mkdtemp(prefix="lt-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.started = False
        self._names = itertools.count()
        if self.account is not None:
            os.chown(self.root, self.account.pw_uid, self.account.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A server program, as the account the server runs as."""
        as_user = {} if self.account is None else dict(user=self.account.pw_uid, group=self.account.pw_gid,
                                                       extra_groups=[])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LC_ALL": "C",
               "LANG": "C", "TZ": "UTC"}
        return subprocess.run([str(self.bin / args[0]), *args[1:]], cwd=self.root, env=env, text=True,
                              capture_output=True, timeout=timeout, **as_user)

    def _check(self, result: subprocess.CompletedProcess, what: str) -> None:
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}\n"
                               f"server log:\n{log}")

    def start(self) -> None:
        self._check(self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                              "--locale=C", "--no-sync"), "initdb")
        with open(self.data / "postgresql.conf", "a") as conf:  # a unix socket in our folder, nothing else
            conf.write(f"\nlisten_addresses = ''\nunix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
        self.started = True  # from here on, stop() is attempted whatever happens
        self._check(self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"),
                    "pg_ctl start")

    def restart(self, pause: float = 0) -> None:
        """A restart, as an administrator's or a crash recovery's: the server stops (fast shutdown: every session is
        ended, its clients told so), stays down `pause` seconds, and starts again on the same data."""
        self._check(self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", timeout=90),
                    "pg_ctl stop")
        time.sleep(pause)
        self._check(self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"),
                    "pg_ctl start")

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop", timeout=90)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.root}"

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        try:
            import psycopg
        except ImportError:
            pytest.fail(DRIVER, pytrace=False)
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(host=str(self.root), user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """An empty database of its own on the session's server (left for the server's removal at the end)."""
    return postgres_server.create_database()


def advisory_lock_is_free(url: str) -> bool:
    """Whether another session can take the sweeper's advisory lock on the database at `url` (it lets it go again)."""
    import sqlalchemy

    from search.study.lock import _ADVISORY_KEY

    other = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    try:
        with other.connect() as conn:
            taken = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({_ADVISORY_KEY})").scalar()
            if taken:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_ADVISORY_KEY})")
            return bool(taken)
    finally:
        other.dispose()
