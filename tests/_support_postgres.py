"""A throwaway PostgreSQL server for the tests: started once per run, one fresh database per test.

``pg_server`` (session) is either a cluster this module starts (``initdb --no-sync``, unix socket in
a temporary directory, no TCP, ``fsync=off``; as the ``postgres`` OS user via ``runuser`` when the
suite runs as root, since PostgreSQL refuses root), or the server named by
``RULE_ENGINE_TEST_POSTGRES`` (a conninfo or URL of a role allowed to create databases). Without
PostgreSQL binaries the tests that need it skip with a loud reason, except under ``CI=true``, where
they fail: CI must run them. ``pg_database`` (function) creates a database for one test (~20 ms)
and yields its conninfo; ``pg_cluster`` (function) starts a private cluster a test may stop, hang
and restart. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = [
    "PgCluster",
    "PgServer",
    "pg_cluster",
    "pg_database",
    "pg_fault_cluster",
    "pg_server",
    "postgres_bindir",
    "run_threads",
]

START_TIMEOUT = 30.0
PG_VERSIONS = ("17", "16", "15", "14")
_names = itertools.count(1)


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: ``pg_config --bindir``, else /usr/lib/postgresql/N/bin."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True)
        candidates.append(Path(out.stdout.strip()))
    candidates += [Path(f"/usr/lib/postgresql/{v}/bin") for v in PG_VERSIONS]
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _unavailable(reason: str) -> None:
    """Skip loudly, or fail under CI=true (CI must run the PostgreSQL tests)."""
    message = f"PostgreSQL tests need a server: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(f"!!! {message}; install postgresql-15 or set RULE_ENGINE_TEST_POSTGRES")


class PgCluster:
    """A cluster this suite owns: start, stop (``-m immediate``), hang (SIGSTOP) and resume it."""

    def __init__(self, bindir: Path, *, prefix: str = "rule-engine-pg-") -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        self._frozen: list[int] = []
        self.dbname = "postgres"
        self.socket_dir.mkdir()
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8", "-D", str(self.data))
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                "\nlisten_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
        self.start()

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{log}")

    def conninfo(self, dbname: str | None = None) -> str:
        """A libpq conninfo string for ``dbname`` (default: :attr:`dbname`) on this cluster's socket."""
        return f"host={self.socket_dir} user=postgres dbname={dbname or self.dbname}"

    def start(self) -> None:
        """Start the server and wait (bounded) until it accepts connections."""
        self._run("pg_ctl", "start", "-w", "-t", str(int(START_TIMEOUT)), "-D", str(self.data), "-l", str(self.log))

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: like a crash, no shutdown checkpoint)."""
        self._run("pg_ctl", "stop", "-m", mode, "-w", "-t", str(int(START_TIMEOUT)), "-D", str(self.data))

    def pids(self) -> list[int]:
        """The postmaster and every child of it (backends, checkpointer, ...)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == postmaster:
                        children.append(int(entry.name))
        return [postmaster, *children]

    def hang(self) -> list[int]:
        """SIGSTOP the postmaster and all its children (a frozen server: it answers nothing)."""
        pids = self.pids()
        self._frozen += pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def resume(self, pids: list[int] | None = None) -> None:
        """SIGCONT what :meth:`hang` stopped (all of it by default)."""
        for pid in list(self._frozen if pids is None else pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            with contextlib.suppress(ValueError):
                self._frozen.remove(pid)

    def running(self) -> bool:
        """Whether the postmaster is up (``pg_ctl status``)."""
        command = [str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, timeout=START_TIMEOUT, check=False).returncode == 0

    def heal(self) -> None:
        """Resume what is frozen and start the server if it is down."""
        self.resume()
        if not self.running():
            self.start()

    def destroy(self) -> None:
        """Stop (immediately, bounded) and remove everything."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PgServer:
    """The server the tests use: ours, or the one ``RULE_ENGINE_TEST_POSTGRES`` names."""

    def __init__(self, admin_conninfo: str, cluster: PgCluster | None) -> None:
        self.admin_conninfo = admin_conninfo
        self.cluster = cluster

    def create_database(self) -> str:
        """A new empty database; its conninfo."""
        import psycopg
        from psycopg.conninfo import make_conninfo

        name = f"re_test_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.admin_conninfo, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return make_conninfo(self.admin_conninfo, dbname=name)

    def drop_database(self, conninfo: str) -> None:
        """Drop a database made by :meth:`create_database` (its connections are ended)."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        name = conninfo_to_dict(conninfo)["dbname"]
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.admin_conninfo, autocommit=True, connect_timeout=10) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _require_driver() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        _unavailable(f"the postgres extra is not installed ({exc}); pip install -e '.[test]'")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (started once, stopped with ``-m immediate`` at the end)."""
    _require_driver()
    given = os.environ.get("RULE_ENGINE_TEST_POSTGRES")
    if given:
        yield PgServer(given, None)
        return
    bindir = postgres_bindir()
    if bindir is None:
        _unavailable("no initdb/pg_ctl found (pg_config --bindir, /usr/lib/postgresql/N/bin)")
    assert bindir is not None
    cluster = PgCluster(bindir)
    try:
        yield PgServer(cluster.conninfo("postgres"), cluster)
    finally:
        cluster.destroy()


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """A fresh database for one test; its conninfo (dropped afterwards)."""
    conninfo = pg_server.create_database()
    yield conninfo
    pg_server.drop_database(conninfo)


@pytest.fixture(scope="module")
def pg_fault_cluster() -> Iterator[PgCluster]:
    """A cluster of the module's own, which its tests may stop, hang and restart (needs local binaries)."""
    _require_driver()
    bindir = postgres_bindir()
    if bindir is None:
        _unavailable("fault tests need local initdb/pg_ctl (pg_config --bindir, /usr/lib/postgresql/N/bin)")
    assert bindir is not None
    cluster = PgCluster(bindir, prefix="rule-engine-pg-fault-")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_cluster(pg_fault_cluster: PgCluster) -> Iterator[PgCluster]:
    """The fault cluster, running, with a fresh database ``cluster.dbname``; healed again afterwards."""
    pg_fault_cluster.heal()
    server = PgServer(pg_fault_cluster.conninfo("postgres"), pg_fault_cluster)
    conninfo = server.create_database()
    pg_fault_cluster.dbname = conninfo_dbname(conninfo)
    try:
        yield pg_fault_cluster
    finally:
        pg_fault_cluster.heal()
        pg_fault_cluster.dbname = "postgres"
        server.drop_database(conninfo)


def conninfo_dbname(conninfo: str) -> str:
    """The database a conninfo names."""
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(conninfo)["dbname"])


def run_threads(target: Callable[[int], object], count: int, timeout: float = 120.0) -> list[BaseException]:
    """Run ``target(i)`` for i in 0..count-1 in threads at once; what they raised (a hang is one too)."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # handed back to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            errors.append(TimeoutError(f"a thread was still running after {timeout:g} s"))
    return errors
