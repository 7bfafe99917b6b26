"""The web app with Flask's test client: login, sessions, CSRF, rate limiting, error pages.

Flows that need OCR results run against the real API in test_web_api.py. Here the API is
either absent (nothing listens on its port) or a small real HTTP server that never answers
in time -- the 'API down' and 'API slow' cases.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import free_port
from llmops_ocr import db
from llmops_ocr.db import store
from llmops_ocr.web.app import create_app
from PIL import Image
from sqlalchemy import URL, update
from webutil import ADMIN_PASSWORD, csrf_of, login, make_web


def png_bytes(w: int = 120, h: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 255).save(buf, "PNG")
    return buf.getvalue()


def upload(client, data: bytes, name: str = "a.png", csrf: str | None = None):  # type: ignore[no-untyped-def]
    if csrf is None:
        csrf = csrf_of(client.get("/upload").text)
    return client.post(
        "/upload",
        data={"file": (io.BytesIO(data), name), "mode": "page", "csrf_token": csrf},
        content_type="multipart/form-data",
    )


@pytest.fixture
def web(tmp_path: Path, sqlite_url: URL):  # type: ignore[no-untyped-def]
    return make_web(tmp_path, sqlite_url, api_url=f"http://127.0.0.1:{free_port()}")


def test_pages_need_login(web) -> None:  # type: ignore[no-untyped-def]
    c = web.client()
    for path in ("/upload", "/history", "/results/1", "/results/1/image"):
        r = c.get(path)
        assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")


def test_login_logout_and_cookie_flags(web) -> None:  # type: ignore[no-untyped-def]
    c = web.client()
    bad = login(c, password="wrong")
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text
    r = login(c)
    assert r.status_code == 302 and r.headers["Location"] == "/upload"
    cookie = r.headers["Set-Cookie"]
    assert "llmops_session=" in cookie
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = c.get("/upload")
    assert page.status_code == 200 and "admin" in page.text and 'type="file"' in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    stolen = c.get_cookie("llmops_session", domain="localhost")
    assert stolen is not None
    out = c.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 302 and out.headers["Location"] == "/login"
    assert c.get("/upload").status_code == 302
    # The cookie from before the logout is dead on the server side too.
    c2 = web.client()
    c2.set_cookie("llmops_session", stolen.value, domain="localhost")
    assert c2.get("/upload").status_code == 302


def test_login_next_only_to_this_site(web) -> None:  # type: ignore[no-untyped-def]
    c = web.client()
    page = c.get("/login?next=/history")
    r = c.post(
        "/login",
        data={
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "csrf_token": csrf_of(page.text),
            "next": "/history",
        },
    )
    assert r.headers["Location"] == "/history"
    c = web.client()
    page = c.get("/login")
    r = c.post(
        "/login",
        data={
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "csrf_token": csrf_of(page.text),
            "next": "//evil.example/",
        },
    )
    assert r.headers["Location"] == "/upload"


def test_every_form_needs_the_csrf_token(web) -> None:  # type: ignore[no-untyped-def]
    c = web.client()
    r = c.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 400 and "Form expired" in r.text
    assert login(c).status_code == 302
    r = c.post("/logout", data={"csrf_token": "forged"})
    assert r.status_code == 400
    assert c.get("/upload").status_code == 200  # still logged in
    r = upload(c, png_bytes(), csrf="forged")
    assert r.status_code == 400 and "Form expired" in r.text


def test_login_rate_limit_per_user(web) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(db.make_sessionmaker(web.app.extensions["llmops"]["engine"])) as s:
        store.create_user(s, "bob", "bob-password")
    c = web.client()
    for _ in range(5):
        assert login(c, password="guess").status_code == 401
    r = login(c)  # even the right password is refused now
    assert r.status_code == 429 and "Too many failed logins" in r.text
    assert 0 < int(r.headers["Retry-After"]) <= 15 * 60
    assert c.get("/upload").status_code == 302
    # Another account from the same address is not locked by admin's failures.
    assert login(web.client(), "bob", "bob-password").status_code == 302


def test_api_down_gives_a_clear_error_page(web) -> None:  # type: ignore[no-untyped-def]
    c = web.client()
    login(c)
    r = upload(c, png_bytes())
    assert r.status_code == 502
    assert "The OCR service is unreachable" in r.text
    assert c.get("/history").status_code == 200
    assert "Nothing yet" in c.get("/history").text


class _HangingApi(http.server.ThreadingHTTPServer):
    """Accepts the upload and then does not answer until released."""

    daemon_threads = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.seen.set()
                outer.release.wait(30)
                body = b'{"detail": "too late"}'
                self.send_response(503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def hanging_api() -> Iterator[_HangingApi]:
    srv = _HangingApi()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_api_too_slow_times_out_with_a_clear_page(
    tmp_path: Path, sqlite_url: URL, hanging_api: _HangingApi
) -> None:
    port = hanging_api.server_address[1]
    web = make_web(tmp_path, sqlite_url, api_url=f"http://127.0.0.1:{port}", timeout_s=1.0)
    c = web.client()
    login(c)
    started = time.monotonic()
    r = upload(c, png_bytes())
    took = time.monotonic() - started
    assert hanging_api.seen.is_set()  # the request did reach the API
    assert r.status_code == 504
    assert "The OCR service is too slow" in r.text and "within 1 seconds" in r.text
    assert took < 10  # the worker was not held hostage by the API


def test_bad_uploads_are_refused_before_the_api(tmp_path: Path, sqlite_url: URL) -> None:
    web = make_web(tmp_path, sqlite_url, max_upload_bytes=20_000)
    c = web.client()
    login(c)
    r = upload(c, b"just some text, not a picture", name="notes.txt")
    assert r.status_code == 415 and "not an image" in r.text
    r = upload(c, os.urandom(30_000), name="big.png")
    assert r.status_code == 413 and "larger than the limit" in r.text
    csrf = csrf_of(c.get("/upload").text)
    r = c.post("/upload", data={"csrf_token": csrf}, content_type="multipart/form-data")
    assert r.status_code == 400 and "Choose an image file" in r.text
    r = upload(c, os.urandom(200_000), name="huge.png")  # beyond the request body limit
    assert r.status_code == 413 and "Image too large" in r.text


def test_healthz_and_metrics(web) -> None:  # type: ignore[no-untyped-def]
    c = web.client()
    h = c.get("/healthz")
    assert h.status_code == 200 and h.json == {"status": "ok", "database": "ok"}
    login(c, password="nope")
    m = c.get("/metrics")
    assert m.status_code == 200
    assert re.search(
        r'llmops_web_requests_total\{method="POST",route="/login",status="401"\} [1-9]', m.text
    )
    assert "llmops_web_request_duration_seconds_bucket" in m.text
    assert re.search(r'llmops_web_logins_total\{result="failed"\} [1-9]', m.text)


def test_database_down(tmp_path: Path) -> None:
    """A PostgreSQL that does not answer: health says so, pages say so, nothing hangs."""
    url = URL.create(
        "postgresql+psycopg",
        username="llmops",
        password="x",
        host="127.0.0.1",
        port=free_port(),
        database="llmops",
    )
    web = make_web(tmp_path, url, migrate=False)
    c = web.client()
    h = c.get("/healthz")
    assert h.status_code == 503 and h.json["database"] == "unreachable"
    assert c.get("/login").status_code == 200  # the form itself needs no database
    r = login(c)
    assert r.status_code == 503 and "cannot reach its database" in r.text


def test_login_works_on_postgresql(tmp_path: Path, pg_url: URL) -> None:
    web = make_web(tmp_path, pg_url)
    c = web.client()
    assert login(c, password="wrong").status_code == 401
    assert login(c).status_code == 302
    assert c.get("/history").status_code == 200


def test_admin_cli(
    tmp_path: Path,
    sqlite_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llmops_ocr.web import admin

    web = make_web(tmp_path, sqlite_url, migrate=False)
    env = {"LLMOPS_CONFIG": str(web.config_path), "CREDENTIALS_DIRECTORY": str(web.credentials)}
    # As the deploy role runs it: a fresh process, migrating first.
    r = subprocess.run(
        [sys.executable, "-m", "llmops_ocr.web.admin", "ensure-admin", "--migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "created", r.stderr
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        rc = admin.main(list(args))
        out, err = capsys.readouterr()
        return rc, out, err

    assert run("ensure-admin") == (0, "unchanged\n", "")
    assert run("create-user", "carol", stdin="carol-password\n")[0] == 0
    rc, _, err = run("create-user", "carol", stdin="carol-password\n")
    assert rc == 1 and "exists already" in err
    rc, _, err = run("create-user", "dan", stdin="short\n")
    assert rc == 2 and "at least 8 characters" in err
    assert login(web.client()).status_code == 302
    assert login(web.client(), "carol", "carol-password").status_code == 302
    assert run("set-password", "carol", stdin="new-carol-password\n")[0] == 0
    assert login(web.client(), "carol", "new-carol-password").status_code == 302
    rc, _, err = run("set-password", "nobody", stdin="whatever-password\n")
    assert rc == 1 and "no user named 'nobody'" in err
    (web.credentials / "admin-password").unlink()
    rc, _, err = run("ensure-admin")
    assert rc == 2 and "credential 'admin-password' not found" in err


def test_expired_session_needs_a_new_login(web) -> None:  # type: ignore[no-untyped-def]
    c = web.client()
    assert login(c).status_code == 302
    assert c.get("/upload").status_code == 200
    engine = web.app.extensions["llmops"]["engine"]
    with engine.begin() as conn:  # the session's lifetime has passed
        conn.execute(
            update(db.WebSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    r = c.get("/upload")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")


def test_login_rate_limit_per_client_address(web) -> None:  # type: ignore[no-untyped-def]
    """Guessing across many user names from one address is stopped too; the address is the
    client's as the load balancer reports it (X-Forwarded-For)."""
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    c = web.client()
    csrf = csrf_of(c.get("/login").text)
    for i in range(20):
        r = c.post(
            "/login",
            data={"username": f"user{i}", "password": "guess", "csrf_token": csrf},
            headers=attacker,
        )
        assert r.status_code == 401
    r = c.post(
        "/login",
        data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf},
        headers=attacker,
    )
    assert r.status_code == 429
    other = web.client()
    assert login(other).status_code == 302  # someone else, elsewhere, is not locked out


def test_short_session_key_is_refused(tmp_path: Path, sqlite_url: URL) -> None:
    from llmops_ocr.config import ConfigError

    web = make_web(tmp_path, sqlite_url, migrate=False)
    (web.credentials / "session-key").write_text("short\n")
    cfg = json.loads(web.config_path.read_text())
    with pytest.raises(ConfigError, match="'session-key' is too short"):
        create_app(cfg, credentials_dir=web.credentials)
