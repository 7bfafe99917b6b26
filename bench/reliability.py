"""Failed client requests through the platform's load balancer while an api host goes away.

Runs against a provisioned inventory (e.g. the default lab after `scripts/lab-demo.sh`): a handful
of clients (one keep-alive HTTPS connection each, TLS verified against the inventory's CA) POST
the known OCR line to `https://<lb>/v1/ocr?mode=line` with the api token, at least N requests
and until the fault has been repaired. A quarter of the way in, the fault starts:

- `stop`:    `systemctl stop llmops-api` on one api host; started again at three quarters
             (then waits until its /readyz answers);
- `kill`:    `kill -9` of that host's gunicorn workers (the master starts new ones, which load the
             model before they serve);
- `rollout`: `llmops-provision rollout INVENTORY --server-type api [--bundle B]` (drain, update,
             undrain each api host in turn; give a bundle of another version, or hosts already
             on the release are only checked);
- `none`:    no fault (baseline).

A request fails when it raises (connection, TLS, timeout), answers other than 200, or reads
other text than the known line. Prints per case: requests, failures (by kind), p50/p99/max
latency, throughput and what the fault did. `--check` exits 1 when any request failed (the
molecule/site verify uses it); it never judges a latency.

    .venv/bin/python bench/reliability.py inventory/lab.yml [--case stop kill rollout]
        [--requests 2000] [--clients 4] [--host lab-api1] [--bundle B] [--json FILE] [--check]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmops_provision import checks, deploy  # noqa: E402

UNIT = "llmops-api"


@dataclass
class Outcome:
    started: float
    seconds: float
    error: str  # "" when the request succeeded


@dataclass
class Shared:
    target: int
    fault_done: threading.Event
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def take(self) -> bool:
        with self.lock:
            if self.issued >= self.target and self.fault_done.is_set():
                return False
            self.issued += 1
            return True

    def done(self) -> int:
        with self.lock:
            return len(self.outcomes)


class Platform:
    """The inventory's lb URL, CA, api token and SSH access to its api hosts."""

    def __init__(self, inventory: str) -> None:
        self.inventory = inventory
        self.target = deploy.load_target(inventory)
        self.url = f"{deploy.platform_url(self.target)}/v1/ocr?mode=line"
        secrets = deploy.secrets_dir(self.target.name)
        self.ca = str(secrets / "tls-ca.crt")
        self.token = (secrets / "api-token").read_text(encoding="utf-8").strip()
        self.image, self.expected = checks.ocr_image()

    def api_hosts(self) -> list[str]:
        return sorted(self.target.inventory.hosts_of("api"))

    def ssh(self, host: str, command: str, timeout: float = 120) -> str:
        access = checks.host_access(self.target.inventory, host)
        proc = subprocess.run(
            [*access.ssh_argv(), command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{host}: `{command}` exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
            )
        return proc.stdout.strip()

    def wait_ready(self, host: str, deadline_s: float = 180) -> float:
        """Seconds until the api on ``host`` answers /readyz 200 (asked on the host itself)."""
        cfg = self.target.configs[host]["api"]
        address = checks.host_access(self.target.inventory, host).address
        url = f"http://{address}:{int(cfg['port'])}/readyz"
        script = (
            f"end=$(( $(date +%s) + {int(deadline_s)} )); "
            f"until curl -fsS -o /dev/null --max-time 5 {url}; do "
            f'[ "$(date +%s)" -lt "$end" ] || exit 1; sleep 0.2; done'
        )
        t0 = time.monotonic()
        self.ssh(host, script, timeout=deadline_s + 30)
        return time.monotonic() - t0


def client(platform: Platform, shared: Shared) -> None:
    headers = {"Authorization": f"Bearer {platform.token}"}
    files = {"file": ("reliability.png", platform.image, "image/png")}
    with httpx.Client(verify=platform.ca, timeout=120) as http:
        while shared.take():
            t0 = time.monotonic()
            error = ""
            try:
                reply = http.post(platform.url, headers=headers, files=files)
                if reply.status_code != 200:
                    error = f"HTTP {reply.status_code}"
                elif reply.json().get("text", "").strip() != platform.expected:
                    error = "wrong text"
            except httpx.HTTPError as e:
                error = type(e).__name__
            with shared.lock:
                shared.outcomes.append(Outcome(t0, time.monotonic() - t0, error))


def wait_for(shared: Shared, count: int) -> None:
    while shared.done() < count:
        time.sleep(0.05)


def fault(
    case: str, platform: Platform, host: str, shared: Shared, log: list[str], bundle: str | None
) -> None:
    try:
        n = shared.target
        wait_for(shared, n // 4)
        t0 = time.monotonic()
        if case == "stop":
            platform.ssh(host, f"systemctl stop {UNIT}")
            log.append(f"stopped {UNIT} on {host} in {time.monotonic() - t0:.1f}s")
            wait_for(shared, 3 * n // 4)
            platform.ssh(host, f"systemctl start {UNIT}")
            ready = platform.wait_ready(host)
            log.append(f"started again, ready after {ready:.1f}s")
        elif case == "kill":
            pids = platform.ssh(
                host, f"pgrep -P $(systemctl show -p MainPID --value {UNIT}) | xargs"
            )
            platform.ssh(host, f"kill -9 {pids}")
            log.append(f"kill -9 of {len(pids.split())} workers ({pids}) on {host}")
            ready = platform.wait_ready(host)
            log.append(f"ready again after {ready:.1f}s")
        elif case == "rollout":
            proc = subprocess.run(
                [
                    str(ROOT / ".venv" / "bin" / "llmops-provision"),
                    "rollout",
                    platform.inventory,
                    "--server-type",
                    "api",
                    "--no-progress",
                    *(["--bundle", bundle] if bundle else []),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
            log.append(f"rollout exited {proc.returncode} after {time.monotonic() - t0:.0f}s")
            log.append(f"rollout said: {tail[0]}")
        log.append(f"fault lasted {time.monotonic() - t0:.1f}s")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        log.append(f"FAULT ACTION FAILED: {e}")
    finally:
        shared.fault_done.set()


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_case(
    platform: Platform, case: str, requests: int, clients: int, host: str, bundle: str | None
) -> dict[str, Any]:
    shared = Shared(target=requests, fault_done=threading.Event())
    log: list[str] = []
    if case == "none":
        shared.fault_done.set()
    threads = [threading.Thread(target=client, args=(platform, shared)) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    if case != "none":
        fault(case, platform, host, shared, log, bundle)
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    times = sorted(o.seconds for o in shared.outcomes)
    errors = Counter(o.error for o in shared.outcomes if o.error)
    return {
        "case": case,
        "host": host if case in ("stop", "kill") else "",
        "requests": len(shared.outcomes),
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "p50_ms": round(percentile(times, 50) * 1000, 1),
        "p99_ms": round(percentile(times, 99) * 1000, 1),
        "max_ms": round(times[-1] * 1000, 1) if times else 0.0,
        "req_per_s": round(len(times) / wall, 1),
        "seconds": round(wall, 1),
        "fault": log,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inventory")
    parser.add_argument(
        "--case", nargs="+", default=["stop", "kill"], choices=["none", "stop", "kill", "rollout"]
    )
    parser.add_argument("--requests", type=int, default=2000, help="at least this many per case")
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive clients")
    parser.add_argument("--host", help="the api host to stop or kill (default: the first)")
    parser.add_argument(
        "--bundle",
        help="rollout: the bundle to roll out (another version than the hosts run, so that every "
        "api host is really drained, updated and restarted)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if any request failed")
    args = parser.parse_args(argv)

    platform = Platform(args.inventory)
    host = args.host or platform.api_hosts()[0]
    if host not in platform.api_hosts():
        parser.error(f"--host {host}: not an api host of {args.inventory} {platform.api_hosts()}")
    print(f"{platform.url}: {args.clients} clients, >= {args.requests} requests per case")
    print(
        f"{'case':8} {'requests':>8} {'failed':>6} {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} "
        f"{'req/s':>6}  fault"
    )
    results = []
    for case in args.case:
        r = run_case(platform, case, args.requests, args.clients, host, args.bundle)
        results.append(r)
        print(
            f"{case:8} {r['requests']:8} {r['failed']:6} {r['p50_ms']:7.0f} {r['p99_ms']:8.0f} "
            f"{r['max_ms']:8.0f} {r['req_per_s']:6.1f}  {'; '.join(r['fault'])}"
            + (f"  errors: {r['errors']}" if r["errors"] else ""),
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    broken = any("FAULT ACTION FAILED" in line for r in results for line in r["fault"])
    if args.check and (broken or any(r["failed"] for r in results)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
