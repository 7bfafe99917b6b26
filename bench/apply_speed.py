"""How long `llmops-provision apply` takes: cold, again with no change, and again with Ansible's
defaults -- side by side in one run, on a fresh lab.

1. cold: a fresh lab (every host new), the bundle of apps/ocr built into an empty directory
   (the wheel download cache ~/.cache/llmops/wheels is kept: hosts never download, and the
   controller's network is not what this measures), then `apply` of the whole site;
2. no change: the same `apply` again (the project's ansible.cfg: pipelining, SSH ControlPersist,
   a jsonfile fact cache with smart gathering);
3. no change, Ansible defaults: the same run with pipelining off, no SSH control master, facts
   gathered on every play (memory cache).

Prints a table (seconds, tasks changed, hosts failed) and the ratio of run 3 to run 2. Never
asserts a time. Heavy: about 10 minutes on 2 cores. Root (it starts a lab).

    .venv/bin/python bench/apply_speed.py [--lab NAME] [--inventory FILE] [--keep]

`--inventory` (default inventory/lab.yml) gives the lab's shape; the lab gets its own subnet, so
it runs beside the default lab. `--keep` leaves the lab running afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmops_provision import lab as labmod  # noqa: E402

# What "Ansible's defaults" means for the settings the project's ansible.cfg changes.
ANSIBLE_DEFAULTS = {
    "ANSIBLE_PIPELINING": "False",
    # ansible's own default ssh_args carry ControlPersist=60s; leave the master out entirely
    "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o StrictHostKeyChecking=no "
    "-o UserKnownHostsFile=/dev/null",
    "ANSIBLE_CACHE_PLUGIN": "memory",
    "ANSIBLE_GATHERING": "implicit",
}


@dataclass
class Run:
    name: str
    seconds: float
    changed: int
    failed: int
    ok: bool


def summary(stderr: str) -> tuple[int, int]:
    """(tasks changed, hosts failed or unreachable) from apply's per-host table."""
    changed = failed = 0
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) >= 6 and cells[3].isdigit():
            changed += int(cells[3])
            failed += int(cells[1] in ("failed", "unreachable"))
    return changed, failed


def apply(
    name: str, inventory: Path, bundle: Path, env: dict[str, str], extra_env: dict[str, str]
) -> Run:
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmops_provision",
            "apply",
            str(inventory),
            "--bundle",
            str(bundle),
            "--no-progress",
        ],
        cwd=ROOT,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    changed, failed = summary(proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    return Run(name, seconds, changed, failed, proc.returncode == 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lab", default="bench-apply", help="lab name (default bench-apply)")
    ap.add_argument("--inventory", default=str(ROOT / "inventory" / "lab.yml"))
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("apply_speed: needs root (it starts a lab)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="apply-speed-"))
    env = {**os.environ, "LLMOPS_STATE_DIR": str(work / "state"), "COLUMNS": "200"}
    runs: list[Run] = []
    try:
        t0 = time.monotonic()
        lab = labmod.up(args.lab, inventory=Path(args.inventory), fresh=True)
        lab_seconds = time.monotonic() - t0
        inventory = work / f"{args.lab.replace('-', '')}.yml"
        shutil.copy(lab.inventory_path, inventory)
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "llmops_provision",
                "bundle",
                str(ROOT / "apps" / "ocr"),
                "--out",
                str(work / "dist"),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        bundle_seconds = time.monotonic() - t0
        bundle = next((work / "dist").glob("*.tar.gz"))
        print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)
        cold = apply("cold apply", inventory, bundle, env, {})
        cold.seconds += bundle_seconds
        runs.append(cold)
        runs.append(apply("no-change apply (project ansible.cfg)", inventory, bundle, env, {}))
        runs.append(
            apply("no-change apply (Ansible defaults)", inventory, bundle, env, ANSIBLE_DEFAULTS)
        )
    finally:
        if not args.keep:
            labmod.down(args.lab)
        shutil.rmtree(work, ignore_errors=True)
    hosts = len(lab.hosts)
    print(
        f"\napply speed on lab {args.lab} ({hosts} hosts from {args.inventory}); "
        f"lab start {lab_seconds:.1f} s (not counted), bundle build {bundle_seconds:.1f} s "
        "(counted in the cold apply)"
    )
    print(f"{'run':<40} {'seconds':>8} {'changed':>8} {'failed':>7}  result")
    for r in runs:
        print(
            f"{r.name:<40} {r.seconds:>8.1f} {r.changed:>8} {r.failed:>7}  "
            f"{'ok' if r.ok else 'FAILED'}"
        )
    if len(runs) == 3 and runs[1].seconds > 0:
        print(
            f"Ansible defaults / project settings (no change): "
            f"{runs[2].seconds / runs[1].seconds:.2f}x"
        )
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
