"""Parsing Ansible YAML inventories into hosts, groups and server types."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_provision.errors import InvalidInput
from llmops_provision.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[2]


def test_lab_inventory_matches_the_default_topology() -> None:
    inv = load_inventory(ROOT / "inventory/lab.yml")
    assert inv.name == "lab"
    assert inv.environment == "lab"
    assert inv.hosts_by_type() == {
        "web": ["lab-web"],
        "api": ["lab-api1", "lab-api2"],
        "lb": ["lab-lb"],
        "db": ["lab-db"],
        "monitoring": ["lab-mon"],
    }
    assert inv.hosts["lab-db"].address == "10.213.0.30"
    assert inv.hosts["lab-api2"].vars["ansible_host"] == "10.213.0.22"


def test_nested_children_and_hosts_in_several_groups(tmp_path: Path) -> None:
    p = tmp_path / "inv.yml"
    p.write_text(
        """
all:
  children:
    backend:
      children:
        api:
          hosts: {box1: {ansible_host: 192.0.2.5}}
        web:
          hosts: {box1: null}
    lb: {hosts: {box1: null}}
    db: {hosts: {box1: null}}
    monitoring: {hosts: {box1: {llmops_address: 10.0.0.5}}}
"""
    )
    inv = load_inventory(p)
    assert inv.server_types_of("box1") == ["web", "api", "lb", "db", "monitoring"]
    assert inv.hosts_of("backend") == ["box1"]
    assert "backend" in inv.hosts["box1"].groups
    # llmops_address (the internal address) wins over ansible_host.
    assert inv.hosts["box1"].address == "10.0.0.5"


def test_group_vars_files_beside_the_inventory_are_read(tmp_path: Path) -> None:
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars/api.yml").write_text("llmops_config:\n  workers: 9\n")
    p = tmp_path / "inv.yml"
    p.write_text("all:\n  children:\n    api:\n      hosts:\n        a1:\n")
    assert load_inventory(p).groups["api"].vars == {"llmops_config": {"workers": 9}}


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "inv.yml"
    p.write_text("all:\n  children:\n    web: {hosts: [\n")
    with pytest.raises(InvalidInput) as exc:
        load_inventory(p)
    (err,) = exc.value.errors
    assert err.file == str(p)
    assert err.path.startswith("line 4")
    assert err.problem.startswith("YAML syntax error")


def test_unknown_group_key_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "inv.yml"
    p.write_text("all:\n  children:\n    web:\n      host:\n        w1:\n")
    with pytest.raises(InvalidInput) as exc:
        load_inventory(p)
    assert [(e.path, e.problem) for e in exc.value.errors] == [
        ("groups.web.host", "unknown key in a group")
    ]


def test_errors_carry_the_line_of_the_value_to_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmops_provision.config import validate_inventory

    monkeypatch.chdir(ROOT)
    case = "tests/data/invalid/inv-duplicate-port.yml"
    (err,) = validate_inventory(case)
    lines = (ROOT / case).read_text().splitlines()
    assert lines[err.line - 1].strip() == "port: 8080"
    assert str(err).endswith(f"[line {err.line}]")


@pytest.mark.parametrize("name", ["lab", "dev", "prod"])
def test_ansible_reads_the_same_groups_and_addresses(name: str) -> None:
    """Our parser and Ansible's agree on who is in which group and on each host's vars."""
    tool = shutil.which("ansible-inventory", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.skip("ansible-inventory is not installed in this environment")
    path = ROOT / "inventory" / f"{name}.yml"
    env = {**os.environ, "ANSIBLE_INVENTORY_ENABLED": "yaml", "ANSIBLE_NOCOLOR": "1"}
    out = subprocess.run(
        [tool, "-i", str(path), "--list"], capture_output=True, text=True, check=True, env=env
    ).stdout
    ansible = json.loads(out)
    inv = load_inventory(path)
    for stype, hosts in inv.hosts_by_type().items():
        assert sorted(ansible[stype]["hosts"]) == sorted(hosts), stype
    for host in inv.hosts.values():
        theirs = ansible["_meta"]["hostvars"][host.name]
        assert theirs.get("ansible_host") == host.vars.get("ansible_host")
        assert theirs.get("llmops_environment") == inv.environment
