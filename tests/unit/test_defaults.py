"""One source of truth per default: the schemas' ``default``s. configs/<type>.json must equal
them, and what roles repeat (their defaults/main.yml, meta/argument_specs.yml) must agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from llmops_provision.schemas import SERVER_TYPES, load_schema, schema_defaults
from llmops_provision.server_types import (
    NODE_EXPORTER_PORT,
    REGISTRY,
    DatabaseServer,
    LoadBalancerServer,
)

ROOT = Path(__file__).resolve().parents[2]
MONITORING = REGISTRY["monitoring"].defaults()

# Role variables that repeat a value the schemas or server_types own -> the value they must have.
FIXED: dict[tuple[str, str], Any] = {
    ("common", "common_node_exporter_port"): NODE_EXPORTER_PORT,
    ("common", "common_journal_upload_port"): MONITORING["journal_remote_port"],
    ("load_balancer", "load_balancer_exporter_port"): LoadBalancerServer.NGINX_EXPORTER_PORT,
    ("load_balancer", "load_balancer_status_port"): LoadBalancerServer.STUB_STATUS_PORT,
    ("database", "database_postgres_exporter_port"): DatabaseServer.POSTGRES_EXPORTER_PORT,
    ("monitoring", "monitoring_node_exporter_port"): NODE_EXPORTER_PORT,
    ("monitoring", "monitoring_nginx_exporter_port"): LoadBalancerServer.NGINX_EXPORTER_PORT,
    ("monitoring", "monitoring_postgres_exporter_port"): DatabaseServer.POSTGRES_EXPORTER_PORT,
    ("monitoring", "monitoring_journal_remote_port"): MONITORING["journal_remote_port"],
}


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def _literal(value: Any) -> bool:
    return not (isinstance(value, str) and ("{{" in value or "{%" in value))


@pytest.mark.parametrize("name", [*SERVER_TYPES, "descriptor", "common"])
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema(name))


@pytest.mark.parametrize("stype", SERVER_TYPES)
def test_config_template_is_exactly_the_schema_defaults(stype: str) -> None:
    template = json.loads((ROOT / "configs" / f"{stype}.json").read_text(encoding="utf-8"))
    assert template == schema_defaults(stype), (
        f"configs/{stype}.json and schemas/{stype}.schema.json disagree: change the schema's "
        "default and regenerate the template from schema_defaults()"
    )


def test_every_top_level_field_has_a_default() -> None:
    for stype in SERVER_TYPES:
        required = set(load_schema(stype)["required"])
        assert required <= set(schema_defaults(stype)), stype


def _role_vars(role: str) -> dict[str, Any]:
    return _yaml(ROOT / "roles" / role / "defaults" / "main.yml")


def test_role_variables_named_after_config_fields_agree_with_the_schema() -> None:
    """A role variable ``<role>_<field>`` for a config field must not hold another default."""
    checked = 0
    for stype, st in REGISTRY.items():
        defaults = schema_defaults(stype)
        for var, value in _role_vars(st.role).items():
            field = var.removeprefix(f"{st.role}_")
            if field in defaults and _literal(value):
                assert value == defaults[field], f"roles/{st.role}: {var}"
                checked += 1


def test_fixed_values_roles_repeat_agree() -> None:
    found = 0
    for (role, var), want in FIXED.items():
        role_vars = _role_vars(role)
        if var in role_vars and _literal(role_vars[var]):
            assert role_vars[var] == want, f"roles/{role}/defaults/main.yml: {var}"
            found += 1
    if (ROOT / "roles/common/defaults/main.yml").is_file():
        assert found, "FIXED names no variable the roles define: update it"


@pytest.mark.parametrize("role_dir", sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")))
def test_argument_specs_defaults_match_defaults_main(role_dir: Path) -> None:
    role = role_dir.parent.parent
    specs = _yaml(role_dir).get("argument_specs", {})
    defaults = _role_vars(role.name)
    for entry in specs.values():
        for var, spec in (entry.get("options") or {}).items():
            if isinstance(spec, dict) and "default" in spec and var in defaults:
                assert spec["default"] == defaults[var], f"{role.name}: {var}"
