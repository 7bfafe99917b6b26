"""`python -m llmops_ocr.db.deployments`: what the controller runs on a host to record a
deployment (JSON on stdin) and to read the last one back, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from llmops_ocr.db import migrate
from llmops_ocr.db.deployments import RecordError, main, parse_record

RECORD = {
    "inventory": "lab",
    "bundle_name": "ocr-1.0.1.tar.gz",
    "version": "1.0.1",
    "sha256": "ab" * 32,
    "hosts": {"lab-api1": "changed", "lab-api2": "changed"},
    "result": "ok",
    "message": {"kind": "rollout", "user": "root"},
    "started_at": "2026-12-04T22:00:00Z",
    "finished_at": "2026-12-04T22:03:10Z",
}


def run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, *argv: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(params=["sqlite", "postgresql"])
def service_config(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    if request.param == "sqlite":
        database: dict[str, Any] = {"engine": "sqlite", "path": str(tmp_path / "db.sqlite3")}
        url: Any = f"sqlite+pysqlite:///{tmp_path / 'db.sqlite3'}"
    else:
        database = request.getfixturevalue("pg_database_config")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(request.getfixturevalue("pg_credentials")))
        url = request.getfixturevalue("pg_url")
    migrate(url)
    cfg = tmp_path / "api.json"
    cfg.write_text(json.dumps({"server_type": "api", "database": database}))
    return cfg


def test_record_then_last_reads_it_back(
    service_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(service_config)
    older = {**RECORD, "version": "1.0.0", "started_at": "2026-12-04T21:00:00Z"}
    other = {**RECORD, "inventory": "prod", "started_at": "2026-12-04T23:00:00Z"}
    for rec in (older, RECORD, other):
        rc, out, err = run(monkeypatch, capsys, json.dumps(rec), "--config", cfg, "record")
        assert rc == 0, err
        assert isinstance(json.loads(out)["id"], int)
    rc, out, err = run(monkeypatch, capsys, "", "--config", cfg, "last", "--inventory", "lab")
    assert rc == 0, err
    [last] = json.loads(out)
    assert last["version"] == "1.0.1"
    assert last["hosts"] == ["lab-api1", "lab-api2"]
    assert last["started_at"] == "2026-12-04T22:00:00Z"
    assert last["finished_at"] == "2026-12-04T22:03:10Z"
    assert json.loads(last["message"]) == {"kind": "rollout", "user": "root"}
    rc, out, _ = run(monkeypatch, capsys, "", "--config", cfg, "last", "--limit", "5")
    assert [r["inventory"] for r in json.loads(out)] == ["prod", "lab", "lab"]


def test_bad_input_and_unreachable_database_have_their_own_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "api.json"
    cfg.write_text(json.dumps({"database": {"engine": "sqlite", "path": str(tmp_path / "x.db")}}))
    rc, _, err = run(monkeypatch, capsys, '{"inventory": "lab"}', "--config", str(cfg), "record")
    assert rc == 2 and "missing field(s) bundle_name" in err
    rc, _, err = run(monkeypatch, capsys, "{}", "--config", str(tmp_path / "nope.json"), "last")
    assert rc == 2 and "config file not found" in err
    # a PostgreSQL server that is not there: exit 3, the URL without a password
    down = {"engine": "postgresql", "host": "127.0.0.1", "port": 9, "name": "x", "user": "u"}
    cfg.write_text(json.dumps({"database": down}))
    rc, _, err = run(monkeypatch, capsys, "", "--config", str(cfg), "last")
    assert rc == 3 and "127.0.0.1:9" in err


def test_parse_record_names_the_bad_field() -> None:
    with pytest.raises(RecordError, match="hosts: expected a list"):
        parse_record({**RECORD, "hosts": "lab-api1"})
    with pytest.raises(RecordError, match="started_at: 'yesterday' is not an ISO 8601 time"):
        parse_record({**RECORD, "started_at": "yesterday"})


def test_runs_as_a_module_with_the_record_on_stdin(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    migrate(f"sqlite+pysqlite:///{db}")
    cfg = tmp_path / "web.json"
    cfg.write_text(json.dumps({"database": {"engine": "sqlite", "path": str(db)}}))
    argv = [
        sys.executable,
        "-m",
        "llmops_ocr.db.deployments",
        "--type",
        "web",
        "--config",
        str(cfg),
    ]
    rec = subprocess.run(
        [*argv, "record"], input=json.dumps(RECORD), capture_output=True, text=True, check=False
    )
    assert rec.returncode == 0, rec.stderr
    last = subprocess.run([*argv, "last"], capture_output=True, text=True, check=False)
    assert json.loads(last.stdout)[0]["sha256"] == "ab" * 32
