"""The five server types: names, roles, groups, ports, templates, probes, app verification."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from llmops_provision.errors import InvalidInput
from llmops_provision.server_types import (
    REGISTRY,
    DatabaseServer,
    InferenceAPIServer,
    LoadBalancerServer,
    MonitoringServer,
    ServerType,
    WebAppServer,
    get_server_type,
)

ROOT = Path(__file__).resolve().parents[2]


def test_registry_maps_the_five_names_to_their_classes() -> None:
    assert {n: type(st) for n, st in REGISTRY.items()} == {
        "web": WebAppServer,
        "api": InferenceAPIServer,
        "lb": LoadBalancerServer,
        "db": DatabaseServer,
        "monitoring": MonitoringServer,
    }
    assert all(isinstance(st, ServerType) for st in REGISTRY.values())


@pytest.mark.parametrize(
    ("name", "role", "port"),
    [
        ("web", "webapp", 8080),
        ("api", "inference_api", 8000),
        ("lb", "load_balancer", 80),
        ("db", "database", 5432),
        ("monitoring", "monitoring", 9090),
    ],
)
def test_each_type_knows_role_group_port_and_a_valid_template(
    name: str, role: str, port: int
) -> None:
    st = get_server_type(name)
    assert st.role == role
    assert st.group == name
    assert st.default_port == port
    assert st.template()["port"] == port
    assert st.template()["server_type"] == name
    assert st.validate_config(st.template(), f"configs/{name}.json") == []
    assert st.schema_path.is_file()


def test_unknown_type_names_the_allowed_ones() -> None:
    with pytest.raises(KeyError, match="allowed: web, api, lb, db, monitoring"):
        get_server_type("gpu")


def test_load_config_raises_with_every_problem(tmp_path: Path) -> None:
    f = tmp_path / "web.json"
    f.write_text('{"server_type": "web", "port": 0, "debug": "yes"}')
    with pytest.raises(InvalidInput) as exc:
        REGISTRY["web"].load_config(f)
    paths = {e.path for e in exc.value.errors}
    assert {"port", "debug", "workers", "api_url"} <= paths
    assert all(e.file == str(f) for e in exc.value.errors)


def test_ports_per_type() -> None:
    lb = REGISTRY["lb"].template()
    assert set(REGISTRY["lb"].ports(lb)) == {80, 443, 9113, 8089}
    db = REGISTRY["db"].template()
    assert REGISTRY["db"].ports(db) == {}  # sqlite listens nowhere
    db["engine"] = "postgresql"
    assert set(REGISTRY["db"].ports(db)) == {5432, 9187}
    mon = REGISTRY["monitoring"].template()
    assert set(REGISTRY["monitoring"].ports(mon)) == {9090, 9093, 19532}


def test_health_probes_follow_the_config() -> None:
    api = copy.deepcopy(REGISTRY["api"].template())
    api["port"] = 8123
    probes = REGISTRY["api"].health_probes(api)
    assert {(p.kind, p.port, p.path) for p in probes} >= {
        ("http", 8123, "/healthz"),
        ("http", 8123, "/readyz"),
    }
    db = REGISTRY["db"].template()
    assert [(p.kind, p.path) for p in REGISTRY["db"].health_probes(db)] == [
        ("file", "/var/lib/llmops/db/llmops.sqlite3")
    ]
    lb = REGISTRY["lb"].template()
    https = [p for p in REGISTRY["lb"].health_probes(lb) if p.scheme == "https"]
    assert https and https[0].port == 443


def test_verify_app_requires_a_component_for_the_type(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "descriptor.json").write_text(
        '{"name": "x", "version": "1.0.0", "models": [], "components": {"api": '
        '{"entry_point": "x.app:make", "kind": "asgi", "health_path": "/healthz"}}}'
    )
    assert REGISTRY["api"].verify_app(app) == []
    errors = REGISTRY["web"].verify_app(app)
    assert [(e.path, e.problem) for e in errors] == [
        ("components", "no component for server type web")
    ]
