"""The database layer on SQLite and on a real PostgreSQL 15 (see conftest.pg_cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from llmops_ocr import db
from llmops_ocr.db import store
from llmops_ocr.db.migrate import alembic_config
from sqlalchemy import URL, inspect, make_url, select

TABLES = {
    "users",
    "api_keys",
    "models",
    "model_versions",
    "requests",
    "deployments",
    "uploads",
    "web_sessions",
    "login_failures",
}


@pytest.fixture
def engine(db_url: URL):  # type: ignore[no-untyped-def]
    db.migrate(db_url)
    eng = db.make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine):  # type: ignore[no-untyped-def]
    return db.make_sessionmaker(engine)


def test_migrate_creates_schema_and_is_idempotent(db_url: URL) -> None:
    assert db.migrate(db_url) == db.head_revision()
    assert db.migrate(db_url) == db.head_revision()  # second run: nothing to do, no error
    eng = db.make_engine(db_url)
    try:
        assert set(inspect(eng).get_table_names()) >= TABLES
        with eng.connect() as conn:
            assert db.current_revision(conn) == db.head_revision()
    finally:
        eng.dispose()


def test_models_match_migrations(engine) -> None:  # type: ignore[no-untyped-def]
    """A model change without a migration shows up here as a diff."""
    with engine.connect() as conn:
        mc = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(mc, db.Base.metadata)
    assert diff == []


def test_downgrade_and_upgrade_again(db_url: URL) -> None:
    db.migrate(db_url)
    eng = db.make_engine(db_url)
    try:
        with eng.connect() as conn:
            cfg = alembic_config(db_url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
            conn.commit()
        assert not TABLES & set(inspect(eng).get_table_names())
    finally:
        eng.dispose()
    assert db.migrate(db_url) == db.head_revision()


def test_concurrent_migrations_from_several_processes(
    db_url: URL, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Three 'hosts' migrate the same empty database at once: all succeed, schema at head."""
    if db_url.get_backend_name() == "sqlite":
        database = {"engine": "sqlite", "path": db_url.database}
        creds = tmp_path
    else:
        database = request.getfixturevalue("pg_database_config")
        creds = request.getfixturevalue("pg_credentials")
    cfg = tmp_path / "api.json"
    cfg.write_text(json.dumps({"server_type": "api", "database": database}))
    env = {**os.environ, "LLMOPS_CONFIG": str(cfg), "CREDENTIALS_DIRECTORY": str(creds)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "llmops_ocr.db.migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert f"at revision {db.head_revision()}" in out
        assert "***" in out or db_url.get_backend_name() == "sqlite"  # password never printed
    eng = db.make_engine(db_url)
    try:
        assert set(inspect(eng).get_table_names()) >= TABLES
    finally:
        eng.dispose()


def test_users_and_authentication(sessions) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(sessions) as s:
        u = store.create_user(s, "alice", "correct horse")
        assert u.password_hash.startswith("scrypt$") and "correct horse" not in u.password_hash
    with db.session_scope(sessions) as s:
        assert store.authenticate(s, "alice", "correct horse") is not None
        assert store.authenticate(s, "alice", "wrong") is None
        assert store.authenticate(s, "bob", "correct horse") is None
        user = store.get_user(s, "alice")
        assert user is not None and user.last_login_at is not None
        user.disabled = True
    with db.session_scope(sessions) as s:
        assert store.authenticate(s, "alice", "correct horse") is None


def test_usernames_are_unique(sessions) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import IntegrityError

    with db.session_scope(sessions) as s:
        store.create_user(s, "carol", "pw1")
    with pytest.raises(IntegrityError), db.session_scope(sessions) as s:
        store.create_user(s, "carol", "pw2")


def test_ensure_admin_creates_once_and_keeps_password(sessions) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(sessions) as s:
        assert store.ensure_admin(s, "first") is True
    with db.session_scope(sessions) as s:
        assert store.ensure_admin(s, "second") is False
    with db.session_scope(sessions) as s:
        admin = store.authenticate(s, "admin", "first")
        assert admin is not None and admin.is_admin
        assert store.authenticate(s, "admin", "second") is None


def test_api_keys_are_stored_hashed_and_revocable(sessions) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(sessions) as s:
        owner = store.create_user(s, "dave", "pw")
        row, key = store.create_api_key(s, "batch-job", owner)
        key_id = row.id
        assert key.startswith("llmk_") and len(key) > 40
        assert row.key_hash != key and key not in row.key_hash
    with db.session_scope(sessions) as s:
        found = store.verify_api_key(s, key)
        assert found is not None and found.id == key_id and found.name == "batch-job"
        assert found.last_used_at is not None
        assert store.verify_api_key(s, key + "x") is None
        assert store.verify_api_key(s, "llmk_" + "A" * 43) is None
    with db.session_scope(sessions) as s:
        assert store.revoke_api_key(s, key_id) is True
        assert store.revoke_api_key(s, key_id) is False
    with db.session_scope(sessions) as s:
        assert store.verify_api_key(s, key) is None


def test_request_history(engine, sessions) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(sessions) as s:
        _, key = store.create_api_key(s, "k1")
        key_row = store.verify_api_key(s, key)
        assert key_row is not None
        key_id = key_row.id
    n = store.record_requests(
        engine,
        [
            {
                "client": "token",
                "status_code": 200,
                "model_name": "crnn-ocr",
                "model_version": "1.0.0",
                "mode": "page",
                "lines": 3,
                "elapsed_ms": 12.5,
            },
            {"client": "key:k1", "api_key_id": key_id, "status_code": 415, "error": "not an image"},
        ],
    )
    assert n == 2
    assert store.record_requests(engine, []) == 0
    with pytest.raises(ValueError, match="unknown request field"):
        store.record_requests(engine, [{"client": "x", "status_code": 200, "colour": "red"}])
    with db.session_scope(sessions) as s:
        rows = store.recent_requests(s)
        assert [r.status_code for r in rows] == [415, 200]  # newest first
        assert rows[1].lines == 3 and rows[1].elapsed_ms == 12.5 and rows[1].created_at
        assert rows[0].lines == 0 and rows[0].error == "not an image"
        mine = store.recent_requests(s, api_key_id=key_id)
        assert [r.client for r in mine] == ["key:k1"]


def test_models_deployments_and_uploads(sessions) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(sessions) as s:
        store.register_model_version(s, "crnn-ocr", "1.0.0", "a" * 64, metrics={"cer": 0.02})
        store.register_model_version(s, "crnn-ocr", "1.0.0", "b" * 64, metrics={"cer": 0.01})
        store.register_model_version(s, "crnn-ocr", "1.1.0", "c" * 64)
    with db.session_scope(sessions) as s:
        versions = s.scalars(select(db.ModelVersion).order_by(db.ModelVersion.version)).all()
        assert [(v.version, v.sha256[0]) for v in versions] == [("1.0.0", "b"), ("1.1.0", "c")]
        assert versions[0].metrics == {"cer": 0.01}
        store.record_deployment(
            s,
            inventory="lab",
            bundle_name="ocr",
            version="1.0.0",
            sha256="d" * 64,
            hosts=["lab-api1", "lab-api2"],
            result="ok",
        )
    with db.session_scope(sessions) as s:
        (dep,) = store.recent_deployments(s)
        assert dep.hosts == ["lab-api1", "lab-api2"] and dep.result == "ok"
        u1 = store.create_user(s, "erin", "pw")
        u2 = store.create_user(s, "frank", "pw")
        up = store.add_upload(
            s,
            u1,
            filename="a.png",
            content_type="image/png",
            image=b"\x89PNG...",
            width=10,
            height=5,
            text="hello",
            result={"lines": []},
            model_version="1.0.0",
        )
        up_id, u1_id, u2_id = up.id, u1.id, u2.id
    with db.session_scope(sessions) as s:
        assert [u.text for u in store.user_uploads(s, u1_id)] == ["hello"]
        assert store.user_uploads(s, u2_id) == []
        got = store.get_upload(s, up_id, u1_id)
        assert got is not None and got.image == b"\x89PNG..."
        assert store.get_upload(s, up_id, u2_id) is None  # not visible to another user


def test_url_from_config_sqlite(tmp_path: Path) -> None:
    url = db.url_from_config({"database": {"engine": "sqlite", "path": str(tmp_path / "x.db")}})
    assert url.get_backend_name() == "sqlite" and url.database == str(tmp_path / "x.db")
    # The section itself is accepted too.
    assert db.url_from_config({"engine": "sqlite", "path": "rel.db"}).database == str(
        Path("rel.db").absolute()
    )


def test_url_from_config_postgresql_reads_password_credential(
    pg_database_config: dict[str, object], pg_credentials: Path
) -> None:
    url = db.url_from_config({"server_type": "web", "database": pg_database_config}, pg_credentials)
    assert url.password and url.password not in str(url)  # str() masks it
    eng = db.make_engine(url)
    try:
        with eng.connect() as conn:
            assert (
                conn.exec_driver_sql("select current_user").scalar() == pg_database_config["user"]
            )
    finally:
        eng.dispose()


def test_url_from_config_escapes_password(tmp_path: Path) -> None:
    (tmp_path / "db-password").write_text("p@ss/w%rd:#?\n")
    url = db.url_from_config({"engine": "postgresql", "host": "db.internal"}, tmp_path)
    again = make_url(url.render_as_string(hide_password=False))
    assert again.password == "p@ss/w%rd:#?" and again.host == "db.internal"
    assert again.username == "llmops" and again.database == "llmops" and again.port == 5432


def test_url_from_config_rejects_unknown_engine() -> None:
    from llmops_ocr.config import ConfigError

    with pytest.raises(ConfigError, match="'mysql' is not supported"):
        db.url_from_config({"database": {"engine": "mysql"}})


def test_password_hash_rejects_garbage() -> None:
    h = db.hash_password("s3cret")
    assert db.verify_password("s3cret", h)
    assert db.hash_password("s3cret") != h  # salted
    assert not db.verify_password("s3cret", "md5$abc")
    assert not db.verify_password("s3cret", "scrypt$x$y")
    assert not db.verify_password("s3cret", h[:-4] + "AAAA")
