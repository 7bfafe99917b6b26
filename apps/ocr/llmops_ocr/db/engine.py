"""Database URLs from service configs, engines and sessions (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from llmops_ocr.config import ConfigError, read_credential

DEFAULT_SQLITE_PATH = "/var/lib/llmops/db/llmops.sqlite3"


def url_from_config(
    cfg: Mapping[str, Any], credentials_dir: str | os.PathLike[str] | None = None
) -> URL:
    """The SQLAlchemy URL of the ``database`` section of a service config.

    ``cfg`` is a whole service config (with a ``database`` key) or that section itself. For
    PostgreSQL the password is the credential ``db-password`` from ``credentials_dir`` (default
    ``$CREDENTIALS_DIRECTORY``); without it the connection uses no password (peer/trust auth).
    """
    section = cfg.get("database", cfg)
    if not isinstance(section, Mapping):
        raise ConfigError("database: must be an object with an 'engine' key")
    engine = section.get("engine", "sqlite")
    if engine == "sqlite":
        path = section.get("path", DEFAULT_SQLITE_PATH)
        if path == ":memory:":
            return URL.create("sqlite+pysqlite", database=":memory:")
        return URL.create("sqlite+pysqlite", database=str(Path(path).absolute()))
    if engine == "postgresql":
        password = read_credential("db-password", credentials_dir, required=False)
        return URL.create(
            "postgresql+psycopg",
            username=section.get("user", "llmops"),
            password=password,
            host=section.get("host", "localhost"),
            port=int(section.get("port", 5432)),
            database=section.get("name", "llmops"),
        )
    raise ConfigError(f"database.engine: {engine!r} is not supported; use 'sqlite' or 'postgresql'")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    # WAL lets the API's history writer and the web app's readers work at the same time.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine with sensible defaults: pre-ping, connect timeout, SQLite WAL and FKs on."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(u, **kwargs)
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    kwargs.setdefault("pool_pre_ping", True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", 5)
    return create_engine(u, connect_args=connect_args, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
