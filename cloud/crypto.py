"""Encryption at rest of personal fields (AES-256-GCM) and keyed lookup hashes (HMAC-SHA256).

What is encrypted, and why this split (see ``cloud/README.md``, "Privacy and security"):

* ``customers.display_name``, ``customers.consent_by``, ``customers.external_ref`` (the shop's loyalty
  id) — they say *who* a customer is.
* ``purchases.amount`` and ``purchases.product_id`` — what a person spent and the exact article.
* Purchases stay keyed by ``customer_id``, a random UUID4 (a pseudonym); ``item_id``, ``quantity``,
  ``ts`` and ``store_id`` stay in clear so SQL can aggregate them (analytics, training data) without the
  key. Without the key nothing in the database links a pseudonym to a person: the mapping (name,
  loyalty id) is ciphertext.

One 32-byte **data key** (``DANGOL_DATA_KEY`` or the systemd credential ``dangol-data-key``, base64)
never stored in the database or the repository. Three sub-keys are derived from it with HKDF-SHA256
(RFC 5869): one for AES-GCM, one for HMAC-SHA256 lookup hashes (``customers.external_ref_hash`` and
``erased_refs.ref_hash``, so an import can find a customer by loyalty id although the ciphertext is randomised),
and one for HMAC-SHA256 purchase keys (``purchases.idempotency_key`` of imported lines, made from the line's
content — amount and product id included: unkeyed, such a hash would give those encrypted columns away to a
brute force over plausible amounts and a public barcode list). Each hash is deterministic under one key, so
``dangol-cloud rotate-key`` recomputes them all (:mod:`dangol_cloud.rotation`).

Ciphertext format (text, fits any TEXT column): ``dg1:<key id>:<base64(nonce || ciphertext || tag)>``.
The nonce is 96 random bits per value, the construction of NIST SP 800-38D §8.2.2 (random IVs; at most
2**32 encryptions per key, far above a café chain's row count). The column name is the associated data,
so a ciphertext moved into another column fails authentication. ``key id`` is 4 bytes derived from the
key (not secret): decrypting with the wrong key gives a clear error instead of a bare ``InvalidTag``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Text
from sqlalchemy.sql import operators
from sqlalchemy.types import TypeDecorator

from dangol_cloud.settings import ConfigError

__all__ = ["CREDENTIAL_NAME", "PREFIX", "DataKeyError", "EncryptedFloat", "EncryptedText", "Keyring",
           "decode_key", "generate_key", "is_encrypted", "keyring_of", "load_key_file"]

PREFIX = "dg1:"
CREDENTIAL_NAME = "dangol-data-key"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit IV, NIST SP 800-38D §5.2.1.1 / §8.2.2
MISSING_KEY_HELP = ("set DANGOL_DATA_KEY (base64 of 32 random bytes; make one with `dangol-cloud gen-key`) or the "
                    f"systemd credential {CREDENTIAL_NAME} (LoadCredential=, read from $CREDENTIALS_DIRECTORY)")


class DataKeyError(ConfigError):
    """The data key is missing, malformed, or does not decrypt the database (message names the setting)."""


def _derive(key: bytes, label: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=b"dangol/cloud/" + label).derive(key)


def generate_key() -> str:
    """A new random data key, base64 (44 characters) — for ``DANGOL_DATA_KEY`` or a credential file."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def decode_key(text: str, source: str) -> bytes:
    """Base64 text → 32 key bytes.

    Raises:
        DataKeyError: naming ``source`` if the text is not base64 of exactly 32 bytes.
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DataKeyError(f"{source}: not base64 (expected 32 random bytes, base64; `dangol-cloud gen-key`)") from None
    if len(key) != KEY_BYTES:
        raise DataKeyError(f"{source}: decodes to {len(key)} bytes, expected {KEY_BYTES} (`dangol-cloud gen-key`)")
    return key


def load_key_file(path: str | os.PathLike) -> bytes:
    """Read a base64 key from a file (e.g. ``--new-key-file`` or a systemd credential).

    Raises:
        DataKeyError: the file is missing/unreadable or does not hold a valid key (message names the file).
    """
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataKeyError(f"data key file {path}: {exc}") from None
    return decode_key(text, f"data key file {path}")


class Keyring:
    """AES-GCM encryption and HMAC lookup hashes under one data key.

    Args:
        key: the 32-byte data key.
        old_keys: keys that may still be found in the database (only read, never written).
    """

    def __init__(self, key: bytes, old_keys: tuple[bytes, ...] = ()) -> None:
        if len(key) != KEY_BYTES:
            raise DataKeyError(f"data key must be {KEY_BYTES} bytes, got {len(key)}")
        self.key_id = _derive(key, b"key-id/v1", 4).hex()
        self._aead = AESGCM(_derive(key, b"aes-gcm/v1"))
        self._mac_key = _derive(key, b"lookup-hmac/v1")
        self._purchase_key = _derive(key, b"purchase-hmac/v1")
        self._readers = {self.key_id: self._aead}
        for old in old_keys:
            self._readers.setdefault(_derive(old, b"key-id/v1", 4).hex(), AESGCM(_derive(old, b"aes-gcm/v1")))

    def encrypt(self, plaintext: bytes, context: str) -> str:
        """AES-256-GCM with a fresh random 96-bit nonce; ``context`` (the column) is the associated data."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, context.encode("utf-8"))
        return f"{PREFIX}{self.key_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def decrypt(self, token: str, context: str) -> bytes:
        """Inverse of :meth:`encrypt`.

        Raises:
            DataKeyError: the value is not a Dangol ciphertext, was made with another key, or fails
                authentication (tampered, or moved from another column); the message names ``context``.
        """
        if not is_encrypted(token):
            raise DataKeyError(f"{context}: value is not encrypted (run `dangol-cloud` once to migrate the database)")
        try:
            _, key_id, body = token.split(":", 2)
            raw = base64.b64decode(body, validate=True)
        except (ValueError, binascii.Error):
            raise DataKeyError(f"{context}: malformed ciphertext") from None
        aead = self._readers.get(key_id)
        if aead is None:
            raise DataKeyError(f"{context}: encrypted with data key {key_id}, but the configured DANGOL_DATA_KEY is "
                               f"key {self.key_id}; set the key this database was written with (or finish "
                               "`dangol-cloud rotate-key`)")
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode("utf-8"))
        except InvalidTag:
            raise DataKeyError(f"{context}: ciphertext failed authentication (tampered or copied from another "
                               "column)") from None

    def lookup_hash(self, text: str) -> str:
        """Deterministic HMAC-SHA256 hex of ``text`` under the derived lookup key (equality search only)."""
        return hmac.new(self._mac_key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def purchase_hash(self, content: str) -> str:
        """Deterministic HMAC-SHA256 hex of an imported purchase line's content under the derived purchase-key key
        (:func:`dangol_cloud.purchase_keys.purchase_key`): without the data key it cannot be recomputed, so it
        reveals neither amount nor product id."""
        return hmac.digest(self._purchase_key, content.encode("utf-8"), "sha256").hex()


def is_encrypted(value: Any) -> bool:
    """True for a string in the ``dg1:`` ciphertext format."""
    return isinstance(value, str) and value.startswith(PREFIX)


def keyring_of(dialect) -> Keyring:
    """The keyring attached to an engine's dialect by :class:`dangol_cloud.db.Database`.

    Raises:
        DataKeyError: no data key is configured (message says how to set one).
    """
    ring = getattr(dialect, "dangol_keyring", None)
    if ring is None:
        raise DataKeyError(f"no data key configured: {MISSING_KEY_HELP}")
    return ring


class EncryptedText(TypeDecorator):
    """A ``str`` column stored as AES-GCM ciphertext text; ``context`` (``table.column``) is bound as AAD.

    Equality comparisons in SQL do not work (random nonces); use a lookup-hash column for searches.
    """

    impl = Text
    cache_ok = True

    class comparator_factory(TypeDecorator.Comparator):  # noqa: N801 - SQLAlchemy's hook name
        """Only ``IS [NOT] NULL`` works on ciphertext; any other SQL comparison raises instead of silently
        matching nothing."""

        def operate(self, op, *other, **kwargs):
            if op not in (operators.is_, operators.is_not):
                raise TypeError(f"{self.expr.type.context} is encrypted: it cannot be compared in SQL "
                                f"({op.__name__}); compare decrypted values in Python or use a lookup-hash column")
            return super().operate(op, *other, **kwargs)

        def reverse_operate(self, op, other, **kwargs):
            raise TypeError(f"{self.expr.type.context} is encrypted: it cannot be compared in SQL ({op.__name__})")

    def __init__(self, context: str) -> None:
        super().__init__()
        self.context = context

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return keyring_of(dialect).encrypt(self._dump(value), self.context)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return self._load(keyring_of(dialect).decrypt(value, self.context))

    def _dump(self, value) -> bytes:
        return str(value).encode("utf-8")

    def _load(self, data: bytes):
        return data.decode("utf-8")


class EncryptedFloat(EncryptedText):
    """A ``float`` column stored as AES-GCM ciphertext (``repr`` of the float; exact round trip)."""

    cache_ok = True

    def _dump(self, value) -> bytes:
        return repr(float(value)).encode("ascii")

    def _load(self, data: bytes):
        return float(data.decode("ascii"))
