"""Lab figures: base image build time, `lab up` of the 6 default hosts from the cache, idle host
memory, reboot and `lab down` times. Prints figures; asserts nothing. Run as root:

    .venv/bin/python bench/lab_bench.py [--rebuild-base]

`--rebuild-base` deletes the cached base image first (the next `lab up` everywhere rebuilds it).
The lab used is `bench` (the default topology in its own subnet), so a running default lab is
left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from llmops_provision import lab


def rss_mb(init: int) -> float:
    total = 0
    for pid in lab._container_pids(init):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rebuild-base", action="store_true")
    ap.add_argument("--name", default="bench")
    args = ap.parse_args()
    if args.rebuild_base:
        shutil.rmtree(lab.base_dir(), ignore_errors=True)
    t0 = time.monotonic()
    rootfs = lab.ensure_base()
    built = time.monotonic() - t0
    recorded = (lab.base_dir() / "done").read_text().strip()
    print(f"base image: {rootfs} (recorded build time {recorded} s; this call {built:.1f} s)")

    lab.down(args.name)
    t0 = time.monotonic()
    lb = lab.up(args.name, progress=lambda m: None)
    up_s = time.monotonic() - t0
    print(f"lab up, {len(lb.hosts)} hosts from the cache: {up_s:.1f} s")
    time.sleep(5)  # let the hosts settle before measuring idle memory
    for st in lab.status(args.name):
        init = lab._container_init(lb, st.name)
        rss = rss_mb(init) if init else 0.0
        nproc = len(lab._container_pids(init)) if init else 0
        print(
            f"  {st.name:10} {st.state:8} PSS {st.memory_mb or 0:5.1f} MB  "
            f"cgroup {st.cgroup_mb or 0:5.1f} MB  RSS {rss:5.1f} MB  {nproc} processes"
        )
    host = lb.hosts[0].name
    print(f"lab reboot {host}: {lab.reboot(args.name, host):.1f} s")
    t0 = time.monotonic()
    lab.down(args.name)
    print(f"lab down: {time.monotonic() - t0:.1f} s")
    print(f"(load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
