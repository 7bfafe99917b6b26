"""Deployment records on a platform host: ``python -m llmops_ocr.db.deployments record|last``.

The controller (``llmops-provision apply`` / ``rollout`` / ``status``) cannot reach the database
itself (the firewall admits only web and api hosts), so it runs this on an api or web host, with
that host's service config and ``db-password`` credential, and passes the record as JSON on
stdin (never on a command line).

``record`` reads one JSON object::

    {"inventory": "lab", "bundle_name": "ocr-1.0.1.tar.gz", "version": "1.0.1",
     "sha256": "...", "hosts": ["lab-api1", "lab-api2"], "result": "ok",
     "message": "free text or JSON", "started_at": "2026-12-04T22:00:00Z",
     "finished_at": "2026-12-04T22:03:00Z"}

and prints ``{"id": N}``. ``last [--inventory NAME] [--limit N]`` prints a JSON list of the newest
records, newest first. Exit 2: config, credential or input problem; 3: database unreachable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

REQUIRED = ("inventory", "bundle_name", "version", "sha256", "hosts", "result")


class RecordError(ValueError):
    """The record on stdin is not usable; the message says which field and why."""


def _time(value: Any, field: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise RecordError(f"{field}: expected an ISO 8601 time string, got {value!r}")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RecordError(f"{field}: {value!r} is not an ISO 8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_record(data: Any) -> dict[str, Any]:
    """Check a record from stdin; returns keyword arguments for ``store.record_deployment``."""
    if not isinstance(data, Mapping):
        raise RecordError("the record must be a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise RecordError(
            f"missing field(s) {', '.join(missing)} (required: {', '.join(REQUIRED)})"
        )
    hosts = data["hosts"]
    if isinstance(hosts, Mapping):
        hosts = list(hosts)
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise RecordError("hosts: expected a list of host names")
    out: dict[str, Any] = {k: str(data[k]) for k in REQUIRED if k != "hosts"}
    out["hosts"] = hosts
    message = data.get("message")
    if message is not None and not isinstance(message, str):
        message = json.dumps(message, sort_keys=True)
    out["message"] = message
    out["started_at"] = _time(data.get("started_at"), "started_at")
    out["finished_at"] = _time(data.get("finished_at"), "finished_at")
    return out


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite gives naive datetimes back; they were stored as UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_json(row: Any) -> dict[str, Any]:
    """One ``deployments`` row as a JSON-able dict."""
    return {
        "id": row.id,
        "inventory": row.inventory,
        "bundle_name": row.bundle_name,
        "version": row.version,
        "sha256": row.sha256,
        "hosts": list(row.hosts or []),
        "result": row.result,
        "message": row.message,
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m llmops_ocr.db.deployments record|last``: write or read deployment records."""
    from llmops_ocr.config import ConfigError, load_config
    from llmops_ocr.db.engine import make_engine, make_sessionmaker, session_scope, url_from_config
    from llmops_ocr.db.models import Deployment
    from llmops_ocr.db.store import record_deployment

    ap = argparse.ArgumentParser(
        prog="python -m llmops_ocr.db.deployments", description=main.__doc__
    )
    ap.add_argument("--config", help="service config JSON (default $LLMOPS_CONFIG or /etc/llmops)")
    ap.add_argument("--type", default="api", choices=["api", "web"], help="service config type")
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("record", help="write the deployment record given as JSON on stdin")
    last = sub.add_parser("last", help="print the newest records as a JSON list")
    last.add_argument("--inventory", help="only records of this inventory")
    last.add_argument("--limit", type=int, default=1, help="how many (default 1)")
    args = ap.parse_args(argv)

    try:
        url = url_from_config(load_config(args.type, args.config))
        record = parse_record(json.load(sys.stdin)) if args.action == "record" else None
    except (ConfigError, RecordError, ValueError, OSError) as exc:
        print(f"deployments: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(url)
    try:
        factory = make_sessionmaker(engine)
        with session_scope(factory) as session:
            if record is not None:
                row = record_deployment(session, **record)
                print(json.dumps({"id": row.id}))
                return 0
            q = select(Deployment).order_by(Deployment.started_at.desc(), Deployment.id.desc())
            if args.inventory:
                q = q.where(Deployment.inventory == args.inventory)
            rows = session.scalars(q.limit(max(args.limit, 1))).all()
            print(json.dumps([as_json(r) for r in rows]))
            return 0
    except SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"deployments: database {url.render_as_string(hide_password=True)}: {first}",
            file=sys.stderr,
        )
        return 3
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
