"""Operations on the tables that the API, the web app and the controller share."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmops_ocr.db.models import (
    ApiKey,
    Deployment,
    Model,
    ModelVersion,
    Request,
    Upload,
    User,
    utcnow,
)
from llmops_ocr.db.security import (
    dummy_verify,
    generate_api_key,
    hash_api_key,
    hash_password,
    verify_password,
)

ADMIN_USERNAME = "admin"


# --- users -------------------------------------------------------------------------------------


def create_user(session: Session, username: str, password: str, *, is_admin: bool = False) -> User:
    """Add a user with a scrypt password hash (flushes, so ``id`` is set)."""
    if not username or len(username) > 64:
        raise ValueError("username must be 1 to 64 characters")
    user = User(username=username, password_hash=hash_password(password), is_admin=is_admin)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The user when name and password match and the user is enabled; else None.

    Takes the same time for unknown names as for wrong passwords.
    """
    user = get_user(session, username)
    if user is None:
        dummy_verify(password)
        return None
    if not verify_password(password, user.password_hash) or user.disabled:
        return None
    user.last_login_at = utcnow()
    return user


def set_password(session: Session, user: User, password: str) -> None:
    user.password_hash = hash_password(password)


def ensure_admin(session: Session, password: str, username: str = ADMIN_USERNAME) -> bool:
    """Create the admin user with ``password`` unless it exists; True when it was created.

    An existing admin keeps its password (an operator may have changed it); two hosts racing
    to create it both succeed, one of them creating it.
    """
    if get_user(session, username) is not None:
        return False
    try:
        with session.begin_nested():
            create_user(session, username, password, is_admin=True)
    except IntegrityError:
        return False
    return True


# --- API keys ----------------------------------------------------------------------------------


def create_api_key(session: Session, name: str, user: User | None = None) -> tuple[ApiKey, str]:
    """Store a new API key (hashed) and return it with the plaintext, shown only this once."""
    key = generate_api_key()
    row = ApiKey(
        name=name,
        prefix=key[:12],
        key_hash=hash_api_key(key),
        user_id=user.id if user is not None else None,
    )
    session.add(row)
    session.flush()
    return row, key


def verify_api_key(session: Session, key: str, *, touch: bool = True) -> ApiKey | None:
    """The live (not revoked) API key matching ``key``, or None; updates ``last_used_at``."""
    digest = hash_api_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, digest):
        return None
    if touch:
        row.last_used_at = utcnow()
    return row


def revoke_api_key(session: Session, key_id: int) -> bool:
    """Revoke the key with ``key_id``; False when there is no such live key."""
    res = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


# --- models ------------------------------------------------------------------------------------


def register_model_version(
    session: Session,
    name: str,
    version: str,
    sha256: str,
    *,
    path: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Record model ``name`` at ``version`` (idempotent; sha256/path/metrics are updated)."""
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        model = Model(name=name)
        session.add(model)
        session.flush()
    mv = session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == version
        )
    )
    if mv is None:
        mv = ModelVersion(model_id=model.id, version=version, sha256=sha256)
        session.add(mv)
    mv.sha256 = sha256
    mv.path = path
    mv.metrics = dict(metrics) if metrics is not None else None
    session.flush()
    return mv


# --- request history ---------------------------------------------------------------------------

REQUEST_FIELDS = (
    "created_at",
    "client",
    "user_id",
    "api_key_id",
    "model_name",
    "model_version",
    "mode",
    "status_code",
    "lines",
    "elapsed_ms",
    "error",
)


def record_requests(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert request-history rows in one transaction; returns how many.

    Rows are dicts with keys from REQUEST_FIELDS (``client`` and ``status_code`` required;
    ``created_at`` defaults to now). Meant for a background writer that batches rows.
    """
    batch = []
    for r in rows:
        unknown = set(r) - set(REQUEST_FIELDS)
        if unknown:
            raise ValueError(f"unknown request field(s): {', '.join(sorted(unknown))}")
        row = {"created_at": utcnow(), "lines": 0, "elapsed_ms": 0.0, **r}
        batch.append(row)
    if not batch:
        return 0
    # Same key set on every row, so executemany inserts them in one round trip.
    keys = set().union(*batch)
    batch = [{k: r.get(k) for k in keys} for r in batch]
    with engine.begin() as conn:
        conn.execute(insert(Request), batch)
    return len(batch)


def recent_requests(
    session: Session,
    *,
    limit: int = 50,
    user_id: int | None = None,
    api_key_id: int | None = None,
    client: str | None = None,
) -> Sequence[Request]:
    """Newest requests first, optionally for one user, API key or client."""
    q = select(Request).order_by(Request.created_at.desc(), Request.id.desc()).limit(limit)
    if user_id is not None:
        q = q.where(Request.user_id == user_id)
    if api_key_id is not None:
        q = q.where(Request.api_key_id == api_key_id)
    if client is not None:
        q = q.where(Request.client == client)
    return session.scalars(q).all()


# --- web uploads -------------------------------------------------------------------------------


def add_upload(session: Session, user: User, **fields: Any) -> Upload:
    """Store a web OCR result of ``user`` (fields as in the Upload model)."""
    up = Upload(user_id=user.id, **fields)
    session.add(up)
    session.flush()
    return up


def user_uploads(session: Session, user_id: int, *, limit: int = 50) -> Sequence[Upload]:
    """A user's uploads, newest first."""
    q = (
        select(Upload)
        .where(Upload.user_id == user_id)
        .order_by(Upload.created_at.desc(), Upload.id.desc())
        .limit(limit)
    )
    return session.scalars(q).all()


def get_upload(session: Session, upload_id: int, user_id: int) -> Upload | None:
    """The upload ``upload_id`` if it belongs to ``user_id`` (others' uploads are invisible)."""
    return session.scalar(select(Upload).where(Upload.id == upload_id, Upload.user_id == user_id))


# --- deployments -------------------------------------------------------------------------------


def record_deployment(
    session: Session,
    *,
    inventory: str,
    bundle_name: str,
    version: str,
    sha256: str,
    hosts: Sequence[str],
    result: str,
    message: str | None = None,
    started_at: dt.datetime | None = None,
    finished_at: dt.datetime | None = None,
) -> Deployment:
    """Write a deployment record (what ``llmops-provision status`` shows)."""
    d = Deployment(
        inventory=inventory,
        bundle_name=bundle_name,
        version=version,
        sha256=sha256,
        hosts=list(hosts),
        result=result,
        message=message,
        started_at=started_at or utcnow(),
        finished_at=finished_at or utcnow(),
    )
    session.add(d)
    session.flush()
    return d


def recent_deployments(session: Session, *, limit: int = 20) -> Sequence[Deployment]:
    q = select(Deployment).order_by(Deployment.started_at.desc(), Deployment.id.desc()).limit(limit)
    return session.scalars(q).all()
