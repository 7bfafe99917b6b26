"""Alembic migrations shipped inside the package: ``migrate(url)`` upgrades to head.

Safe to run twice (Alembic skips applied revisions) and from several hosts at once: on
PostgreSQL a session advisory lock serialises upgrades; on SQLite an exclusive ``flock`` on
``<db>.migrate.lock`` does (SQLite DDL is not transactional in Alembic).
"""

from __future__ import annotations

import argparse
import fcntl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, make_url, text

from llmops_ocr.db.engine import make_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any fixed 64-bit number, the same on every host: "llmops" in ASCII.
ADVISORY_LOCK_ID = 0x6C6C6D6F7073


def alembic_config(url: str | URL) -> Config:
    """An Alembic Config pointing at the packaged migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    u = make_url(url)
    # '%' would be read as interpolation by configparser.
    cfg.set_main_option(
        "sqlalchemy.url", u.render_as_string(hide_password=False).replace("%", "%%")
    )
    return cfg


def head_revision() -> str:
    """The newest revision shipped in this package."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision a database is at (None for an empty database)."""
    return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate(url: str | URL, revision: str = "head") -> str | None:
    """Upgrade the database at ``url`` to ``revision``; returns the revision it is at after."""
    u = make_url(url)
    cfg = alembic_config(u)
    engine = make_engine(u)
    try:
        if u.get_backend_name() == "postgresql":
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_ID})
                conn.commit()
                try:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, revision)
                    conn.commit()
                    return current_revision(conn)
                finally:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_ID})
                    conn.commit()
        lock = (
            Path(u.database + ".migrate.lock") if u.database and u.database != ":memory:" else None
        )
        with _file_lock(lock) if lock else _nullcontext(), engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
            return current_revision(conn)
    finally:
        engine.dispose()


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield


def main(argv: list[str] | None = None) -> int:
    """``python -m llmops_ocr.db.migrate [--config FILE] [--type api|web]``: upgrade to head."""
    from llmops_ocr.config import ConfigError, load_config
    from llmops_ocr.db.engine import url_from_config

    ap = argparse.ArgumentParser(prog="python -m llmops_ocr.db.migrate", description=main.__doc__)
    ap.add_argument("--config", help="service config JSON (default $LLMOPS_CONFIG or /etc/llmops)")
    ap.add_argument("--type", default="api", choices=["api", "web"], help="service config type")
    ap.add_argument("--url", help="database URL instead of a config file")
    args = ap.parse_args(argv)
    try:
        url = (
            make_url(args.url) if args.url else url_from_config(load_config(args.type, args.config))
        )
        rev = migrate(url)
    except ConfigError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 2
    print(f"database {make_url(url).render_as_string(hide_password=True)} at revision {rev}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
