"""Failed client requests through the load_balancer role's nginx while an api backend goes away.

Runs on this machine (root; nginx-light installed): Ansible renders the role's TLS material and
nginx.conf (tests/integration/lb/render.yml), the real nginx serves it on loopback in front of two
api stand-in processes (each POST takes ~20 ms), and a client sends OCR-like POSTs over TLS on C
connections (at least N, and until the fault action has finished). After N/2 one backend is
(a) stopped gracefully (SIGTERM: in-flight requests finish), (b) killed with SIGKILL, or
(c) drained with the role's drain mechanism (re-rendered config with the host `down`, nginx
reload), restarted and put back.
Prints one line per case: requests, failures, throughput. Never asserts a number.

    .venv/bin/python bench/lb_failover.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "integration" / "lb"
HTTPS_PORT, API_PORT = 28443, 28000
APIS = {"test-api1": "127.0.1.1", "test-api2": "127.0.1.2"}

BACKEND = r"""
import signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(0.02)
        body = b'{"text": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST
    def log_message(self, *a):
        pass
srv = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
srv.daemon_threads = False
srv.block_on_close = True
def stop(*_):
    # Graceful, like gunicorn on SIGTERM: stop accepting, finish what is in flight, exit.
    threading.Thread(target=srv.shutdown).start()
signal.signal(signal.SIGTERM, stop)
srv.serve_forever()
srv.server_close()
"""


def render(out: Path, drain: list[str]) -> None:
    extra = {
        "load_balancer_manage_services": False,
        "load_balancer_secrets_dir": str(out / "secrets"),
        "load_balancer_conf_path": str(out / "nginx.conf"),
        "load_balancer_cert_path": str(out / "tls" / "server.crt"),
        "load_balancer_ca_path": str(out / "tls" / "ca.crt"),
        "load_balancer_key_path": str(out / "credstore" / "tls-key"),
        "load_balancer_dhparam_path": str(out / "tls" / "ffdhe2048.pem"),
        "load_balancer_log_dir": str(out / "log"),
        "load_balancer_pid_path": str(out / "nginx.pid"),
        "load_balancer_exporter_defaults_path": str(out / "exporter.env"),
        "load_balancer_status_port": 28089,
        "load_balancer_api_port": API_PORT,
        "load_balancer_web_port": 28001,
        "load_balancer_drain": drain,
        "llmops_config": {"port": 28080, "tls": {"port": HTTPS_PORT}},
    }
    (out / "log").mkdir(parents=True, exist_ok=True)
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(HARNESS / "inventory.yml")]
    cmd += [str(HARNESS / "render.yml"), "-e", json.dumps(extra)]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)


def wait_port(host: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port}")


def start_backend(address: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", BACKEND, address, str(API_PORT)])
    wait_port(address, API_PORT)
    return proc


def load(
    n: int, concurrency: int, ctx: ssl.SSLContext, at_half: Callable[[], None]
) -> tuple[int, int, float, dict[str, int]]:
    """Send POSTs until n are done and the action (started after n/2) has finished.

    Returns requests sent, failures, seconds, failure causes."""
    failures: dict[str, int] = {}
    lock = threading.Lock()
    sent = 0
    fired = threading.Event()

    def action() -> None:
        try:
            at_half()
        finally:
            fired.set()

    def worker() -> None:
        nonlocal sent
        with httpx.Client(
            base_url=f"https://localhost:{HTTPS_PORT}", verify=ctx, timeout=30
        ) as client:
            while True:
                with lock:
                    if sent >= n and fired.is_set():
                        return
                    sent += 1
                    if sent == n // 2:
                        threading.Thread(target=action).start()
                try:
                    r = client.post("/v1/ocr", content=b"x" * 2000)
                    cause = None if r.status_code == 200 else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    cause = type(exc).__name__
                if cause:
                    with lock:
                        failures[cause] = failures.get(cause, 0) + 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent, sum(failures.values()), time.monotonic() - started, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (nginx workers run as www-data)")
    out = Path(tempfile.mkdtemp(prefix="lb-failover-"))
    render(out, [])
    conf = out / "nginx.conf"
    ctx = ssl.create_default_context(cafile=str(out / "secrets" / "tls-ca.crt"))
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
    backends: dict[str, subprocess.Popen[bytes]] = {}
    try:
        wait_port("127.0.0.1", HTTPS_PORT)

        def restart_all() -> None:
            for host, addr in APIS.items():
                if host not in backends or backends[host].poll() is not None:
                    backends[host] = start_backend(addr)

        def stop_api1() -> None:
            backends["test-api1"].send_signal(signal.SIGTERM)

        def kill_api1() -> None:
            backends["test-api1"].send_signal(signal.SIGKILL)

        def drain_cycle() -> None:
            render(out, ["test-api1"])
            subprocess.run(["nginx", "-c", str(conf), "-s", "reload"], check=True)
            backends["test-api1"].send_signal(signal.SIGTERM)
            backends["test-api1"].wait()
            backends["test-api1"] = start_backend(APIS["test-api1"])
            render(out, [])
            subprocess.run(["nginx", "-c", str(conf), "-s", "reload"], check=True)

        cases = {
            "baseline (both up)": lambda: None,
            "(a) api1 stopped (SIGTERM)": stop_api1,
            "(b) api1 killed (SIGKILL)": kill_api1,
            "(c) api1 drained, restarted, restored": drain_cycle,
        }
        print(f"{'case':<42} {'requests':>8} {'failed':>6} {'req/s':>7}  causes")
        for name, action in cases.items():
            restart_all()
            time.sleep(11)  # let nginx forget earlier failures (fail_timeout 10 s)
            sent, failed, seconds, causes = load(args.requests, args.concurrency, ctx, action)
            print(f"{name:<42} {sent:>8} {failed:>6} {sent / seconds:>7.0f}  {causes or ''}")
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)
        for p in backends.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
