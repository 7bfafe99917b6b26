"""The db probe against a real PostgreSQL 15 (a throwaway cluster on 127.0.0.1, scram auth):
``SELECT 1`` as the application role with the controller's db-password passes, a wrong password
fails naming the reason."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops_provision import checks

PG_BIN = Path(os.environ.get("LLMOPS_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _run(cmd: list[str], run_as: str | None) -> None:
    if run_as:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[int, str]]:
    """A cluster with role and database ``llmops``: yields (port, the role's password)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}: apt-get install postgresql")
    run_as = "postgres" if os.geteuid() == 0 else None
    tmp = Path(tempfile.mkdtemp(prefix="llmops-chk-pg-"))
    if run_as:
        pw = pwd.getpwnam(run_as)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    data = tmp / "data"
    password = secrets.token_urlsafe(16)
    try:
        _run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ],
            run_as,
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={tmp} "
            "-c fsync=off"
        )
        _run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(tmp / "log"),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            run_as,
        )
        psql = [
            "/usr/bin/psql",
            "-h",
            str(tmp),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
        ]
        _run([*psql, f"CREATE ROLE llmops LOGIN PASSWORD '{password}'"], run_as)
        _run([*psql, "CREATE DATABASE llmops OWNER llmops"], run_as)
        yield port, password
    finally:
        if (data / "postmaster.pid").exists():
            _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], run_as)
        shutil.rmtree(tmp, ignore_errors=True)


def _db(port: int, secrets_dir: Path) -> dict[str, checks.CheckResult]:
    service = checks.Service(
        "db",
        checks.HostAccess(name="db1", address="127.0.0.1", local=True),
        {"engine": "postgresql", "port": port, "name": "llmops", "user": "llmops"},
        secrets_dir,
    )
    return {r.check: r for r in checks.run_checks([service], via="direct", timeout=5)}


def test_select_1_with_the_db_password(postgres: tuple[int, str], tmp_path: Path) -> None:
    port, password = postgres
    (tmp_path / "db-password").write_text(password + "\n")
    results = _db(port, tmp_path)
    assert results["postgresql port open"].ok
    assert results["postgresql select 1"].ok, results["postgresql select 1"].detail
    assert results["postgresql select 1"].detail == "SELECT 1 as llmops@llmops"

    (tmp_path / "db-password").write_text("wrong\n")
    denied = _db(port, tmp_path)["postgresql select 1"]
    assert not denied.ok
    assert "password authentication failed" in denied.detail
