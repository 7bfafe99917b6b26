"""The local lab, driven through its CLI like a user would: hosts boot, talk to each other, run apt
and units, survive a reboot; `lab down` and a crashed lab leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from llmops_provision import lab as labmod

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "llmops_provision"]
PROBE_UNIT = """\
[Unit]
Description=lab probe web server

[Service]
ExecStart=/usr/bin/python3 -m http.server 8765 --directory /srv/probe
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def leftovers(name: str) -> list[str]:
    """Everything of lab `name` still on this machine, as readable lines (empty = clean)."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {ln}" for ln in netns.splitlines() if f"llmops-{name}." in ln]
    state = labmod.lab_dir(name)
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {ln}" for ln in mounts.splitlines() if str(state) in ln]
    for table in ("nat", "filter"):
        rules = subprocess.run(
            ["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True
        ).stdout
        found += [f"iptables {ln}" for ln in rules.splitlines() if f"llmops-lab:{name}" in ln]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"/run/netns/llmops-{name}." in cmd or f"{state}/" in cmd:
            found.append(f"process {pid}: {cmd[:120]}")
    cgroups = subprocess.run(
        ["find", "/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name", f"{name}.*"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    found += [f"cgroup {ln}" for ln in cgroups.splitlines() if "/llmops-lab/" in ln]
    if state.exists():
        found.append(f"state dir {state}")
    return found


def lab_links(lab: labmod.Lab) -> list[str]:
    """The lab's bridge and host-side veths still present (other engineers' labs come and go on
    this machine, so only this lab's names are checked)."""
    return [
        link
        for link in os.listdir("/sys/class/net")
        if link == lab.bridge or link.startswith(f"llv{lab.index}h")
    ]


@pytest.fixture(scope="module")
def pair(require_root: None) -> Iterator[labmod.Lab]:
    """A 2-host lab started through the CLI, as a user would."""
    proc = cli("lab", "up", "--name", "it-lab", "--hosts", "alpha,beta", "--fresh")
    assert "alpha" in proc.stdout and "running" in proc.stdout, proc.stdout
    lab = labmod.load("it-lab")
    assert len(lab_links(lab)) == 3
    yield lab
    cli("lab", "down", "--name", "it-lab")
    assert leftovers("it-lab") == []
    assert lab_links(lab) == []


def test_hosts_run_systemd_and_answer_ssh(pair: labmod.Lab) -> None:
    status = json.loads(cli("lab", "status", "--name", "it-lab", "--json").stdout)
    assert status["status"]["alpha"]["state"] == "running"
    assert status["status"]["beta"]["state"] == "running"
    out = cli("lab", "ssh", "--name", "it-lab", "beta", "hostname; ps -o comm= -p 1").stdout
    assert out.split() == ["beta", "systemd"]
    # Each host has an identity of its own (journal collection tells hosts apart by machine-id).
    ids = {pair.run(h, "cat /etc/machine-id").stdout for h in ("alpha", "beta")}
    assert len(ids) == 2


def test_ansible_reaches_hosts_with_the_written_inventory(pair: labmod.Lab) -> None:
    inv = yaml.safe_load(pair.inventory_path.read_text())
    assert inv["all"]["hosts"]["alpha"]["ansible_host"] == pair.address("alpha")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "all", "-i", str(pair.inventory_path),
         "-m", "ansible.builtin.ping", "-o"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == 2


def test_up_again_reuses_the_running_lab(pair: labmod.Lab) -> None:
    init = labmod._container_init(pair, "alpha")
    proc = cli("lab", "up", "--name", "it-lab", "--hosts", "alpha,beta")
    assert "reusing" in proc.stderr
    assert labmod._container_init(pair, "alpha") == init


def test_two_labs_side_by_side(pair: labmod.Lab, lab_factory: Callable[..., labmod.Lab]) -> None:
    side = lab_factory("it-side", ["alpha"])
    assert side.subnet != pair.subnet and side.bridge != pair.bridge
    assert side.run("alpha", "hostname -I").stdout.split() == [side.address("alpha")]
    assert pair.run("alpha", "hostname -I").stdout.split() == [pair.address("alpha")]
    # The other lab's hosts are not in this lab's /etc/hosts.
    assert side.run("alpha", "getent hosts beta", check=False).returncode != 0
    labmod.down("it-side")
    assert leftovers("it-side") == []
    assert pair.run("alpha", "systemctl is-system-running").stdout.strip() == "running"


def test_hosts_reach_each_other_by_name(pair: labmod.Lab) -> None:
    out = pair.run("alpha", "getent hosts beta && ping -c1 -W2 beta").stdout
    assert pair.address("beta") in out
    assert "1 received" in out


def test_apt_installs_a_package_inside(pair: labmod.Lab) -> None:
    pair.run("beta", "apt-get -qq update", timeout=180)
    pair.run("beta", "DEBIAN_FRONTEND=noninteractive apt-get -qq install -y hello", timeout=180)
    assert pair.run("beta", "hello").stdout.strip() == "Hello, world!"


