"""`llmops-provision test` probes against real servers on loopback: the real OCR web app (Flask,
SQLite) for the login round trip, and small http.server/TLS servers for the failure paths."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops_provision import checks, cli

Route = tuple[int, dict[str, str], bytes]


class StubServer:
    """A threaded HTTP(S) server on a loopback address answering fixed routes."""

    def __init__(
        self,
        address: str,
        routes: dict[tuple[str, str], Route | Callable[[BaseHTTPRequestHandler], Route]],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.requests.append((method, self.path, dict(self.headers)))
                route = routes.get((method, self.path.split("?")[0]), (404, {}, b"not found"))
                status, headers, body = route(self) if callable(route) else route
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.address = address
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stubs() -> Iterator[Callable[..., StubServer]]:
    started: list[StubServer] = []

    def make(*args: Any, **kw: Any) -> StubServer:
        s = StubServer(*args, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.close()


def closed_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def local(name: str, address: str = "127.0.0.1") -> checks.HostAccess:
    return checks.HostAccess(name=name, address=address, local=True)


def run(service: checks.Service) -> dict[str, checks.CheckResult]:
    results = checks.run_checks([service], via="direct", timeout=5)
    return {r.check: r for r in results}


def secrets_dir(tmp_path: Path, **values: str) -> Path:
    d = tmp_path / "secrets"
    d.mkdir(exist_ok=True)
    for name, value in values.items():
        (d / name.replace("_", "-")).write_text(value + "\n")
    return d


# --- the real web app -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """The OCR web app on 127.0.0.1 (werkzeug, SQLite, migrated, user admin): (port, password)."""
    from llmops_ocr import db
    from llmops_ocr.db import store
    from llmops_ocr.web.app import create_app
    from werkzeug.serving import make_server

    tmp = tmp_path_factory.mktemp("web")
    password = "pw-" + secrets.token_hex(6)
    creds = tmp / "creds"
    creds.mkdir()
    (creds / "session-key").write_text(secrets.token_hex(32))
    (creds / "api-token").write_text("unused-token")
    url = f"sqlite:///{tmp / 'web.sqlite3'}"
    db.migrate(url)
    engine = db.make_engine(url)
    with db.session_scope(db.make_sessionmaker(engine)) as session:
        store.ensure_admin(session, password)
    engine.dispose()
    cfg = {
        "server_type": "web",
        "port": 8080,
        "environment": {},
        "dependencies": [],
        "workers": 1,
        "api_url": f"http://127.0.0.1:{closed_port()}",
        "api_timeout_s": 5,
        "session_lifetime_minutes": 60,
        "debug": False,
        "max_upload_bytes": 1_000_000,
        "database": {"engine": "sqlite", "path": str(tmp / "web.sqlite3")},
    }
    server = make_server("127.0.0.1", 0, create_app(cfg, credentials_dir=creds), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield int(server.server_port), password
    server.shutdown()


def test_web_probes_pass_against_the_real_web_app(web_app: tuple[int, str], tmp_path: Path) -> None:
    port, password = web_app
    service = checks.Service(
        "web", local("web1"), {"port": port}, secrets_dir(tmp_path, admin_password=password)
    )
    results = run(service)
    assert set(results) == {"web healthz", "web metrics", "web login page", "web login round trip"}
    assert all(r.ok for r in results.values()), [checks.format_line(r) for r in results.values()]
    assert "logged in as admin" in results["web login round trip"].detail
    line = checks.format_line(results["web healthz"])
    assert line.startswith("ok ") and "web1" in line and "HTTP 200" in line


def test_web_login_with_a_wrong_password_fails(web_app: tuple[int, str], tmp_path: Path) -> None:
    port, _ = web_app
    service = checks.Service(
        "web", local("web1"), {"port": port}, secrets_dir(tmp_path, admin_password="wrong")
    )
    results = run(service)
    login = results["web login round trip"]
    assert not login.ok
    assert "HTTP 401" in login.detail and "wrong admin password" in login.detail
    assert results["web healthz"].ok
    assert checks.exit_code(list(results.values())) == 1
    assert checks.format_line(login).startswith("FAIL")


def test_missing_credential_names_the_file(web_app: tuple[int, str], tmp_path: Path) -> None:
    port, _ = web_app
    service = checks.Service("web", local("web1"), {"port": port}, secrets_dir(tmp_path))
    login = run(service)["web login round trip"]
    assert not login.ok
    assert str(tmp_path / "secrets" / "admin-password") in login.detail
    assert "apply" in login.detail


# --- failure paths with small servers -------------------------------------------------------


def test_api_not_ready_and_wrong_ocr_text_fail(
    stubs: Callable[..., StubServer], tmp_path: Path
) -> None:
    def ocr(handler: BaseHTTPRequestHandler) -> Route:
        if handler.headers.get("Authorization") != "Bearer tok":
            return 401, {}, b'{"detail": "bad token"}'
        if not handler.headers.get("Content-Type", "").startswith("multipart/form-data"):
            return 415, {}, b"{}"
        body = {"model": {"name": "crnn-ocr", "version": "1.0.0"}, "text": "Provisioned bv"}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    api = stubs(
        "127.0.0.1",
        {
            ("GET", "/healthz"): (200, {}, b'{"status":"ok"}'),
            ("GET", "/readyz"): (503, {}, b'{"detail":"not ready"}'),
            ("GET", "/metrics"): (200, {}, b"# metrics"),
            ("POST", "/v1/ocr"): ocr,
        },
    )
    service = checks.Service(
        "api", local("api1"), {"port": api.port}, secrets_dir(tmp_path, api_token="tok")
    )
    results = run(service)
    assert results["api healthz"].ok
    ready = results["api readyz (model loaded)"]
    assert not ready.ok and "HTTP 503" in ready.detail and "not ready" in ready.detail
    text = results["api ocr request"]
    assert not text.ok
    assert "'Provisioned bv'" in text.detail and repr(checks.OCR_TEXT) in text.detail
    assert ("POST", "/v1/ocr?mode=line") in [(m, p) for m, p, _ in api.requests]

    (tmp_path / "secrets" / "api-token").write_text("other")
    denied = run(service)["api ocr request"]
    assert not denied.ok and "HTTP 401" in denied.detail


def test_stopped_service_is_connection_refused(tmp_path: Path) -> None:
    service = checks.Service(
        "api", local("api1"), {"port": closed_port()}, secrets_dir(tmp_path, api_token="t")
    )
    results = run(service)
    assert len(results) == 4
    assert not any(r.ok for r in results.values())
    assert all("connection refused" in r.detail for r in results.values())


def test_postgresql_port_closed_fails_fast(tmp_path: Path) -> None:
    service = checks.Service(
        "db",
        local("db1"),
        {"engine": "postgresql", "port": closed_port(), "name": "llmops", "user": "llmops"},
        secrets_dir(tmp_path, db_password="pw"),
    )
    results = checks.run_checks([service], via="direct", timeout=3)
    by_name = {r.check: r for r in results}
    assert not by_name["postgresql port open"].ok
    assert not by_name["postgresql select 1"].ok
    assert "refused" in by_name["postgresql select 1"].detail.lower()
    assert all(r.elapsed_ms < 3000 for r in results)


def test_sqlite_file_probe_on_a_local_host(tmp_path: Path) -> None:
    path = tmp_path / "llmops.sqlite3"
    service = checks.Service(
        "db", local("db1"), {"engine": "sqlite", "sqlite": {"path": str(path)}}, tmp_path
    )
    assert not run(service)["sqlite file"].ok
    path.write_bytes(b"")
    assert run(service)["sqlite file"].ok


def _tls_files(tmp_path: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA (its cert written to ``<name>-ca.crt``) and a server context for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lb1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path = tmp_path / f"{name}-ca.crt"
    ca_path.write_bytes(ca.public_bytes(pem))
    chain = tmp_path / f"{name}-server.pem"
    chain.write_bytes(
        cert.public_bytes(pem)
        + key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain)
    return ca_path, ctx


def test_lb_https_is_checked_against_the_inventory_ca(
    stubs: Callable[..., StubServer], tmp_path: Path
) -> None:
    ca, server_ctx = _tls_files(tmp_path, "lab")
    other_ca, _ = _tls_files(tmp_path, "other")
    https = stubs(
        "127.0.0.1",
        {
            ("GET", "/healthz"): (200, {}, b'{"status":"ok"}'),
            ("GET", "/v1/models"): (200, {}, b'{"default": {"version": "1.0.0"}}'),
        },
        tls=server_ctx,
    )
    http = stubs(
        "127.0.0.1", {("GET", "/"): (301, {"Location": f"https://127.0.0.1:{https.port}/"}, b"")}
    )
    config = {
        "port": http.port,
        "tls": {"port": https.port, "mode": "self_signed", "redirect_http": True},
    }
    sdir = secrets_dir(tmp_path, api_token="tok")
    (sdir / "tls-ca.crt").write_bytes(ca.read_bytes())
    results = run(checks.Service("lb", local("lb1"), config, sdir))
    assert results["lb http"].ok and "-> https://" in results["lb http"].detail
    assert results["lb https"].ok, results["lb https"].detail
    assert results["lb https api route"].ok, results["lb https api route"].detail

    (sdir / "tls-ca.crt").write_bytes(other_ca.read_bytes())
    untrusted = run(checks.Service("lb", local("lb1"), config, sdir))
    assert not untrusted["lb https"].ok
    assert "certificate not trusted" in untrusted["lb https"].detail


def test_lb_redirect_to_plain_http_fails(stubs: Callable[..., StubServer], tmp_path: Path) -> None:
    http = stubs("127.0.0.1", {("GET", "/"): (301, {"Location": "http://example.test/"}, b"")})
    config = {"port": http.port, "tls": {"port": closed_port(), "mode": "self_signed"}}
    config["tls"]["redirect_http"] = True
    results = run(checks.Service("lb", local("lb1"), config, secrets_dir(tmp_path)))
    assert not results["lb http"].ok
    assert "does not lead to https" in results["lb http"].detail
    assert "tls-ca.crt is missing" in results["lb https"].detail


def test_prometheus_target_down_is_named(stubs: Callable[..., StubServer], tmp_path: Path) -> None:
    targets = {
        "status": "success",
        "data": {
            "activeTargets": [
                {"labels": {"job": "node", "instance": "api1:9100"}, "health": "up"},
                {
                    "labels": {"job": "api", "instance": "api2:8000"},
                    "health": "down",
                    "lastError": "connection refused",
                },
            ]
        },
    }
    prom = stubs(
        "127.0.0.1",
        {
            ("GET", "/-/ready"): (200, {}, b"Prometheus Server is Ready."),
            ("GET", "/api/v1/targets"): (200, {}, json.dumps(targets).encode()),
        },
    )
    am = stubs("127.0.0.1", {("GET", "/-/ready"): (200, {}, b"OK")})
    config = {"port": prom.port, "alertmanager_port": am.port, "journal_remote_port": prom.port}
    results = run(checks.Service("monitoring", local("mon1"), config, tmp_path))
    assert results["prometheus ready"].ok and results["alertmanager ready"].ok
    up = results["prometheus targets up"]
    assert not up.ok
    assert "1 of 2 targets not up" in up.detail
    assert "api/api2:8000 down (connection refused)" in up.detail


# --- the CLI --------------------------------------------------------------------------------


def _inventory(tmp_path: Path, web_port: int, api_port: int) -> Path:
    db = {"engine": "postgresql", "host": "127.0.0.1", "port": 5432, "name": "llmops"}
    db["user"] = "llmops"
    inv = {
        "all": {
            "vars": {"llmops_environment": "dev", "ansible_connection": "local"},
            "children": {
                "lb": {"hosts": {"lb1": {"ansible_host": "127.0.0.3"}}},
                "web": {
                    "hosts": {"web1": {"ansible_host": "127.0.0.1"}},
                    "vars": {
                        "llmops_config": {
                            "port": web_port,
                            "api_url": "https://127.0.0.3",
                            "database": db,
                        }
                    },
                },
                "api": {
                    "hosts": {"api1": {"ansible_host": "127.0.0.2"}},
                    "vars": {"llmops_config": {"port": api_port, "database": db}},
                },
                "db": {
                    "hosts": {"db1": {"ansible_host": "127.0.0.1"}},
                    "vars": {"llmops_config": {"engine": "postgresql"}},
                },
                "monitoring": {"hosts": {"mon1": {"ansible_host": "127.0.0.4"}}},
            },
        }
    }
    path = tmp_path / "loop.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


def test_cli_test_exit_codes_and_formats(
    web_app: tuple[int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, password = web_app
    inv = _inventory(tmp_path, port, closed_port("127.0.0.2"))
    sdir = secrets_dir(tmp_path, admin_password=password, api_token="tok")
    common = ["--secrets-dir", str(sdir), "--timeout", "5"]

    assert cli.main(["test", str(inv), "--server-type", "web", *common]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all(line.startswith("ok ") for line in out[:4])
    assert out[-1].startswith("4 checks on 1 services") and out[-1].endswith("all passed")

    argv = ["test", str(inv), "--server-type", "api", "--server-type", "web", "--format", "json"]
    assert cli.main([*argv, *common]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["inventory"] == "loop"
    assert {r["check"] for r in report["results"]} >= {"api healthz", "api ocr request"}
    by_type = {t: [r for r in report["results"] if r["server_type"] == t] for t in ("web", "api")}
    assert all(r["ok"] for r in by_type["web"]) and not any(r["ok"] for r in by_type["api"])
    first = by_type["api"][0]
    assert set(first) == {"server_type", "host", "check", "ok", "detail", "elapsed_ms"}
    assert first["host"] == "api1" and "refused" in first["detail"]


def test_cli_test_refuses_an_invalid_inventory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "bad.yml"
    inv.write_text("all:\n  children:\n    web:\n      hosts:\n        w1: {}\n")
    assert cli.main(["test", str(inv)]) == 2
    err = capsys.readouterr().err
    assert "nothing was probed" in err
