"""`start` and `stop` where they are meant to run: inside a Debian host with systemd as PID 1.

The project and its venv are bind-mounted (read-only) into a fresh lab host at the paths they
have here -- a mount made in the host's own mount namespace with open_tree/move_mount, so
nothing is copied and the host needs no network -- and `llmops-provision start db --config-dir
DIR` runs there with connection local (roles/common, then roles/database with the override).
`test` from this machine then finds the service, and `stop db` stops and disables its units.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from provision_cli import cli as run_cli

from llmops_provision import lab as labmod

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
HOST = "st1"
DB_PATH = "/var/lib/llmops/db/started.sqlite3"
STATE = "/root/llmops-state"

# open_tree(2) a directory of this machine, enter the lab host's mount namespace, move_mount(2)
# it to the same path there (Python 3.11 has no os.setns: libc through ctypes).
BIND = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid, src = int(sys.argv[1]), sys.argv[2]
fd = libc.syscall(428, -100, src.encode(), 1 | 0o2000000)  # open_tree: CLONE | CLOEXEC
if fd < 0:
    raise OSError(ctypes.get_errno(), "open_tree " + src)
ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
if libc.setns(ns, 0x00020000) != 0:  # CLONE_NEWNS
    raise OSError(ctypes.get_errno(), "setns")
os.makedirs(src, exist_ok=True)
if libc.syscall(429, fd, b"", -100, src.encode(), 4) != 0:  # move_mount: F_EMPTY_PATH
    raise OSError(ctypes.get_errno(), "move_mount " + src)
"""


def controller_paths() -> list[Path]:
    """The project and the Python its venv runs on (not /usr: the host has Debian's own)."""
    paths: list[Path] = []
    for p in sorted({REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}):
        if p == Path("/usr") or any(p.is_relative_to(q) for q in paths):
            continue
        paths.append(p)
    return paths


def bind_into(lab: labmod.Lab, host: str, path: Path) -> None:
    init = labmod._container_init(lab, host)
    assert init is not None, f"no systemd of {host} found"
    subprocess.run([sys.executable, "-c", BIND, str(init), str(path)], check=True, timeout=30)
    lab.run(host, f"mount -o remount,bind,ro {shlex.quote(str(path))}")


def test_start_and_stop_db_inside_a_lab_host(
    lab_factory: Callable[..., labmod.Lab], tmp_path: Path
) -> None:
    lab = lab_factory("it-start", [HOST])
    address = lab.address(HOST)
    mounted = controller_paths()
    for path in mounted:
        bind_into(lab, HOST, path)
    try:
        exe = Path(sys.executable).parent / "llmops-provision"
        cli = f"cd /root && LLMOPS_STATE_DIR={STATE} {exe}"
        override = json.dumps({"sqlite": {"path": DB_PATH}})
        lab.run(HOST, f"mkdir -p /root/cfg && echo {shlex.quote(override)} > /root/cfg/db.json")
        started = lab.run(HOST, f"{cli} start db --config-dir /root/cfg --no-progress", check=False)
        assert started.returncode == 0, (started.stdout + started.stderr)[-4000:]
        assert json.loads(started.stdout.strip().splitlines()[-1]) == {
            "server_type": "db",
            "address": address,
            "port": 5432,
        }
        # roles/common ran first (its group exists), the firewall was left alone, the db is there
        assert lab.run(HOST, "getent group llmops", check=False).returncode == 0
        assert lab.run(HOST, f"test -f {DB_PATH}", check=False).returncode == 0
        assert "table inet llmops" not in lab.run(HOST, "nft list ruleset").stdout
        # the controller's secrets dir was not touched: the host made its own
        assert lab.run(HOST, f"test -d {STATE}/secrets/local", check=False).returncode == 0

        # `test` from this machine finds the service `start` made
        sqlite = {"engine": "sqlite", "path": DB_PATH}
        host_vars = {
            "ansible_host": address,
            "llmops_config": {
                "db": {"sqlite": {"path": DB_PATH}},
                "web": {"database": sqlite},
                "api": {"database": sqlite},
            },
        }
        conn = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(lab.ssh_key),
            "ansible_ssh_common_args": (
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
            ),
        }
        groups = {g: {"hosts": {HOST: host_vars}} for g in ("lb", "web", "api", "db", "monitoring")}
        inventory = {"all": {"vars": {"llmops_environment": "lab", **conn}, "children": groups}}
        inv = tmp_path / "started.yml"
        inv.write_text(yaml.safe_dump(inventory))
        probed = run_cli(None, "test", str(inv), "--server-type", "db", timeout=120)
        assert probed.returncode == 0, probed.stdout + probed.stderr
        assert f"{DB_PATH} present" in probed.stdout

        stopped = lab.run(HOST, f"{cli} stop db", check=False)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        state = lab.run(HOST, "systemctl is-active llmops-db-backup.timer", check=False)
        assert state.stdout.strip() == "inactive"
        enabled = lab.run(HOST, "systemctl is-enabled llmops-db-backup.timer", check=False)
        assert enabled.stdout.strip() == "disabled"
    finally:
        for path in reversed(mounted):
            lab.run(HOST, f"umount {shlex.quote(str(path))}", check=False)
