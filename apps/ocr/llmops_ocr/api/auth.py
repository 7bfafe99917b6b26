"""Bearer-token authentication: the service token (a credential file) or a per-client API key.

The service token is compared in constant time. API keys (``llmk_...``) are looked up by their
SHA-256 in the database on a worker thread with a deadline; a key that checked out is cached
for a minute so a database hiccup does not lock out clients that were just served.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select

from llmops_ocr.db import ApiKey, User, hash_api_key
from llmops_ocr.db.security import API_KEY_PREFIX

KEY_CACHE_SECONDS = 60.0
KEY_LOOKUP_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Principal:
    """Who made a request, as written to the request history."""

    client: str
    api_key_id: int | None = None
    user_id: int | None = None


SERVICE = Principal("token")


class AuthError(Exception):
    """No valid credentials; answered with 401."""


class AuthUnavailableError(Exception):
    """An API key could not be checked because the database is unreachable; answered with 503."""


class Authenticator:
    """Checks ``Authorization: Bearer <token>`` headers."""

    def __init__(self, service_token: str, engine: Engine | None) -> None:
        self._token = service_token.encode("utf-8")
        self._engine = engine
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of a request, or AuthError / AuthUnavailableError."""
        if not authorization:
            raise AuthError("missing Authorization header; send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("malformed Authorization header; send 'Authorization: Bearer <token>'")
        if hmac.compare_digest(token.encode("utf-8"), self._token):
            return SERVICE
        if self._engine is None or not token.startswith(API_KEY_PREFIX):
            raise AuthError("invalid bearer token")
        digest = hash_api_key(token)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            principal = await asyncio.wait_for(
                asyncio.to_thread(self._lookup, digest), KEY_LOOKUP_TIMEOUT_S
            )
        except AuthError:
            raise
        except Exception as exc:
            raise AuthUnavailableError(
                "cannot check the API key: the database is unreachable; retry later "
                "or use the service token"
            ) from exc
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + KEY_CACHE_SECONDS, principal)
        return principal

    def _lookup(self, digest: str) -> Principal:
        assert self._engine is not None
        with self._engine.connect() as conn:
            row = conn.execute(
                select(ApiKey.id, ApiKey.name, ApiKey.user_id, ApiKey.revoked_at, User.disabled)
                .outerjoin(User, ApiKey.user_id == User.id)
                .where(ApiKey.key_hash == digest)
            ).first()
        if row is None or row.revoked_at is not None or row.disabled:
            raise AuthError("invalid bearer token")
        return Principal(f"key:{row.name}", api_key_id=row.id, user_id=row.user_id)
