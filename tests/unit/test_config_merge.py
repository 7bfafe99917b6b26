"""Template + inventory overrides -> effective config per host and type; errors point at the
override that set the bad value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops_provision.config import check_inventory_configs, effective_configs
from llmops_provision.errors import InvalidInput
from llmops_provision.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = yaml.safe_load(
    (ROOT / "tests/data/valid-base-inventory.yml").read_text(encoding="utf-8")
)


def write(tmp_path: Path, data: dict[str, Any], name: str = "inv.yml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_base_inventory_is_valid(tmp_path: Path) -> None:
    configs = effective_configs(load_inventory(write(tmp_path, BASE)))
    assert configs["web1"]["web"]["api_url"] == "https://192.0.2.10"
    assert configs["mon1"]["monitoring"]["port"] == 9090


def test_precedence_all_then_group_then_host(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["all"]["vars"]["llmops_config"] = {"api": {"workers": 3, "threads_per_worker": 4}}
    data["all"]["children"]["api"]["vars"]["llmops_config"]["workers"] = 5
    data["all"]["children"]["api"]["hosts"]["api2"] = {
        "ansible_host": "192.0.2.22",
        "llmops_config": {"workers": 7, "batching": {"max_batch_size": 64}},
    }
    configs = effective_configs(load_inventory(write(tmp_path, data)))
    assert configs["api1"]["api"]["workers"] == 5  # group beats all
    assert configs["api1"]["api"]["threads_per_worker"] == 4  # from all
    assert configs["api2"]["api"]["workers"] == 7  # host beats group
    # Nested objects merge key by key: the other batching fields keep their defaults.
    assert configs["api2"]["api"]["batching"] == {
        "max_batch_size": 64,
        "max_wait_ms": 5,
        "max_queue": 256,
    }


def test_host_with_several_types_keys_overrides_by_type(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["all"]["children"]["api"]["hosts"]["web1"] = {
        "llmops_config": {"api": {"port": 8001}, "web": {"workers": 6}}
    }
    configs = effective_configs(load_inventory(write(tmp_path, data)))
    assert configs["web1"]["api"]["port"] == 8001
    assert configs["web1"]["web"]["workers"] == 6
    assert configs["web1"]["web"]["port"] == 8080


def test_host_with_several_types_rejects_unkeyed_fields(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["all"]["children"]["api"]["hosts"]["web1"] = {"llmops_config": {"workers": 6}}
    path = write(tmp_path, data)
    _, errors = check_inventory_configs(load_inventory(path))
    assert [(e.file, e.path) for e in errors] == [(path, "hosts.web1.vars.llmops_config.workers")]
    assert "keyed by server type" in errors[0].problem


def test_schema_error_in_host_override_names_the_host(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["all"]["children"]["api"]["hosts"]["api1"]["llmops_config"] = {
        "batching": {"max_queue": 0}
    }
    path = write(tmp_path, data)
    with pytest.raises(InvalidInput) as exc:
        effective_configs(load_inventory(path))
    (err,) = exc.value.errors
    assert str(err) == (
        f"{path}: hosts.api1.vars.llmops_config.batching.max_queue: 0 is out of range "
        f"(allowed: >= 1 and <= 100000) [line {err.line}]"
    )
    assert Path(path).read_text().splitlines()[err.line - 1].strip() == "max_queue: 0"


def test_database_override_replaces_the_default_whole(tmp_path: Path) -> None:
    configs = effective_configs(load_inventory(write(tmp_path, BASE)))
    assert configs["api1"]["api"]["database"] == {
        "engine": "postgresql",
        "host": "192.0.2.30",
        "port": 5432,
        "name": "llmops",
        "user": "llmops",
    }


def test_single_host_dev_inventory_uses_sqlite_everywhere() -> None:
    configs = effective_configs(load_inventory(ROOT / "inventory/dev.yml"))
    assert set(configs) == {"dev1"}
    assert set(configs["dev1"]) == {"web", "api", "lb", "db", "monitoring"}
    assert configs["dev1"]["db"]["engine"] == "sqlite"
    assert configs["dev1"]["web"]["debug"] is True
    assert configs["dev1"]["api"]["database"]["path"] == configs["dev1"]["db"]["sqlite"]["path"]


def test_prod_inventory_shape() -> None:
    inv = load_inventory(ROOT / "inventory/prod.yml")
    counts = {t: len(h) for t, h in inv.hosts_by_type().items()}
    assert counts == {"web": 2, "api": 3, "lb": 1, "db": 1, "monitoring": 1}
    assert inv.environment == "prod"
    configs = effective_configs(inv)
    assert configs["prod-db1"]["db"]["engine"] == "postgresql"
    assert all(c["web"]["debug"] is False for h, c in configs.items() if "web" in c)


def test_vault_values_are_not_literal_secrets(tmp_path: Path) -> None:
    text = (ROOT / "tests/data/valid-base-inventory.yml").read_text()
    text = text.replace(
        "ansible_user: root",
        "ansible_user: root\n    ansible_password: !vault |\n"
        "      $ANSIBLE_VAULT;1.1;AES256\n      6162636465",
    )
    p = tmp_path / "vaulted.yml"
    p.write_text(text)
    assert check_inventory_configs(load_inventory(p))[1] == []


def test_release_must_ship_the_model_and_components_the_inventory_needs(tmp_path: Path) -> None:
    from llmops_provision.config import check_release

    inv = load_inventory(write(tmp_path, BASE))
    configs = effective_configs(inv)
    component = {"entry_point": "m:app", "kind": "asgi", "health_path": "/healthz"}
    descriptor: dict[str, Any] = {
        "name": "ocr",
        "version": "2.0.0",
        "components": {"api": component, "web": {**component, "kind": "wsgi"}},
        "models": [{"name": "crnn-ocr", "version": "1.1.0"}],
    }
    assert check_release(inv, configs, descriptor) == []
    descriptor["models"] = [{"name": "crnn-ocr", "version": "1.2.0"}]
    del descriptor["components"]["web"]
    errors = check_release(inv, configs, descriptor)
    assert {(e.path, e.allowed) for e in errors} == {
        ("groups.web", "api"),
        ("groups.api.vars.llmops_config.model", "crnn-ocr 1.2.0"),
    }
