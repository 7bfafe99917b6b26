"""`llmops-provision test` against a lab host whose firewall refuses the controller: the probes
reach the services through SSH (auto), pass while they run, and a stopped service is reported
with a non-zero exit. The services are python http.servers under systemd on the host standing in
for Prometheus/Alertmanager/journal-remote (the roles' own verification lives in molecule)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from provision_cli import cli

from llmops_provision import lab as labmod

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
HOST = "chk1"
PORTS = {"prometheus": 9090, "alertmanager": 9093, "journal": 19532}
TARGETS = {
    "status": "success",
    "data": {
        "activeTargets": [{"labels": {"job": "node", "instance": "chk1:9100"}, "health": "up"}]
    },
}
# Input closed to everyone but loopback and SSH, as roles/common closes ports the controller
# is not a source of (reject, so clients fail fast).
NFT = """
table inet chk {
  chain input {
    type filter hook input priority filter; policy accept;
    ct state established,related accept
    iif "lo" accept
    tcp dport 22 accept
    tcp dport { 9090, 9093, 19532 } reject with tcp reset
  }
}
"""


def _setup_host(lab: labmod.Lab) -> None:
    lab.run(
        HOST,
        "set -e; mkdir -p /srv/prom/- /srv/prom/api/v1 /srv/am/-; "
        "echo Ready > /srv/prom/-/ready; echo OK > /srv/am/-/ready; "
        f"echo '{json.dumps(TARGETS)}' > /srv/prom/api/v1/targets",
    )
    for name, directory in (
        ("prometheus", "/srv/prom"),
        ("alertmanager", "/srv/am"),
        ("journal", "/srv/am"),
    ):
        lab.run(
            HOST,
            f"systemd-run --unit=chk-{name} python3 -m http.server {PORTS[name]} "
            f"--bind {lab.address(HOST)} --directory {directory}",
        )
    lab.run(HOST, f"cat > /etc/chk.nft <<'EOF'\n{NFT}\nEOF\nnft -f /etc/chk.nft")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = lab.run(
            HOST,
            f"python3 -c \"import urllib.request as u; u.urlopen('http://{lab.address(HOST)}:"
            f"{PORTS['alertmanager']}/-/ready', timeout=2)\"",
            check=False,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.3)
    pytest.fail("the stand-in services did not start on the lab host")


def _inventory(lab: labmod.Lab, tmp_path: Path) -> Path:
    host = {
        "ansible_host": lab.address(HOST),
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.ssh_key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o LogLevel=ERROR",
    }
    groups = {name: {"hosts": {HOST: host}} for name in ("lb", "web", "api", "db", "monitoring")}
    path = tmp_path / "chk.yml"
    path.write_text(
        yaml.safe_dump({"all": {"vars": {"llmops_environment": "lab"}, "children": groups}})
    )
    return path


def _test(inv: Path, *extra: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmops_provision",
            "test",
            str(inv),
            "--server-type",
            "monitoring",
            "--format",
            "json",
            "--timeout",
            "5",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_probes_through_ssh_and_a_stopped_service_fails(
    lab_factory: Callable[..., labmod.Lab], tmp_path: Path
) -> None:
    lab = lab_factory("it-checks", [HOST])
    _setup_host(lab)
    inv = _inventory(lab, tmp_path)

    # Directly the firewall refuses the controller ...
    rc, report = _test(inv, "--via", "direct")
    assert rc == 1
    results = report["results"]
    assert isinstance(results, list)
    assert all("refused" in r["detail"] for r in results), results

    # ... through ssh every probe passes
    rc, report = _test(inv)
    assert rc == 0, json.dumps(report, indent=2)
    results = report["results"]
    assert isinstance(results, list)
    assert {r["check"] for r in results} == {
        "prometheus ready",
        "alertmanager ready",
        "journal-remote port open",
        "prometheus targets up",
    }
    assert all("ssh" in r["detail"] for r in results)

    lab.run(HOST, "systemctl stop chk-alertmanager chk-journal")
    rc, report = _test(inv)
    assert rc == 1
    by_check = {r["check"]: r for r in report["results"]}  # type: ignore[union-attr]
    assert by_check["prometheus ready"]["ok"] and by_check["prometheus targets up"]["ok"]
    assert not by_check["alertmanager ready"]["ok"]
    detail = by_check["alertmanager ready"]["detail"]
    assert "connection closed without a reply" in detail and "through ssh to chk1" in detail
    assert not by_check["journal-remote port open"]["ok"]
    assert "closed" in by_check["journal-remote port open"]["detail"]

    # the text output names the failure on its own line
    proc = cli(None, "test", str(inv), "--server-type", "monitoring", timeout=120)
    assert proc.returncode == 1
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 2 and any("alertmanager ready" in line for line in failed)
