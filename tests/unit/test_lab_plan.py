"""Lab planning and error messages that need neither root nor running hosts."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import yaml

from llmops_provision import lab

REPO = Path(__file__).resolve().parents[2]


def test_default_inventory_is_the_default_lab() -> None:
    name, hosts, groups = lab._read_inventory(REPO / "inventory" / "lab.yml")
    assert name == lab.DEFAULT_NAME
    assert {h.name for h in hosts} == {
        "lab-lb",
        "lab-web",
        "lab-api1",
        "lab-api2",
        "lab-db",
        "lab-mon",
    }
    assert all(h.address.startswith("10.213.0.") for h in hosts)
    assert groups["api"] == ["lab-api1", "lab-api2"]


def test_names_and_addresses_of_a_lab() -> None:
    one = lab.Lab(name="a", index=7, hosts=[lab.Host("b-c", "10.213.7.10")])
    other = lab.Lab(name="a-b", index=8, hosts=[lab.Host("c", "10.213.8.10")])
    assert one.bridge == "llmops7" and str(one.subnet) == "10.213.7.0/24"
    assert one.gateway == "10.213.7.1"
    # Labs whose names share a prefix never share a namespace or machine name.
    assert one.netns("b-c") != other.netns("c")
    assert one.machine("b-c") != other.machine("c")
    assert len(one.veth("b-c")) <= 15  # Linux interface names
    assert one.ssh_key == lab.STATE_ROOT / "labs" / "a" / "ssh" / "id_ed25519"
    assert lab.Lab.from_json(one.to_json()) == one


@pytest.mark.parametrize("bad", ["", "UPPER", "-x", "x-", "a_b", "a.b", "x" * 40])
def test_bad_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(lab.LabError, match=r"a-z, 0-9 and '-'"):
        lab._check_name("lab", bad)


def test_no_disk_space_says_how_much(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9, 50 * 2**20))
    monkeypatch.setattr(lab, "STATE_ROOT", Path("/tmp"))
    with pytest.raises(
        lab.LabError, match=r"no disk space for the base image: /tmp has 50 MB free"
    ):
        lab._check_space(1500, "the base image")


def test_missing_tool_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(lab.LabError, match=r"`systemd-nspawn` is not installed.*systemd-container"):
        lab.preflight(("systemd-nspawn",))


def test_inventory_copy_moves_hosts_and_addresses_in_vars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab, "STATE_ROOT", tmp_path)
    src = tmp_path / "src.yml"
    src.write_text(
        "all:\n  vars: {llmops_lab_name: default, keep: 1}\n  children:\n"
        "    web:\n      hosts: {w: {ansible_host: 10.213.0.11}}\n"
        "      vars: {url: 'https://10.213.0.10', other: 10.213.0.100}\n"
        "    lb:\n      hosts: {l: {ansible_host: 10.213.0.10}}\n"
    )
    copy = lab.Lab(
        name="x", index=9, source=str(src),
        hosts=[lab.Host("w", "10.213.9.11", ("web",)), lab.Host("l", "10.213.9.10", ("lb",))],
    )  # fmt: skip
    copy.state_dir.mkdir(parents=True)
    lab._write_inventory(copy)
    inv = yaml.safe_load(copy.inventory_path.read_text())
    web = inv["all"]["children"]["web"]
    assert web["hosts"]["w"]["ansible_host"] == "10.213.9.11"
    assert web["vars"]["url"] == "https://10.213.9.10"
    assert web["vars"]["other"] == "10.213.0.100"  # not a host of the lab: left alone
    assert inv["all"]["vars"]["keep"] == 1
    assert inv["all"]["vars"]["llmops_lab_name"] == "x"
    assert inv["all"]["vars"]["ansible_ssh_private_key_file"] == str(copy.ssh_key)
