"""Secrets: dashboard password hashes, POS API tokens and Mosquitto-compatible MQTT password hashes; the
same-origin check of redirect targets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache
from urllib.parse import urlsplit

from werkzeug.security import check_password_hash, generate_password_hash

__all__ = ["check_password", "check_password_or_dummy", "hash_password", "hash_token", "local_redirect_target",
           "mosquitto_hash", "mosquitto_verify", "new_secret"]

MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default for $7$ (PBKDF2-SHA512)


def hash_password(password: str) -> str:
    """Dashboard password → werkzeug ``scrypt`` hash string."""
    return generate_password_hash(password, method="scrypt")


def check_password(password_hash: str, password: str) -> bool:
    """True if ``password`` matches a hash from :func:`hash_password`."""
    return check_password_hash(password_hash, password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def check_password_or_dummy(password_hash: str | None, password: str) -> bool:
    """:func:`check_password` that costs the same when there is no user: with ``password_hash`` None a
    throw-away scrypt hash (same parameters) is checked and False returned, so the response time does not
    tell whether an e-mail has an account (OWASP Authentication Cheat Sheet, "Authentication Responses")."""
    if password_hash is None:
        check_password_hash(_dummy_hash(), password)
        return False
    return check_password_hash(password_hash, password)


def local_redirect_target(target: str | None) -> str | None:
    r"""``target`` if it is a path on this site (``/customers/?show=all``), else None.

    Refused: absolute URLs, scheme-relative ``//host``, backslashes (browsers read ``/\host`` as
    ``//host``) and any control character (browsers delete tab/CR/LF from URLs, WHATWG URL Standard, so
    ``/<TAB>/evil.host/`` would become ``//evil.host/``), also percent-encoded ones.
    """
    if not target or len(target) > 2000:
        return None
    from urllib.parse import unquote

    for text in (target, unquote(target)):
        if any(ord(ch) < 0x20 or ch in "\\\x7f" for ch in text):
            return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return target


def new_secret(nbytes: int = 24) -> str:
    """A random URL-safe secret (API token, MQTT password) with ``nbytes`` of entropy."""
    return secrets.token_urlsafe(nbytes)


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a high-entropy API token (stored instead of the token; looked up directly)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """Hash ``password`` in Mosquitto's password-file format ``$7$iterations$salt_b64$hash_b64``
    (PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte key), accepted by ``password_file`` in mosquitto.conf."""
    salt = secrets.token_bytes(12) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def mosquitto_verify(password_hash: str, password: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (from :func:`mosquitto_hash` or ``mosquitto_passwd``)."""
    try:
        _, kind, iterations, salt_b64, key_b64 = password_hash.split("$")
        if kind != "7":
            return False
        salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(iterations), len(key))
    return hmac.compare_digest(got, key)
