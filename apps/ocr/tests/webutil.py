"""Helpers of the web app tests: a configured web app, logging in, reading forms."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from llmops_ocr import db
from llmops_ocr.db import store
from llmops_ocr.web.app import create_app
from sqlalchemy import URL

ADMIN_PASSWORD = "admin-pw-" + secrets.token_hex(4)


@dataclass
class WebSetup:
    app: Flask
    config_path: Path
    credentials: Path
    url: URL

    def client(self) -> FlaskClient:
        c = self.app.test_client()
        # As behind the TLS-terminating load balancer: Secure cookies travel.
        c.environ_base["wsgi.url_scheme"] = "https"
        return c


def database_section(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        return {"engine": "sqlite", "path": url.database}
    return {
        "engine": "postgresql",
        "host": url.host,
        "port": url.port,
        "name": url.database,
        "user": url.username,
    }


def make_web(
    tmp_path: Path,
    url: URL,
    *,
    api_url: str = "http://127.0.0.1:9",
    api_token: str = "test-token",
    timeout_s: float = 5,
    max_upload_bytes: int = 10 * 1024 * 1024,
    migrate: bool = True,
) -> WebSetup:
    """A migrated database with the admin user, credentials, a web config and the app."""
    creds = tmp_path / "web-credentials"
    creds.mkdir(exist_ok=True)
    (creds / "session-key").write_text(secrets.token_hex(32) + "\n")
    (creds / "api-token").write_text(api_token + "\n")
    (creds / "admin-password").write_text(ADMIN_PASSWORD + "\n")
    if url.password:
        (creds / "db-password").write_text(url.password + "\n")
    cfg = {
        "server_type": "web",
        "port": 8080,
        "environment": {},
        "dependencies": [],
        "workers": 1,
        "api_url": api_url,
        "api_timeout_s": timeout_s,
        "session_lifetime_minutes": 60,
        "debug": False,
        "max_upload_bytes": max_upload_bytes,
        "database": database_section(url),
    }
    path = tmp_path / "web.json"
    path.write_text(json.dumps(cfg))
    if migrate:
        db.migrate(url)
        eng = db.make_engine(url)
        with db.session_scope(db.make_sessionmaker(eng)) as s:
            store.ensure_admin(s, ADMIN_PASSWORD)
        eng.dispose()
    app = create_app(cfg, credentials_dir=creds)
    return WebSetup(app, path, creds, url)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


def login(client: FlaskClient, username: str = "admin", password: str = ADMIN_PASSWORD) -> Any:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(page.text)},
    )
