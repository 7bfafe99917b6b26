"""`start` on a real Debian host: the run `llmops-provision start db --config-dir DIR` makes
(roles/common, then roles/database with the override) converges a fresh lab host, and `test`
then finds the service. The lab host is reached over SSH instead of `connection: local` (the
controller has no systemd as PID 1); everything else is what `start` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llmops_provision import lab as labmod
from llmops_provision import local

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
HOST = "st1"
DB_PATH = "/var/lib/llmops/db/started.sqlite3"


def test_start_db_converges_a_lab_host(
    lab_factory: Callable[..., labmod.Lab], tmp_path: Path
) -> None:
    lab = lab_factory("it-start", [HOST])
    address = lab.address(HOST)
    ssh = {
        "ansible_host": address,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.ssh_key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    }
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "db.json").write_text(json.dumps({"sqlite": {"path": DB_PATH}}))
    config = local.local_config("db", configs)

    result = local.run_start("db", config, {}, address, connection=ssh)
    assert result.ok, [f"{f.host}: {f.task}: {f.message}" for f in result.failures]
    # roles/common ran first (its group exists) and the firewall was left alone
    assert lab.run(HOST, "getent group llmops", check=False).returncode == 0
    assert lab.run(HOST, f"test -f {DB_PATH}", check=False).returncode == 0
    assert "table inet llmops" not in lab.run(HOST, "nft list ruleset").stdout

    sqlite = {"engine": "sqlite", "path": DB_PATH}
    host_vars = {
        "ansible_host": address,
        "llmops_config": {
            "db": {"sqlite": {"path": DB_PATH}},
            "web": {"database": sqlite},
            "api": {"database": sqlite},
        },
    }
    conn = {k: v for k, v in ssh.items() if k != "ansible_host"}
    groups = {g: {"hosts": {HOST: host_vars}} for g in ("lb", "web", "api", "db", "monitoring")}
    inventory = {"all": {"vars": {"llmops_environment": "lab", **conn}, "children": groups}}
    inv = tmp_path / "started.yml"
    inv.write_text(yaml.safe_dump(inventory))
    proc2 = subprocess.run(
        [sys.executable, "-m", "llmops_provision", "test", str(inv), "--server-type", "db"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert f"{DB_PATH} present" in proc2.stdout
