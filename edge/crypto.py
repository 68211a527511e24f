"""Encryption at rest for the edge gallery: AES-256-GCM field encryption with the ``cryptography`` package.

Face templates (biometric data, GDPR Art. 9 / BIPA) and customer names are stored encrypted, so a
copied SD card reveals neither. Each value is sealed as::

    b"\\x01" | key id (4 bytes) | nonce (12 bytes, random) | ciphertext + tag (16 bytes)

with associated data ``<table>.<column>:<customer id>``, which binds a ciphertext to its row (a value
copied into another customer's row fails to decrypt). Random 96-bit nonces follow NIST SP 800-38D §8.2.2;
at ≪ 2³² encryptions per key the collision risk is negligible.

The key is 32 random bytes, base64-encoded, from (first match):

1. ``DANGOL_GALLERY_KEY`` (environment);
2. the systemd credential ``dangol-gallery-key`` (``$CREDENTIALS_DIRECTORY/dangol-gallery-key``,
   ``LoadCredentialEncrypted=`` in the unit);
3. ``DANGOL_GALLERY_KEY_FILE`` (a path, e.g. on a separate medium).

It is never written to the gallery database or the repository. ``dangol-edge rotate-key`` re-encrypts
every sealed value of the gallery under a new key in one transaction, then the first names cached with the
menus in the state file (:meth:`dangol_edge.state.StateStore.rotate_key`), in another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"
CREDENTIAL = "dangol-gallery-key"


class GalleryKeyError(RuntimeError):
    """No key, a malformed key, or data sealed under another key; the message says which and where."""


def new_key() -> str:
    """A fresh random key, base64 text (what ``DANGOL_GALLERY_KEY`` holds)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def parse_key(text: str, source: str) -> bytes:
    """Decode a base64 key of exactly 32 bytes. Raises :class:`GalleryKeyError` naming ``source``."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GalleryKeyError(f"{source}: not base64") from exc
    if len(raw) != 32:
        raise GalleryKeyError(f"{source}: the key must be 32 bytes (base64 of 32 random bytes), got {len(raw)}")
    return raw


def load_key(environ: dict | None = None) -> bytes:
    """The gallery key from the environment, a systemd credential or a key file (see module docstring).

    Raises:
        GalleryKeyError: no key anywhere, or a malformed one.
    """
    env = os.environ if environ is None else environ
    if env.get("DANGOL_GALLERY_KEY"):
        return parse_key(env["DANGOL_GALLERY_KEY"], "DANGOL_GALLERY_KEY")
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL).is_file():
        p = Path(cred_dir) / CREDENTIAL
        return parse_key(p.read_text(), str(p))
    if env.get("DANGOL_GALLERY_KEY_FILE"):
        p = Path(env["DANGOL_GALLERY_KEY_FILE"])
        try:
            return parse_key(p.read_text(), str(p))
        except OSError as exc:
            raise GalleryKeyError(f"{p}: cannot read the gallery key: {exc.strerror or exc}") from exc
    raise GalleryKeyError(
        "no gallery key: set DANGOL_GALLERY_KEY to base64 of 32 random bytes "
        "(`python -c \"from dangol_edge.crypto import new_key; print(new_key())\"`), or provide the systemd "
        f"credential {CREDENTIAL!r} or DANGOL_GALLERY_KEY_FILE")


class FieldCipher:
    """AES-256-GCM sealing of single values.

    Args:
        key: 32 bytes.
    """

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise GalleryKeyError(f"the key must be 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"dangol-key-id" + key).digest()[:4]

    @classmethod
    def from_environment(cls) -> "FieldCipher":
        """The cipher for :func:`load_key`'s key."""
        return cls(load_key())

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """Encrypt ``plaintext`` bound to ``context`` (e.g. ``"templates.embedding:<customer id>"``)."""
        nonce = secrets.token_bytes(12)
        return VERSION + self.key_id + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        """Decrypt a value made by :meth:`seal` with the same key and context.

        Raises:
            GalleryKeyError: sealed under another key, or tampered with / moved to another row.
        """
        if not sealed or sealed[:1] != VERSION or len(sealed) < 1 + 4 + 12 + 16:
            raise GalleryKeyError(f"{context}: not an encrypted value")
        if sealed[1:5] != self.key_id:
            raise GalleryKeyError(f"{context}: sealed under a different key (key id {sealed[1:5].hex()}, "
                                  f"this key {self.key_id.hex()}); use the right DANGOL_GALLERY_KEY")
        try:
            return self._aead.decrypt(sealed[5:17], sealed[17:], context.encode())
        except InvalidTag as exc:
            raise GalleryKeyError(f"{context}: authentication failed (tampered or moved value)") from exc

    @staticmethod
    def is_sealed(value: bytes | str | None) -> bool:
        """True for a value in the sealed format (as opposed to legacy plaintext)."""
        return isinstance(value, bytes) and value[:1] == VERSION and len(value) >= 33
