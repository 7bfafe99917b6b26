"""`llmops-provision logs`: which journalctl runs where, and errors for people."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops_provision.checks import host_access
from llmops_provision.cli import main
from llmops_provision.inventory import load_inventory
from llmops_provision.logs import (
    REMOTE_DIR,
    LogsError,
    LogsQuery,
    collector_access,
    journalctl_argv,
    monitoring_host,
    remote_argv,
)

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab.yml"


def test_one_host_one_unit_since_from_the_remote_journals() -> None:
    inv = load_inventory(LAB)
    collector = monitoring_host(inv)
    assert collector == "lab-mon"
    query = LogsQuery(host="lab-api1", unit="llmops-api.service", since="10 min ago", lines=50)
    argv = journalctl_argv(inv, collector, query)
    assert argv[0] == "journalctl"
    assert f"--directory={REMOTE_DIR}" in argv
    assert "_HOSTNAME=lab-api1" in argv
    assert "--unit=llmops-api.service" in argv
    assert "--since=10 min ago" in argv
    assert "--lines=50" in argv


def test_the_monitoring_host_reads_its_own_journal() -> None:
    inv = load_inventory(LAB)
    argv = journalctl_argv(inv, "lab-mon", LogsQuery(host="lab-mon"))
    assert not any(a.startswith("--directory") or a.startswith("_HOSTNAME") for a in argv)


def test_runs_over_ssh_with_the_inventory_settings() -> None:
    inv = load_inventory(LAB)
    argv = remote_argv(host_access(inv, "lab-mon"), ["journalctl", "--since=10 min ago"])
    assert argv[0] == "ssh"
    assert "/var/lib/llmops-lab/labs/default/ssh/id_ed25519" in argv
    assert argv[-2] == "root@10.213.0.40"
    assert argv[-1] == "journalctl '--since=10 min ago'"


def test_unknown_host_is_named_with_the_known_ones() -> None:
    inv = load_inventory(LAB)
    with pytest.raises(LogsError, match=r"no host 'lab-nope'.*lab-api1"):
        journalctl_argv(inv, "lab-mon", LogsQuery(host="lab-nope"))


def test_cli_exit_2_without_a_monitoring_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "small.yml"
    inv.write_text(
        "all:\n  children:\n    web:\n      hosts:\n        w1:\n          ansible_host: 10.0.0.1\n"
    )
    assert main(["logs", str(inv)]) == 2
    err = capsys.readouterr().err
    assert "no host in group 'monitoring'" in err
    assert str(inv) in err


def test_ansible_private_key_file_alias_is_used(tmp_path: Path) -> None:
    inv_path = tmp_path / "molecule.yml"
    inv_path.write_text(
        "all:\n  hosts:\n    mon1:\n      ansible_host: 10.213.5.10\n      ansible_user: root\n"
        "      ansible_private_key_file: /keys/id\nmonitoring:\n  hosts:\n    mon1: {}\n"
    )
    inv = load_inventory(inv_path)
    argv = remote_argv(collector_access(inv, "mon1"), ["journalctl"])
    assert argv[argv.index("-i") + 1] == "/keys/id"
    assert argv[-2:] == ["root@10.213.5.10", "journalctl"]
