"""The gallery's sealed values (a mixin of :class:`dangol_edge.gallery.Gallery`, which provides ``db``, ``_lock``,
``cipher``, ``customer`` and ``_invalidate``): the customer's name (``customers.display_name``), the greeting the door
says (``customers.greet_name``), the templates' embeddings and photos — each sealed with AES-256-GCM under the gallery
key and bound to its column and customer (context ``<table>.<column>:<customer id>``) — and their re-sealing under a
new key (:meth:`SealedNames.rotate_key`).

``greet_name`` is what staff entered in the staff page's "Greet as" field, at activation or later on the list of
regulars (:meth:`SealedNames.set_greeting`). NULL — a customer enrolled with the CLI
(``dangol-edge enroll --name``), or by a gallery from before the field — means the rule of
:func:`dangol_protocol.greeting_name` on the name (``"Mina Park"`` → ``"Mina"``, ``"김 민준"`` → ``"김 민준"``).
Galleries written before the column existed get it when opened (:func:`add_greeting_column`); their customers keep
NULL, so they are greeted by the rule.
"""

from __future__ import annotations

import sqlite_utils

from dangol_protocol.names import MAX_GREETING

from .crypto import FieldCipher, GalleryKeyError


def add_greeting_column(db: sqlite_utils.Database) -> None:
    """Add ``customers.greet_name`` to a gallery written before it existed (NULL for everyone: the rule)."""
    if "greet_name" not in db["customers"].columns_dict:
        db["customers"].add_column("greet_name", bytes)


def clean_greeting(greeting: str | None) -> str | None:
    """``greeting`` with its whitespace collapsed, or None when it is None or blank (then the rule applies).

    Raises:
        ValueError: longer than :data:`~dangol_protocol.names.MAX_GREETING` characters.
    """
    text = " ".join((greeting or "").split())
    if len(text) > MAX_GREETING:
        raise ValueError(f"a greeting has at most {MAX_GREETING} characters, not {len(text)}")
    return text or None


class SealedNames:
    """Sealing and opening the gallery's personal values; changing a greeting; re-sealing them all under a new key."""

    def _seal_name(self, customer_id: str, name: str) -> bytes:
        return self.cipher.seal(name.encode("utf-8"), f"customers.display_name:{customer_id}")

    def _seal_greeting(self, customer_id: str, greeting: str | None) -> bytes | None:
        """The ``greet_name`` column value: None for no greeting of their own (the rule)."""
        if greeting is None:
            return None
        return self.cipher.seal(greeting.encode("utf-8"), f"customers.greet_name:{customer_id}")

    def set_greeting(self, customer_id: str, greeting: str | None):
        """Change what the door says to an active customer (the staff page's "Greet as" on its list of regulars); the
        door greets them with it from their next arrival. ``greeting`` is cleaned and bounded as at activation
        (:func:`clean_greeting`); blank: the rule on their name again. ``updated_at`` stays (the staff page's "active
        since", and retention counts from it); the old sealed greeting leaves the ``-wal`` file at the next
        housekeeping pass (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_if_due`). Returns the customer as now stored.

        Raises:
            UnknownCustomer: no active customer with this id (a sign-up gets its greeting at activation).
            ValueError: longer than :data:`~dangol_protocol.names.MAX_GREETING` characters (nothing is changed).
            sqlite3.OperationalError: the gallery cannot be written (nothing is changed).
        """
        sealed = self._seal_greeting(customer_id, clean_greeting(greeting))
        with self._lock:
            changed = self.db.execute("UPDATE customers SET greet_name = ? WHERE id = ? AND status = 'active'",
                                      [sealed, customer_id]).rowcount
            if changed:
                self._wipe_due = True  # no checkpoint on the staff page's thread
        if not changed:
            from .gallery import UnknownCustomer

            raise UnknownCustomer(customer_id)
        return self.customer(customer_id)

    def _open_value(self, value, context: str) -> bytes:
        """Unseal a stored value; legacy plaintext (galleries from before encryption) passes through."""
        if FieldCipher.is_sealed(value):
            return self.cipher.open(value, context)
        return value.encode("utf-8") if isinstance(value, str) else value

    def _open_names(self, row: dict) -> tuple[str, str | None]:
        """``(name, greeting or None)`` of a ``customers`` row. Raises GalleryKeyError (another key)."""
        cid = row["id"]
        name = self._open_value(row["display_name"], f"customers.display_name:{cid}").decode("utf-8")
        sealed = row.get("greet_name")
        greeting = None if sealed is None else self._open_value(sealed, f"customers.greet_name:{cid}").decode("utf-8")
        return name, greeting

    def rotate_key(self, new: FieldCipher) -> int:
        """Re-seal every name, greeting, template and photo under ``new`` in one transaction (legacy plaintext rows
        get sealed too); afterwards this gallery uses ``new``, and the old values are wiped from the ``-wal`` file
        (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_deleted`; ``secure_delete`` zeroes them in the database file).
        Returns the number of values re-sealed.

        Raises:
            GalleryKeyError: a value cannot be opened with the current key (nothing is changed).
        """
        n = 0
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for cid, name, greeting in self.db.execute(
                        "SELECT id, display_name, greet_name FROM customers").fetchall():
                    ctx, g_ctx = f"customers.display_name:{cid}", f"customers.greet_name:{cid}"
                    self.db.execute("UPDATE customers SET display_name = ?, greet_name = ? WHERE id = ?", [
                        new.seal(self._open_value(name, ctx), ctx),
                        None if greeting is None else new.seal(self._open_value(greeting, g_ctx), g_ctx), cid])
                    n += 1 + (greeting is not None)
                for tid, cid, emb, photo in self.db.execute(
                        "SELECT id, customer_id, embedding, photo FROM templates").fetchall():
                    e_ctx, p_ctx = f"templates.embedding:{cid}", f"templates.photo:{cid}"
                    self.db.execute("UPDATE templates SET embedding = ?, photo = ? WHERE id = ?", [
                        new.seal(self._open_value(emb, e_ctx), e_ctx),
                        None if photo is None else new.seal(self._open_value(photo, p_ctx), p_ctx), tid])
                    n += 1 + (photo is not None)
            except GalleryKeyError:
                self.db.execute("ROLLBACK")
                raise
        self.cipher = new
        self._invalidate()
        self.wipe_deleted()
        return n
