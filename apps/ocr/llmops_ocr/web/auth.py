"""Server-side login sessions, CSRF tokens and login rate limiting for the web app.

The Flask session cookie (signed with the ``session-key`` credential) carries only a random
session id and the CSRF token. The session itself is a row in ``web_sessions`` keyed by the
SHA-256 of that id, so logout and expiry take effect on every web host at once.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import abort, g, redirect, request, session, url_for
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from llmops_ocr.db import LoginFailure, User, WebSession
from llmops_ocr.db.models import utcnow

F = TypeVar("F", bound=Callable[..., Any])

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class RateLimit:
    """At most ``per_user`` failed logins per user name and ``per_address`` per client address
    within ``window``; beyond that logins are refused (429) until old failures age out."""

    per_user: int = 5
    per_address: int = 20
    window: dt.timedelta = dt.timedelta(minutes=15)


def _aware(t: dt.datetime) -> dt.datetime:
    # SQLite gives back naive datetimes; everything is stored in UTC.
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


def csrf_token() -> str:
    """The CSRF token of this browser session (created on first use)."""
    tok = session.get("csrf")
    if not isinstance(tok, str):
        tok = secrets.token_urlsafe(32)
        session["csrf"] = tok
    return tok


def check_csrf() -> None:
    """Abort with 400 unless an unsafe request carries this session's CSRF token."""
    if request.method not in UNSAFE_METHODS:
        return
    want = session.get("csrf")
    got = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    if not isinstance(want, str) or not hmac.compare_digest(want.encode(), got.encode()):
        abort(400, description="csrf")


def load_user(db: Session) -> User | None:
    """The logged-in user of this request, or None (expired or deleted sessions end here)."""
    sid = session.get("sid")
    if not isinstance(sid, str):
        return None
    row = db.get(WebSession, _sid_hash(sid))
    if row is None or _aware(row.expires_at) <= utcnow() or row.user.disabled:
        session.pop("sid", None)
        return None
    return row.user


def start_session(db: Session, user: User, lifetime: dt.timedelta) -> None:
    """Log ``user`` in: a fresh session id and CSRF token (no session fixation)."""
    sid = secrets.token_urlsafe(32)
    now = utcnow()
    db.execute(delete(WebSession).where(WebSession.expires_at < now))
    db.add(
        WebSession(
            id=_sid_hash(sid),
            user_id=user.id,
            created_at=now,
            expires_at=now + lifetime,
            user_agent=(request.user_agent.string or "")[:255],
        )
    )
    session.clear()
    session.permanent = True
    session["sid"] = sid
    session["csrf"] = secrets.token_urlsafe(32)


def end_session(db: Session) -> None:
    """Log out: delete the server-side session and clear the cookie."""
    sid = session.get("sid")
    if isinstance(sid, str):
        db.execute(delete(WebSession).where(WebSession.id == _sid_hash(sid)))
    session.clear()


def login_blocked(db: Session, username: str, address: str, limit: RateLimit) -> int:
    """Seconds until a login for ``username`` from ``address`` may be tried again (0: now)."""
    since = utcnow() - limit.window
    waits = []
    for column, value, allowed in (
        (LoginFailure.username, username, limit.per_user),
        (LoginFailure.address, address, limit.per_address),
    ):
        n, oldest = db.execute(
            select(func.count(), func.min(LoginFailure.created_at)).where(
                column == value, LoginFailure.created_at >= since
            )
        ).one()
        if n >= allowed and oldest is not None:
            waits.append((_aware(oldest) + limit.window - utcnow()).total_seconds())
    return max(1, int(max(waits)) + 1) if waits else 0


def record_failure(db: Session, username: str, address: str, limit: RateLimit) -> None:
    """Count a failed login; failures older than a day are dropped on the way."""
    db.execute(
        delete(LoginFailure).where(
            LoginFailure.created_at < utcnow() - max(limit.window, dt.timedelta(days=1))
        )
    )
    db.add(LoginFailure(username=username[:64], address=address[:64]))


def clear_failures(db: Session, username: str) -> None:
    db.execute(delete(LoginFailure).where(LoginFailure.username == username))


def login_required(view: F) -> F:
    """Redirect anonymous users to the login page, coming back here afterwards."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if g.get("user") is None:
            return redirect(url_for("login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site (no open redirects), else None."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target
