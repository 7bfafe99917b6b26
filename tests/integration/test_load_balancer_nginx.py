"""The load_balancer role's nginx config, run for real on this machine's loopback.

Ansible runs the role's own TLS and configure steps (tests/integration/lb/render.yml, connection
local) into a temp dir; then the real nginx serves that config in front of small HTTP backends on
127.0.1.x, and real clients (httpx, openssl s_client) check what a user of the platform notices:
TLS profile, redirects, routing, request ids, the JSON access log, retries when a backend is down
or answers 503, the body size limit and draining a host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "integration" / "lb"
HTTP_PORT, HTTPS_PORT, STATUS_PORT = 28080, 28443, 28089
API_PORT, WEB_PORT = 28000, 28001
BACKENDS = {"test-api1": ("127.0.1.1", API_PORT), "test-api2": ("127.0.1.2", API_PORT)}
BACKENDS["test-web"] = ("127.0.1.3", WEB_PORT)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="nginx as configured runs workers as www-data"),
    pytest.mark.skipif(shutil.which("nginx") is None, reason="Debian package nginx-light missing"),
]


class Backend:
    """An HTTP server that answers with what it received, or with a chosen status."""

    def __init__(self, name: str, address: str, port: int) -> None:
        self.name, self.address, self.port = name, address, port
        self.status = 200
        self.seen: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                if backend.server is None:
                    # Stopped: a keepalive connection nginx still holds is closed unanswered,
                    # as when the process dies.
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"path": self.path, "method": self.command, "body_len": len(body)}
                seen["headers"] = {k.lower(): v for k, v in self.headers.items()}
                backend.seen.append(seen)
                payload = json.dumps({"backend": backend.name, **seen}).encode()
                self.send_response(backend.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.address, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _wait_port(host: str, port: int, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port} after {deadline_s}s")


def _render(out: Path, **extra: Any) -> subprocess.CompletedProcess[str]:
    """Run the role's TLS and configure tasks (connection local) with paths under `out`."""
    extra_vars = {
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
        "load_balancer_status_port": STATUS_PORT,
        "load_balancer_api_port": API_PORT,
        "load_balancer_web_port": WEB_PORT,
        "llmops_config": {"port": HTTP_PORT, "tls": {"port": HTTPS_PORT}},
        **extra,
    }
    (out / "log").mkdir(parents=True, exist_ok=True)
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(HARNESS / "inventory.yml")]
    cmd += [str(HARNESS / "render.yml"), "-e", json.dumps(extra_vars)]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("lb")
    _render(out)
    backends = {name: Backend(name, *addr) for name, addr in BACKENDS.items()}
    for b in backends.values():
        b.start()
    conf = out / "nginx.conf"
    nginx = subprocess.Popen(
        ["nginx", "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_port("127.0.0.1", HTTPS_PORT)
        ctx = ssl.create_default_context(cafile=str(out / "secrets" / "tls-ca.crt"))
        with httpx.Client(
            base_url=f"https://localhost:{HTTPS_PORT}", verify=ctx, timeout=10
        ) as client:
            yield {"out": out, "conf": conf, "backends": backends, "client": client, "nginx": nginx}
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        for b in backends.values():
            b.stop()


def _reset(lb: dict[str, Any]) -> None:
    for b in lb["backends"].values():
        b.status = 200
        b.seen.clear()
        if b.server is None:
            b.start()


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{HTTPS_PORT}", *args]
    return subprocess.run(cmd, input="", capture_output=True, text=True, timeout=20)


def test_only_tls12_and_tls13_are_offered(lb: dict[str, Any]) -> None:
    assert _openssl("-tls1_2").returncode == 0
    assert _openssl("-tls1_3").returncode == 0
    for old in ("-tls1", "-tls1_1"):
        assert _openssl(old).returncode != 0, f"{old} handshake must fail"


def test_weak_ciphers_are_refused(lb: dict[str, Any]) -> None:
    # CBC with SHA-1 and static RSA key exchange are not in the Mozilla intermediate list.
    for cipher in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"):
        assert _openssl("-tls1_2", "-cipher", cipher).returncode != 0, cipher
    ok = _openssl("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert ok.returncode == 0, ok.stdout[-2000:]


def test_http_redirects_to_https(lb: dict[str, Any]) -> None:
    r = httpx.get(f"http://127.0.0.1:{HTTP_PORT}/upload?x=1", follow_redirects=False)
    assert r.status_code == 301
    assert r.headers["location"] == f"https://127.0.0.1:{HTTPS_PORT}/upload?x=1"


def test_routes_api_and_web_with_request_id_and_hsts(lb: dict[str, Any]) -> None:
    _reset(lb)
    r = lb["client"].get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["backend"] in ("test-api1", "test-api2")
    assert body["path"] == "/v1/models"
    assert body["headers"]["x-forwarded-proto"] == "https"
    request_id = r.headers["x-request-id"]
    assert len(request_id) == 32
    assert body["headers"]["x-request-id"] == request_id
    assert r.headers["strict-transport-security"].startswith("max-age=")

    page = lb["client"].get("/history")
    assert page.json()["backend"] == "test-web"
    assert lb["client"].get("/metrics").status_code == 404


def test_access_log_is_json_with_request_id(lb: dict[str, Any]) -> None:
    _reset(lb)
    r = lb["client"].get("/v1/models", headers={"User-Agent": 'tricky "agent"'})
    log = lb["out"] / "log" / "llmops-access.log"
    deadline = time.monotonic() + 5
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        if any(e["request_id"] == r.headers["x-request-id"] for e in entries):
            break
        time.sleep(0.05)
    entry = next(e for e in entries if e["request_id"] == r.headers["x-request-id"])
    assert entry["status"] == 200
    assert entry["uri"] == "/v1/models"
    assert entry["user_agent"] == 'tricky "agent"'
    assert entry["tls"] in ("TLSv1.2", "TLSv1.3")


def test_ocr_post_is_retried_when_an_api_host_answers_503(lb: dict[str, Any]) -> None:
    _reset(lb)
    lb["backends"]["test-api1"].status = 503
    answers = [lb["client"].post("/v1/ocr", content=b"img") for _ in range(10)]
    assert [r.status_code for r in answers] == [200] * 10
    # api1 was tried (until max_fails marks it down) and its 503 never reached the client.
    # Runs before the tests that stop api1, while nginx still counts it as live.
    assert lb["backends"]["test-api1"].seen


def test_ocr_post_survives_a_stopped_api_host(lb: dict[str, Any]) -> None:
    _reset(lb)
    lb["backends"]["test-api1"].stop()
    answers = [
        lb["client"].post("/v1/ocr", files={"file": ("a.png", b"x" * 1000)}) for _ in range(20)
    ]
    assert [r.status_code for r in answers] == [200] * 20
    assert {r.json()["backend"] for r in answers} == {"test-api2"}


def test_web_post_is_not_repeated_on_another_host(lb: dict[str, Any]) -> None:
    _reset(lb)
    lb["backends"]["test-web"].status = 502
    r = lb["client"].post("/login", content=b"user=a")
    assert r.status_code == 502
    assert len(lb["backends"]["test-web"].seen) == 1


def test_body_over_client_max_body_size_is_refused(lb: dict[str, Any]) -> None:
    _reset(lb)
    r = lb["client"].post("/v1/ocr", content=b"x" * (12 * 1024 * 1024))
    assert r.status_code == 413
    assert not lb["backends"]["test-api1"].seen and not lb["backends"]["test-api2"].seen


def test_stub_status_on_localhost(lb: dict[str, Any]) -> None:
    r = httpx.get(f"http://127.0.0.1:{STATUS_PORT}/stub_status")
    assert r.status_code == 200
    assert r.text.startswith("Active connections:")
    env = (lb["out"] / "exporter.env").read_text()
    assert f"-nginx.scrape-uri=http://127.0.0.1:{STATUS_PORT}/stub_status" in env


def test_drained_host_gets_no_requests_after_reload(lb: dict[str, Any]) -> None:
    _reset(lb)
    second = _render(lb["out"], load_balancer_drain=["test-api1"])
    # The certificates already existed: only the config changed.
    assert "changed=1 " in second.stdout, second.stdout[-3000:]
    assert "down;  # test-api1" in lb["conf"].read_text()
    subprocess.run(["nginx", "-c", str(lb["conf"]), "-s", "reload"], check=True)
    # Old workers close idle keepalive connections on reload: new requests use new connections.
    ctx = ssl.create_default_context(cafile=str(lb["out"] / "secrets" / "tls-ca.crt"))
    deadline = time.monotonic() + 10
    while True:
        lb["backends"]["test-api1"].seen.clear()
        with httpx.Client(base_url=f"https://localhost:{HTTPS_PORT}", verify=ctx) as client:
            statuses = [client.get("/v1/models").status_code for _ in range(10)]
        assert statuses == [200] * 10
        if not lb["backends"]["test-api1"].seen or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # the reload has not reached every worker yet
    assert not lb["backends"]["test-api1"].seen
