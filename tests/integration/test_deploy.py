"""apply, plan, status, backup and restore through the real CLI against one lab host.

The host runs every server type with a SQLite database (the dev shape); `--server-type db` limits
the run to roles common + database, so no application bundle is needed. PostgreSQL is covered by
molecule/database.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from provision_cli import cli

from llmops_provision import lab as labmod

pytestmark = pytest.mark.lab

HOST = "dep1"
DB = "/var/lib/llmops/db/llmops.sqlite3"


@dataclass
class Deployed:
    lab: labmod.Lab
    inventory: Path
    env: dict[str, str]
    apply: subprocess.CompletedProcess[str]


def host_sh(lab: labmod.Lab, cmd: str) -> str:
    return lab.run(HOST, cmd, check=True).stdout.strip()


def table_row(text: str, host: str) -> list[str]:
    """Cells of the summary-table row of ``host``."""
    line = next(line for line in text.splitlines() if f" {host} " in line and "│" in line)
    return [cell.strip() for cell in line.split("│")[1:-1]]


@pytest.fixture(scope="module")
def deployed(
    lab_factory: Callable[..., labmod.Lab], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    lab = lab_factory("it-deploy", [HOST])
    work = tmp_path_factory.mktemp("deploy")
    inventory = work / "itdeploy.yml"
    address = lab.address(HOST)
    inventory.write_text(
        f"""all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: {lab.ssh_key}
    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    llmops_environment: dev
  hosts:
    {HOST}: {{ansible_host: {address}}}
  children:
    web: {{hosts: {{{HOST}: }}}}
    api: {{hosts: {{{HOST}: }}}}
    lb: {{hosts: {{{HOST}: }}}}
    monitoring: {{hosts: {{{HOST}: }}}}
    db:
      hosts: {{{HOST}: }}
      vars: {{llmops_config: {{engine: sqlite, backup: {{retention_days: 2}}}}}}
"""
    )
    env = {
        **os.environ,
        "LLMOPS_STATE_DIR": str(work / "state"),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    result = cli(env, "apply", str(inventory), "--server-type", "db")
    yield Deployed(lab, inventory, env, result)


def test_apply_converges_the_host_and_reports_it(deployed: Deployed) -> None:
    out = deployed.apply.stdout + deployed.apply.stderr
    assert deployed.apply.returncode == 0, out[-6000:]
    host, result, ok, changed, failed, unreachable = table_row(out, HOST)[:6]
    assert (host, result, failed, unreachable) == (HOST, "changed", "0", "0")
    assert int(ok) > 20 and int(changed) > 5
    # the SQLite file as the services need it: group llmops, 0660, WAL
    assert host_sh(deployed.lab, f"stat -c '%U:%G %a' {DB}") == "root:llmops 660"
    assert host_sh(deployed.lab, f"sqlite3 {DB} 'PRAGMA journal_mode;'") == "wal"
    # credentials were generated on the controller, private
    secrets = Path(deployed.env["LLMOPS_STATE_DIR"]) / "secrets" / "itdeploy"
    assert sorted(p.name for p in secrets.iterdir()) == sorted(
        ["admin-password", "api-token", "db-password", "session-key"]
    )
    assert {oct(p.stat().st_mode & 0o777) for p in secrets.iterdir()} == {"0o600"}


def test_plan_shows_drift_with_a_diff_and_changes_nothing(deployed: Deployed) -> None:
    assert deployed.apply.returncode == 0
    unit = "/etc/systemd/system/llmops-db-backup.timer"
    host_sh(deployed.lab, f"sed -i 's/^Persistent=true/Persistent=false/' {unit}")
    plan = cli(deployed.env, "plan", str(deployed.inventory), "--server-type", "db")
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-4000:]
    changes = [line for line in plan.stdout.splitlines() if line.startswith("~ ")]
    assert changes == [f"~ {HOST}: Install the backup service and timer"], plan.stdout
    assert "-Persistent=false" in plan.stdout and "+Persistent=true" in plan.stdout
    # check mode: the file on the host is still as we left it
    assert "Persistent=false" in host_sh(deployed.lab, f"cat {unit}")


def test_status_shows_units_probes_and_last_deployment(deployed: Deployed) -> None:
    assert deployed.apply.returncode == 0
    status = cli(deployed.env, "status", str(deployed.inventory), "--json")
    data = json.loads(status.stdout)
    row = data["hosts"][HOST]
    units = {u["Id"]: u["ActiveState"] for u in row["units"]}
    assert units["llmops-db-backup.timer"] == "active"
    assert units["prometheus-node-exporter.service"] == "active"
    assert units["nftables.service"] == "active"
    probes = {p["name"]: p["ok"] for p in row["probes"]}
    assert probes["sqlite file"] is True
    # web and api were not deployed (--server-type db): status says so and fails
    assert probes["api healthz"] is False and probes["web healthz"] is False
    assert status.returncode == 1
    assert data["last_deployment"]["result"] == "ok"
    assert data["last_deployment"]["limit"] == "db"


def test_backup_then_restore_brings_the_data_back(deployed: Deployed) -> None:
    assert deployed.apply.returncode == 0
    lab = deployed.lab
    host_sh(lab, f"sqlite3 {DB} \"CREATE TABLE IF NOT EXISTS canary(v); DELETE FROM canary; "
            "INSERT INTO canary VALUES('v1');\"")  # fmt: skip
    backup = cli(deployed.env, "backup", str(deployed.inventory))
    assert backup.returncode == 0, backup.stderr[-3000:]
    host, name = backup.stdout.split()
    assert host == HOST and name.startswith("llmops-") and name.endswith(".sqlite3")
    host_sh(lab, f"sqlite3 {DB} \"UPDATE canary SET v='v2'\"")

    restore = cli(deployed.env, "restore", str(deployed.inventory), "--from", name)
    assert restore.returncode == 0, (restore.stdout + restore.stderr)[-3000:]
    assert host_sh(lab, f"sqlite3 {DB} 'SELECT v FROM canary'") == "v1"
    assert host_sh(lab, f"stat -c '%U:%G %a' {DB}") == "root:llmops 660"
