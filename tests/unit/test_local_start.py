"""`start`/`stop` inputs: config overrides from --config-dir, the local inventory, refusals that
happen before anything is touched (the real runs need systemd as PID 1: a lab host)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops_provision import cli, local
from llmops_provision.errors import InvalidInput
from llmops_provision.server_types import REGISTRY


def test_config_dir_overrides_the_template(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text(
        json.dumps(
            {
                "port": 8100,
                "batching": {"max_batch_size": 4},
                "database": {
                    "engine": "postgresql",
                    "host": "10.0.0.5",
                    "port": 5432,
                    "name": "llmops",
                    "user": "llmops",
                },
            }
        )
    )
    cfg = local.local_config("api", tmp_path)
    template = REGISTRY["api"].template()
    assert cfg["port"] == 8100
    # objects merge key by key ...
    assert cfg["batching"]["max_batch_size"] == 4
    assert cfg["batching"]["max_wait_ms"] == template["batching"]["max_wait_ms"]
    # ... except `database`, which the schema marks replace: no sqlite `path` left over
    assert cfg["database"] == {
        "engine": "postgresql",
        "host": "10.0.0.5",
        "port": 5432,
        "name": "llmops",
        "user": "llmops",
    }


def test_without_an_override_file_the_template_is_used(tmp_path: Path) -> None:
    assert local.local_config("web", tmp_path) == REGISTRY["web"].template()
    assert local.local_config("web", None) == REGISTRY["web"].template()


def test_a_bad_override_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "web.json").write_text(json.dumps({"workers": 0}))
    with pytest.raises(InvalidInput) as info:
        local.local_config("web", tmp_path)
    text = "\n".join(str(e) for e in info.value.errors)
    assert str(tmp_path / "web.json") in text and "workers" in text


def test_start_refuses_bad_inputs_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["start", "web", "--config-dir", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "db.json").write_text(json.dumps({"engine": "oracle"}))
    assert cli.main(["start", "db", "--config-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "engine" in err and "nothing was changed" in err
    assert cli.main(["start", "api", "--app-dir", str(tmp_path / "no-app")]) == 2
    assert "nothing was changed" in capsys.readouterr().err


def test_local_inventory_and_vars() -> None:
    inv = local.local_inventory("api", "10.213.0.21")
    groups = inv["all"]["children"]
    assert set(groups) == set(REGISTRY)
    host = groups["api"]["hosts"][local.LOCAL_HOST]
    assert host["ansible_connection"] == "local" and host["llmops_address"] == "10.213.0.21"
    assert all(not groups[g]["hosts"] for g in groups if g != "api")
    cfg = REGISTRY["api"].template()
    extra = local.start_vars("api", cfg, Path("/s"), {"llmops_bundle": "/b.tar.gz"})
    assert extra["llmops_effective_configs"] == {local.LOCAL_HOST: {"api": cfg}}
    assert extra["llmops_bundle"] == "/b.tar.gz" and extra["llmops_secrets_dir"] == "/s"


def test_start_runs_the_base_then_the_type() -> None:
    plays = local.start_playbook("db")
    paths = [Path(p["ansible.builtin.import_playbook"]) for p in plays]
    assert [p.name for p in paths] == ["common.yml", "db.yml"]
    assert all(p.is_absolute() and p.is_file() for p in paths)
    extra = local.start_vars("db", REGISTRY["db"].template(), Path("/s"), {})
    assert extra["common_firewall_enabled"] is False


def test_stop_knows_every_type() -> None:
    assert set(local.UNITS) == set(REGISTRY)
