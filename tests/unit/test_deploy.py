"""deploy.py without hosts: credentials, validation before anything runs, status parsing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from llmops_provision import cli, deploy


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """deploy.py writes under the project root: point it at a temp dir."""
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path / ".llmops"))
    return tmp_path


def test_credentials_are_generated_once_with_private_modes(project: Path) -> None:
    made = deploy.ensure_secrets("prod")
    assert made == list(deploy.CREDENTIALS)
    directory = project / ".llmops" / "secrets" / "prod"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    values = {}
    for name in deploy.CREDENTIALS:
        path = directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        values[name] = path.read_text().strip()
        assert len(values[name]) >= 32 and values[name].isalnum()
    assert len(set(values.values())) == len(values)
    (directory / "api-token").unlink()
    assert deploy.ensure_secrets("prod") == ["api-token"]
    assert (directory / "db-password").read_text().strip() == values["db-password"]


def test_apply_with_an_invalid_inventory_stops_before_any_host(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.yml"
    bad.write_text(
        "all:\n  children:\n    db:\n      hosts:\n        h1:\n"
        "      vars:\n        llmops_config:\n          engine: mysql\n"
    )
    rc = cli.main(["apply", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "broken.yml" in err and "engine" in err
    assert "nothing was changed" in err
    # no credentials, no deployment record: nothing was started
    assert not (project / ".llmops").exists()


def test_missing_inventory_file_is_an_error_for_people(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "/nonexistent/inv.yml"]) == 2
    assert "/nonexistent/inv.yml: no such inventory file" in capsys.readouterr().err


def test_parse_units_skips_units_that_do_not_exist() -> None:
    text = (
        "Id=nftables.service\nLoadState=loaded\nActiveState=active\nSubState=exited\n"
        "UnitFileState=enabled\n\n"
        "Id=llmops-api.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n"
        "UnitFileState=\n\n"
        "Id=postgresql@15-main.service\nLoadState=loaded\nActiveState=failed\nSubState=failed\n"
        "UnitFileState=enabled\n"
    )
    units = deploy.parse_units(text)
    assert [(u["Id"], u["ActiveState"]) for u in units] == [
        ("nftables.service", "active"),
        ("postgresql@15-main.service", "failed"),
    ]


def test_limit_combines_server_type_and_hosts() -> None:
    assert deploy._limit("db", None) == "db"
    assert deploy._limit(None, "lab-db") == "lab-db"
    assert deploy._limit("api", "lab-api1") == "api:&lab-api1"
    assert deploy._limit(None, None) is None


def test_restore_rejects_a_malformed_backup_name_before_any_host(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["restore", "/nonexistent/inv.yml", "--from", "../../etc/passwd"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "is not a backup name" in err and "llmops-YYYYmmddTHHMMSSZ.dump" in err
    assert deploy.BACKUP_NAME.fullmatch("llmops-20261204T193000Z.dump")
    assert deploy.BACKUP_NAME.fullmatch("llmops-20261204T193000Z.sqlite3")


def test_platform_url_is_the_first_lb_with_its_tls_port(tmp_path: Path) -> None:
    base = Path(__file__).resolve().parents[1] / "data" / "valid-base-inventory.yml"
    data = yaml.safe_load(base.read_text())
    assert deploy.platform_url(deploy.load_target(base)) == "https://192.0.2.10"
    lb_vars = data["all"]["children"]["lb"].setdefault("vars", {})
    lb_vars.setdefault("llmops_config", {})["tls"] = {"port": 8443}
    moved = tmp_path / "lb8443.yml"
    moved.write_text(yaml.safe_dump(data))
    assert deploy.platform_url(deploy.load_target(moved)) == "https://192.0.2.10:8443"
