"""Password hashing (scrypt) and API-key hashing (SHA-256 of a high-entropy random key)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

# scrypt cost: n=2**14, r=8 needs 16 MiB and ~50 ms per hash on one core (OWASP minimum).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_DKLEN = 32
API_KEY_PREFIX = "llmk_"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii").rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str) -> str:
    """Return ``scrypt$n$r$p$salt$hash`` for ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=_DKLEN
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (from hash_password); False on any mismatch."""
    try:
        scheme, n, r, p, salt, want = encoded.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(_unb64(want)),
            maxmem=128 * int(n) * int(r) * int(p) + 2**20,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(want))


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def dummy_verify(password: str) -> None:
    """Spend the time of one verification, so unknown user names are not told by timing."""
    verify_password(password, _dummy_hash())


def generate_api_key() -> str:
    """A new API key: ``llmk_`` + 43 url-safe characters (256 bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 hex of an API key; keys are random, so a slow hash adds nothing."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
