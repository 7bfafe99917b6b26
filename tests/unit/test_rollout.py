"""rollout.py and deploy.py's deployment records without hosts: the playbook's progress
messages -> per-host outcomes and table, validation before any host, records kept locally when
the platform database cannot be written, and the command that writes them on a host."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from llmops_provision import cli, deploy, rollout

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "tests" / "data" / "valid-base-inventory.yml"


def msg(host: str, step: str, **kw: str) -> tuple[str, str, str]:
    data = {"host": host, "step": step, "time": f"2026-12-04T22:0{len(kw)}:00+00:00", **kw}
    return (host, "Report", rollout.MESSAGE_PREFIX + json.dumps(data))


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path / ".llmops"))
    return tmp_path


def local_inventory(tmp_path: Path) -> Path:
    """The base inventory with every host reached locally (nothing leaves this machine)."""
    data = yaml.safe_load(BASE.read_text())
    data["all"]["vars"]["ansible_connection"] = "local"
    path = tmp_path / "unitinv.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_messages_give_each_host_its_outcome() -> None:
    messages = [
        msg("api1", "start", **{"from": "1.0.0", "to": "1.0.1", "sha256": "ab" * 32}),
        msg("api1", "drained"),
        ("api1", "some debug task", "not a rollout message"),
        msg("api1", "updated"),
        msg("api1", "undrained"),
        msg("api2", "start", **{"from": "1.0.0", "to": "1.0.1"}),
        msg("api2", "drained"),
        msg("api2", "failed", error="Wait until the inference api is ready: timed out"),
        msg("api2", "rolled_back", to="1.0.0"),
        msg("api4", "current", **{"from": "1.0.1", "to": "1.0.1"}),
    ]
    out = rollout.parse_messages(messages, ["api1", "api2", "api3", "api4"])
    assert {h: r.outcome for h, r in out.items()} == {
        "api1": "updated",
        "api2": "rolled back",
        "api3": "not touched",
        "api4": "current",
    }
    assert (out["api1"].before, out["api1"].now_running, out["api1"].sha256) == (
        "1.0.0",
        "1.0.1",
        "ab" * 32,
    )
    assert out["api2"].now_running == "1.0.0"
    assert "timed out" in out["api2"].error
    assert out["api3"].now_running == ""


def test_a_failed_rollback_or_an_unfinished_host_is_a_failure() -> None:
    messages = [
        msg("api1", "start", **{"from": "1.0.0", "to": "1.0.2"}),
        msg("api1", "failed", error="OCR check: 500"),
        msg("api1", "rollback_failed", to="1.0.0", error="readyz timed out"),
        msg("api2", "start", **{"from": "1.0.0", "to": "1.0.2"}),
    ]
    out = rollout.parse_messages(messages, ["api1", "api2"])
    assert out["api1"].outcome == "failed" and out["api1"].now_running == "?"
    assert "rollback to 1.0.0 failed: readyz timed out" in out["api1"].error
    assert out["api2"].outcome == "failed"


def test_table_names_every_host_and_what_it_runs_now() -> None:
    out = rollout.parse_messages(
        [
            msg("api1", "start", **{"from": "1.0.0", "to": "1.0.1"}),
            msg("api1", "drained"),
            msg("api1", "undrained"),
        ],
        ["api1", "api2"],
    )
    console = Console(record=True, width=200)
    console.print(rollout.rollout_table(out, "rollout"))
    text = console.export_text()
    row1 = next(line for line in text.splitlines() if " api1 " in line)
    row2 = next(line for line in text.splitlines() if " api2 " in line)
    assert "updated" in row1 and "1.0.0" in row1 and "1.0.1" in row1
    assert "not touched" in row2


@pytest.mark.parametrize("command", ["apply", "rollout"])
def test_a_missing_local_bundle_is_refused_before_touching_anything(
    command: str,
    project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    inv = local_inventory(tmp_path)
    missing = tmp_path / "ocr-9.9.9.tar.gz"
    rc = cli.main([command, str(inv), "--server-type", "api", "--bundle", str(missing)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{missing}: no such bundle file" in err and "nothing was changed" in err
    assert not (project / ".llmops").exists()  # no credentials made, no record written


def test_rollout_takes_only_api_or_web(project: Path, tmp_path: Path) -> None:
    inv = local_inventory(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(["rollout", str(inv), "--server-type", "db"])
    assert exc.value.code == 2


def test_db_command_runs_as_the_service_with_its_credential_only_by_reference(
    project: Path, tmp_path: Path
) -> None:
    target = deploy.load_target(local_inventory(tmp_path))
    command = deploy.db_command(target, "api1", "api", "record")
    words = shlex.split(command.split("; exec ", 1)[1])
    assert words[:2] == ["systemd-run", "--quiet"]
    assert "User=llmops-api" in words
    assert "LoadCredential=db-password:/etc/credstore/llmops-db-password" in words
    assert words[-4:] == ["llmops_ocr.db.deployments", "--type", "api", "record"]
    secrets = deploy.secrets_dir(target.name)
    deploy.ensure_secrets(target.name)
    for name in deploy.CREDENTIALS:
        assert (secrets / name).read_text().strip() not in command
    assert deploy.db_hosts(target) == [("api1", "api"), ("web1", "web")]
    assert deploy.db_hosts(target, prefer=["web1"])[0] == ("web1", "web")


def test_a_host_serving_api_and_web_is_asked_for_records_once(
    project: Path, tmp_path: Path
) -> None:
    data = yaml.safe_load(local_inventory(tmp_path).read_text())
    data["all"]["children"]["web"]["hosts"]["api1"] = {"ansible_host": "192.0.2.21"}
    inv = tmp_path / "both.yml"
    inv.write_text(yaml.safe_dump(data))
    target = deploy.load_target(inv)
    assert set(target.configs["api1"]) >= {"api", "web"}
    assert deploy.db_hosts(target) == [("api1", "api"), ("web1", "web")]
    assert deploy.db_hosts(target, prefer=["web1"]) == [("web1", "web"), ("api1", "api")]


def test_record_kept_locally_with_a_warning_when_the_database_cannot_be_written(
    project: Path, tmp_path: Path
) -> None:
    if Path(deploy._RELEASE_PYTHON).exists():  # the host-side command would really run here
        pytest.skip("this machine has an llmops release installed")
    target = deploy.load_target(local_inventory(tmp_path))
    record = {
        "kind": "rollout",
        "time": "2026-12-04T22:00:00Z",
        "user": "root",
        "inventory": target.name,
        "limit": "api",
        "bundle": "/x/dist/ocr-1.0.1.tar.gz",
        "version": "1.0.1",
        "sha256": "ab" * 32,
        "hosts": {"api1": "updated"},
        "result": "ok",
        "seconds": 12.5,
    }
    recorded = deploy.record_deployment(target, record)
    # this machine has no release installed: the host-side command refuses, apply goes on
    assert recorded.db_host == ""
    assert "no release installed on this host" in recorded.db_error
    assert recorded.describe().startswith("warning: deployment recorded only in ")
    last = deploy.last_deployment(target.name)
    assert last is not None and last["version"] == "1.0.1" and last["recorded_in"] == "local"
    found, source = deploy.newest_deployment(target)
    assert found is not None and found["kind"] == "rollout"
    assert source.startswith("local record ") and "database not read" in source
    line = deploy.describe_deployment(found, source)
    assert line.startswith("last deployment: rollout 2026-12-04T22:00:00Z by root: ok")


def test_database_form_of_a_record_round_trips_for_status() -> None:
    local = {
        "kind": "apply",
        "time": "2026-12-04T22:00:00Z",
        "user": "ops",
        "inventory": "lab",
        "limit": None,
        "bundle": "/work/dist/ocr-1.0.0.tar.gz",
        "version": "1.0.0",
        "sha256": "cd" * 32,
        "hosts": {"lab-api1": "changed", "lab-db": "ok"},
        "result": "ok",
        "seconds": 80.0,
    }
    row = deploy.db_record_of(local, finished=1_796_428_800.0)
    assert row["bundle_name"] == "ocr-1.0.0.tar.gz"
    assert row["hosts"] == ["lab-api1", "lab-db"]
    assert row["finished_at"].endswith("Z")
    back = deploy.record_from_db({**row, "id": 7})
    for key in ("kind", "time", "user", "version", "sha256", "hosts", "result", "seconds"):
        assert back[key] == local[key], key


def test_limit_narrows_the_hosts_shown_in_the_table(project: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(BASE.read_text())
    data["all"]["children"]["api"]["hosts"]["api2"] = {"ansible_host": "192.0.2.22"}
    inv = tmp_path / "two.yml"
    inv.write_text(yaml.safe_dump(data))
    target = deploy.load_target(inv)
    assert rollout._hosts_in_scope(target, "api", None) == ["api1", "api2"]
    assert rollout._hosts_in_scope(target, "api", "api2") == ["api2"]
    assert rollout._hosts_in_scope(target, "api", "api") == ["api1", "api2"]
    assert rollout._hosts_in_scope(target, "api", "web1") == []
    # Ansible's own patterns, as the play matches them
    assert rollout._hosts_in_scope(target, "api", "api*2") == ["api2"]
    assert rollout._hosts_in_scope(target, "api", "all:!api1") == ["api2"]