def test_unit_starts_and_survives_a_reboot(pair: labmod.Lab) -> None:
    unit = PROBE_UNIT.replace("\n", "\\n")
    pair.run(
        "alpha",
        f"mkdir -p /srv/probe && echo probe-ok > /srv/probe/index.html && "
        f"printf '{unit}' > /etc/systemd/system/lab-probe.service && "
        "systemctl daemon-reload && systemctl enable --now lab-probe.service",
    )

    def served() -> bool:
        proc = pair.run("beta", "curl -sf http://alpha:8765/index.html", check=False)
        return proc.stdout.strip() == "probe-ok"

    wait_for(served, 30, "lab-probe.service on alpha to answer beta")
    # /run is a tmpfs inside the host: a marker there is gone only after a real reboot.
    pair.run("alpha", "touch /run/before-reboot")
    proc = cli("lab", "reboot", "--name", "it-lab", "alpha")
    assert "running again" in proc.stdout
    assert pair.run("alpha", "test -e /run/before-reboot", check=False).returncode == 1
    assert pair.run("alpha", "systemctl is-active lab-probe.service").stdout.strip() == "active"
    wait_for(served, 30, "lab-probe.service to answer again after the reboot")


def test_a_unit_that_failed_once_is_started_again_before_the_host_counts_as_broken(
    pair: labmod.Lab,
) -> None:
    # Fails the first time (like a boot unit timing out under load), succeeds after.
    pair.run(
        "beta",
        "printf '[Service]\\nType=oneshot\\nRemainAfterExit=yes\\n"
        'ExecStart=/bin/sh -c "test -e /run/flaky-once || { touch /run/flaky-once; exit 1; }"\\n\''
        " > /etc/systemd/system/flaky-once.service && systemctl daemon-reload && "
        "(systemctl start flaky-once.service || true)",
    )
    assert pair.run("beta", "systemctl is-system-running", check=False).stdout.strip() == (
        "degraded"
    )
    labmod.wait_ready(pair, "beta", timeout=60)
    assert pair.run("beta", "systemctl is-active flaky-once.service").stdout.strip() == "active"


def test_killed_lab_is_cleaned_by_next_up_and_down_leaves_nothing(require_root: None) -> None:
    name = "it-stale"
    cli("lab", "up", "--name", name, "--hosts", "solo", "--fresh")
    stale = labmod.load(name)
    old_init = labmod._container_init(stale, "solo")
    assert old_init is not None
    # A crash: the supervisor and nspawn die without any cleanup; the host's systemd lives on.
    for pid in labmod._nspawn_pids(stale, "solo"):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not labmod._nspawn_pids(stale, "solo"), 10, "nspawn to die")
    assert labmod._container_init(stale, "solo") == old_init  # the orphaned host is still there

    cli("lab", "up", "--name", name, "--hosts", "solo")
    fresh = labmod.load(name)
    new_init = labmod._container_init(fresh, "solo")
    assert new_init is not None and new_init != old_init
    assert not Path(f"/proc/{old_init}").exists()
    assert fresh.run("solo", "systemctl is-system-running").stdout.strip() == "running"

    proc = cli("lab", "down", "--name", name)
    assert "nothing left behind" in proc.stdout
    assert leftovers(name) == []
    assert lab_links(fresh) == []


def test_clear_errors(require_root: None, tmp_path: Path) -> None:
    # Not root.
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CLI, "lab", "up"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "needs root" in proc.stderr, proc.stderr
    # A missing tool names the Debian package to install.
    proc = subprocess.run(
        [*CLI, "lab", "up", "--name", "it-err"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PATH": str(tmp_path)}, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "apt-get install" in proc.stderr and "is not installed" in proc.stderr, proc.stderr
    # A subnet that something else on this machine uses.
    inv = tmp_path / "clash.yml"
    inv.write_text(
        "all:\n  vars: {llmops_lab_name: it-clash}\n  hosts: {one: {ansible_host: 10.213.251.10}}\n"
    )
    subprocess.run(["ip", "link", "add", "it-clash0", "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.213.251.5/24", "dev", "it-clash0"], check=True)
        proc = cli("lab", "up", "--name", "it-clash", "--inventory", str(inv), check=False)
    finally:
        subprocess.run(["ip", "link", "delete", "it-clash0"], check=True)
    assert proc.returncode == 1
    assert "10.213.251.0/24" in proc.stderr and "it-clash0" in proc.stderr, proc.stderr
    assert leftovers("it-clash") == []
    # An unknown host.
    proc = cli("lab", "ssh", "--name", "it-nosuch", "x", "true", check=False)
    assert proc.returncode == 1 and "no lab named 'it-nosuch'" in proc.stderr
