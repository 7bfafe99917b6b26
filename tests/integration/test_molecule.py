"""Every Molecule scenario (molecule/<name>/molecule.yml) runs as one test: create on lab hosts,
converge, idempotence, verify, destroy. New scenarios are picked up without editing this file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


@pytest.mark.timeout(1900)  # above the subprocess timeout, so its message is the one shown
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, require_root: None) -> None:
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    try:
        proc = subprocess.run(
            [f"{venv_bin}/molecule", "test", "-s", scenario],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-8000:]
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        pytest.fail(f"molecule test -s {scenario} still running after 1800 s:\n{text}")
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-8000:]
        pytest.fail(f"molecule test -s {scenario} exited {proc.returncode}:\n{output}")


def test_scenarios_found() -> None:
    # site = the whole platform on the default lab (issue 7); the others one role each.
    for name in ("lab-smoke", "load_balancer", "monitoring", "site"):
        assert name in SCENARIOS, f"no molecule/{name}/molecule.yml under {REPO}"
