"""Shared fixtures of the OCR app's tests.

``pg_cluster`` starts a throwaway PostgreSQL 15 cluster (Debian's binaries, initdb + pg_ctl in a
temporary directory, a free loopback port, password auth) once per test session and stops it at
the end. ``pg_url`` gives each test its own fresh database on that cluster, owned by a role with a
password that is also written as the ``db-password`` credential in ``pg_credentials``.
``db_url`` is parametrised over both engines: SQLite file and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import URL

PG_BIN = Path(os.environ.get("LLMOPS_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Wait until ``host:port`` accepts TCP connections, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.05)


@dataclass
class PgCluster:
    """A running throwaway PostgreSQL cluster."""

    datadir: Path
    host: str
    port: int
    superuser: str
    superpass: str
    run_as: str | None
    _dbs: list[str] = field(default_factory=list)

    def url(
        self, database: str = "postgres", user: str | None = None, password: str | None = None
    ) -> URL:
        return URL.create(
            "postgresql+psycopg",
            username=user or self.superuser,
            password=password if user else self.superpass,
            host=self.host,
            port=self.port,
            database=database,
        )

    def sql(self, statement: str, database: str = "postgres") -> None:
        """Run one statement as the superuser (autocommit, so CREATE DATABASE works)."""
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=self.superpass,
            dbname=database,
            autocommit=True,
        ) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def create_database(self, owner: str, password: str) -> str:
        """A fresh database owned by a fresh login role ``owner``; returns the database name."""
        name = f"t_{secrets.token_hex(6)}"
        self.sql(f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'")
        self.sql(f"CREATE DATABASE {name} OWNER {owner}")
        self._dbs.append(name)
        return name


def _run(cmd: list[str], run_as: str | None, **kw: object) -> subprocess.CompletedProcess[str]:
    if run_as:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL 15 cluster for this test session (skips when PostgreSQL is not installed)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}: apt-get install postgresql")
    run_as = "postgres" if os.geteuid() == 0 else None
    tmp = Path(tempfile.mkdtemp(prefix="llmops-pg-"))
    datadir = tmp / "data"
    pwfile = tmp / "pw"
    superpass = secrets.token_urlsafe(16)
    pwfile.write_text(superpass + "\n")
    if run_as:
        pw = pwd.getpwnam(run_as)
        for p in (tmp, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    pwfile.chmod(0o600)
    port = free_port()
    _run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        run_as,
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={tmp} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c shared_buffers=32MB -c max_connections=60"
    )
    log = tmp / "server.log"
    try:
        _run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(datadir),
                "-l",
                str(log),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            run_as,
        )
    except subprocess.CalledProcessError as exc:
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{text}") from None
    cluster = PgCluster(datadir, "127.0.0.1", port, "postgres", superpass, run_as)
    try:
        wait_for_port("127.0.0.1", port)
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _run([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"], run_as)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pg_credentials(tmp_path: Path) -> Path:
    """A credentials directory (like ``$CREDENTIALS_DIRECTORY``) for one test."""
    d = tmp_path / "credentials"
    d.mkdir()
    return d


@pytest.fixture
def pg_url(pg_cluster: PgCluster, pg_credentials: Path) -> URL:
    """A fresh, empty PostgreSQL database for one test, reachable with a password.

    The password is also the ``db-password`` credential in ``pg_credentials``, and the database
    section of a service config for it is in ``pg_url.query``-free form via ``pg_database_config``.
    """
    role = f"u_{secrets.token_hex(5)}"
    password = secrets.token_urlsafe(12)
    name = pg_cluster.create_database(role, password)
    (pg_credentials / "db-password").write_text(password + "\n")
    return pg_cluster.url(name, user=role, password=password)


@pytest.fixture
def pg_database_config(pg_url: URL) -> dict[str, object]:
    """The ``database`` section of a service config pointing at ``pg_url`` (no password)."""
    return {
        "engine": "postgresql",
        "host": pg_url.host,
        "port": pg_url.port,
        "name": pg_url.database,
        "user": pg_url.username,
    }


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    """A SQLite database file in the test's temporary directory."""
    return URL.create("sqlite+pysqlite", database=str(tmp_path / "db" / "llmops.sqlite3"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> URL:
    """An empty database on each engine in turn (the test runs twice)."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: URL = request.getfixturevalue(name)
    return url
