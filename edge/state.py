"""The edge's cache of what the cloud sent and its queue of what it must send: SQLite via sqlite-utils (WAL).

Tables:

The cache hands out what it keeps as the protocol's pydantic objects (:class:`dangol_protocol.Catalogue`,
:class:`dangol_protocol.Menu`), the same objects :mod:`dangol_edge.sync` received.

* ``catalogue``: one row (``id = 1``) with the newest ``catalogue/1`` snapshot (JSON) and its version
  (:mod:`dangol_edge.state_catalogue`): an older version never replaces a newer one (retained messages can arrive
  out of order after a reconnect), the same version only with other content (a correction, which changes the
  cached catalogue's revision).
* ``menus``: ``customer_id`` → newest ``menu/1`` payload (JSON) without the name; the name (first name only,
  :func:`dangol_protocol.first_name`) is kept apart in ``display_name``, sealed with AES-256-GCM under the
  gallery key (:class:`~dangol_edge.crypto.FieldCipher`, context ``menus.display_name:<customer id>``),
  exactly as the gallery seals its names. Without a key the name is not kept at all. ``dangol-edge rotate-key``
  re-seals these names with the gallery's (:meth:`StateStore.rotate_key`); a name that still cannot be opened
  (sealed under another key) is read as no name: logged once per customer and counted, the menu still served.
* ``outbox``: events waiting for the broker's PUBACK (:mod:`dangol_edge.state_outbox`): ``event_id`` (UUID, the
  cloud deduplicates on it), ``topic``, the customer it is about, the payload — sealed under the gallery key when
  it is about a customer —, ``created_at``. Events survive restarts and broker outages, are delivered in ``seq``
  order and deleted once acknowledged; an erasure deletes every row about the customer
  (:meth:`~dangol_edge.state_outbox.OutboxTable.erase_customers`).
* ``erased``: the customers erased on this box, recorded by the erasure's own transaction, whose menus are refused
  from then on (:mod:`dangol_edge.state_erased`: kept by count, newest :data:`~dangol_edge.state_erased.ERASED_MAX`).

The box keeps serving the cached catalogue and menus while the cloud or the broker is down. The file (and
its WAL and shared-memory files) is created with mode 0600: only the daemon's user may read it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from dangol_protocol import Menu, first_name

from .crypto import FieldCipher, GalleryKeyError
from .sqlite import SQLiteFile, connect
from .state_catalogue import CatalogueTable
from .state_erased import ErasedTable
from .state_outbox import OutboxTable
from .state_recovery import move_aside, salvage

log = logging.getLogger(__name__)

FILE_MODE = 0o600
"""Mode of ``state.sqlite`` and its ``-wal``/``-shm`` files (owner read/write only)."""


def _private_file(path: Path) -> None:
    """Create ``path`` (and its folder) readable by the owner only, or narrow an existing file and its
    SQLite side files to :data:`FILE_MODE`. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE))
    for side in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if side.exists():
            os.chmod(side, FILE_MODE)


class StateError(RuntimeError):
    """The state file cannot be opened; the message names it."""


class StateStore(CatalogueTable, OutboxTable, ErasedTable, SQLiteFile):
    """Catalogue, menus, outbox and erased customers in one SQLite file. Thread-safe (one connection, one lock).

    Args:
        path: the SQLite file (created 0600 on :meth:`open`).
        cipher: seals the customers' names and the queued events about them; default
            :meth:`FieldCipher.from_environment` when first needed (no key configured: names are dropped, never
            stored in clear).
    """

    def __init__(self, path: str | Path, cipher: FieldCipher | None = None):
        super().__init__(path)
        self.cipher = cipher
        self._no_key_logged = False
        #: cached menus whose sealed first name could not be opened (each logged once; read as no name)
        self.name_read_errors = 0
        self._unopenable: set[str] = set()  # customer ids whose cached name could not be opened (logged)
        self._init_catalogue()
        self._init_outbox()
        self._init_erased()
        self.recovered_from: Path | None = None  # the damaged file moved aside by open(recover=True), if any

    def open(self, recover: bool = False) -> "StateStore":
        """Open or create the file (WAL, mode 0600); seals names and queued events left in clear by an older
        version.

        Args:
            recover: the daemon's start. A file SQLite finds *damaged* (``database disk image is malformed``, ``file
                is not a database``: a :class:`sqlite3.DatabaseError` that is not an ``OperationalError`` such as a
                lock or an I/O error) is moved aside with its ``-wal``/``-shm`` files to
                ``<name>.damaged-<UTC time>``, what can still be read of its queued events and erased customers is
                copied into a fresh file, and the daemon starts: everything else in it is a cache the broker sends
                again (the retained catalogue and menus). Logged as an error; :attr:`recovered_from` names the file
                moved aside. Without it (the command line) such a file raises.

        Raises:
            StateError: the file cannot be opened (or, without ``recover``, is damaged); the message names it.
        """
        if self._db is not None:
            return self
        try:
            self._open_file()
        except StateError as exc:
            damaged = isinstance(exc.__cause__, sqlite3.DatabaseError) and not isinstance(
                exc.__cause__, sqlite3.OperationalError)
            if not (recover and damaged):
                raise
            aside = move_aside(self.path)
            self._open_file()
            self.recovered_from = aside
            saved, lost = salvage(aside, self)
            log.error("%s was damaged (%s): moved to %s and started afresh; recovered %s%s. The catalogue and menus "
                      "come back from the broker's retained messages", self.path, exc.__cause__, aside.name,
                      ", ".join(f"{n} {table} rows" for table, n in saved.items()) or "nothing",
                      "".join(f"; lost {table} ({why})" for table, why in lost.items()))
        return self

    def _open_file(self) -> None:
        """Open or create :attr:`path` as the state database. Raises :class:`StateError` (the cause attached)."""
        try:
            _private_file(self.path)
            db = connect(self.path)
            db.execute("PRAGMA secure_delete = ON")  # a re-sealed or deleted name is zeroed in the file
            names = db.table_names()
            self._create_catalogue(db)
            if "menus" not in names:
                db["menus"].create({"customer_id": str, "payload": str, "generated_at": str, "received_at": str,
                                    "display_name": bytes}, pk="customer_id")
            elif "display_name" not in db["menus"].columns_dict:
                db["menus"].add_column("display_name", bytes)
            self._create_outbox(db)
            self._create_erased(db)
            _private_file(self.path)  # the -wal/-shm files WAL mode just created
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StateError(f"{self.path}: cannot open state database: {exc}") from exc
        self._db = db
        try:
            self._seal_legacy_names()
            self._migrate_outbox()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StateError(f"{self.path}: cannot open state database: {exc}") from exc

    # --- names -------------------------------------------------------------------------------------
    def _get_cipher(self) -> FieldCipher | None:
        if self.cipher is None:
            try:
                self.cipher = FieldCipher.from_environment()
            except GalleryKeyError as exc:
                if not self._no_key_logged:
                    log.warning("no gallery key (%s): customers' names are not kept in %s and events about them "
                                "are queued unsealed", exc, self.path)
                    self._no_key_logged = True
                return None
        return self.cipher

    def _seal_name(self, customer_id: str, name: str | None) -> bytes | None:
        name = first_name(name)
        cipher = self._get_cipher() if name else None
        return None if cipher is None else cipher.seal(name.encode("utf-8"), f"menus.display_name:{customer_id}")

    def _same_name(self, customer_id: str, name: str | None) -> bool:
        """Whether the cached menu's sealed first name is ``name``'s (without a key no name is kept: always True;
        a cached name that cannot be opened counts as different, so the new one replaces it)."""
        if self._get_cipher() is None:
            return True
        with self._lock:
            row = self.db.execute("SELECT display_name FROM menus WHERE customer_id = ?", [customer_id]).fetchone()
        wanted = first_name(name)
        if not row or row[0] is None:
            return not wanted
        try:
            return self.cipher.open(row[0], f"menus.display_name:{customer_id}").decode("utf-8") == wanted
        except GalleryKeyError:
            return False

    def _seal_legacy_names(self) -> None:
        """Menus cached by a version that kept the full name in the JSON: keep the sealed first name only."""
        with self._lock:
            rows = self.db.execute("SELECT customer_id, payload FROM menus WHERE payload LIKE '%\"display_name\": \"%'"
                                   ).fetchall()
            for cid, text in rows:
                payload = json.loads(text)
                sealed = self._seal_name(cid, payload.pop("display_name", None))
                payload["display_name"] = None
                self.db.execute("UPDATE menus SET payload = ?, display_name = ? WHERE customer_id = ?",
                                [json.dumps(payload), sealed, cid])

    def rotate_key(self, new: FieldCipher) -> tuple[int, int]:
        """Re-seal every cached menu's first name, and every queued event about a customer, under ``new`` in one
        transaction (what ``dangol-edge rotate-key`` does after the gallery); afterwards this store uses ``new``. A
        value already sealed under ``new`` (a rotation run again) is kept; a name the current key cannot open either
        is dropped (logged and counted in the result's second number): it could never be shown, and the cloud's
        next menu brings it again; such an event is dropped too (logged; it could never be sent).

        Returns:
            (names re-sealed, names dropped).

        Raises:
            sqlite3.Error: the file cannot be written (nothing is changed).
        """
        cipher, resealed, dropped = self._get_cipher(), 0, 0
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            for cid, sealed in self.db.execute(
                    "SELECT customer_id, display_name FROM menus WHERE display_name IS NOT NULL").fetchall():
                ctx = f"menus.display_name:{cid}"
                if FieldCipher.is_sealed(sealed) and sealed[1:5] == new.key_id:
                    continue
                try:
                    if cipher is None:
                        raise GalleryKeyError(f"{ctx}: no current key")
                    name = cipher.open(sealed, ctx)
                except GalleryKeyError as exc:
                    log.warning("%s: the cached name cannot be opened (%s); dropped until the next menu",
                                self.path, exc)
                    self.db.execute("UPDATE menus SET display_name = NULL WHERE customer_id = ?", [cid])
                    dropped += 1
                    continue
                self.db.execute("UPDATE menus SET display_name = ? WHERE customer_id = ?", [new.seal(name, ctx), cid])
                resealed += 1
            events = self._reseal_outbox(cipher, new)
        if any(events):
            log.info("%s: %d queued events re-sealed, %d dropped", self.path, *events)
        self.cipher = new
        self._unopenable.clear()
        return resealed, dropped

    @staticmethod
    def _now() -> str:
        return datetime.now(timezone.utc).isoformat(timespec="milliseconds")

    # --- menus -------------------------------------------------------------------------------------
    def put_menu(self, menu: Menu | Mapping[str, Any]) -> bool:
        """Store a ``menu/1`` unless its customer was erased on this box (refused: counted in :attr:`refused_menus`
        and logged, see :mod:`dangol_edge.state_erased`), or a newer one, or an equally new one with the same picks
        and first name, is cached (the same ``generated_at`` with other content is a correction the cloud published
        without a new training, e.g. the customer was renamed); returns True if stored. The check and the write are
        one transaction, so an erasure by another process (``dangol-edge customers delete``) is never undone. The
        first name is sealed apart (see the module docstring).

        Raises:
            pydantic.ValidationError: a dict that is not a valid ``menu/1``.
            sqlite3.Error: the file cannot be written (disk full, locked by another writer; nothing is stored).
        """
        m = menu if isinstance(menu, Menu) else Menu.model_validate(menu)
        cid = str(m.customer_id)
        gen = m.generated_at.isoformat()
        payload = m.model_copy(update={"display_name": None}).model_dump_json(by_alias=True)
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            if self._refuse_menu(cid):
                return False
            row = self.db.execute("SELECT generated_at, payload FROM menus WHERE customer_id = ?", [cid]).fetchone()
            if row and (_ts(row[0]) > m.generated_at or (_ts(row[0]) == m.generated_at and row[1] == payload
                                                         and self._same_name(cid, m.display_name))):
                return False
            self.db.execute(
                "INSERT INTO menus (customer_id, payload, generated_at, received_at, display_name) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_id) DO UPDATE SET payload = excluded.payload, "
                "generated_at = excluded.generated_at, received_at = excluded.received_at, "
                "display_name = excluded.display_name",
                [cid, payload, gen, self._now(), self._seal_name(cid, m.display_name)])
            self._unopenable.discard(cid)
        return True

    def menu(self, customer_id: str) -> Menu | None:
        """A customer's cached :class:`dangol_protocol.Menu` (``display_name``: the first name, unsealed;
        None without the key, or when it was sealed under another key: logged once per customer and counted in
        :attr:`name_read_errors`), or None (also if the cached row cannot be read as one: logged).

        Raises:
            sqlite3.Error: the database itself cannot be read.
        """
        cid = str(customer_id)
        with self._lock:
            row = self.db.execute("SELECT payload, display_name FROM menus WHERE customer_id = ?", [cid]).fetchone()
        if not row:
            return None
        name = None
        if row[1] is not None and self._get_cipher() is not None:
            try:
                name = self.cipher.open(row[1], f"menus.display_name:{cid}").decode("utf-8")
            except GalleryKeyError as exc:
                with self._lock:
                    first = cid not in self._unopenable
                    self._unopenable.add(cid)
                if first:
                    self.name_read_errors += 1
                    log.error("the cached name of %s cannot be opened (%s); shown without it until the next menu",
                              cid, exc)
        try:
            return Menu.model_validate_json(row[0]).model_copy(update={"display_name": name})
        except ValidationError as exc:
            log.error("the cached menu of %s cannot be read (%s); waiting for the next one", cid,
                      exc.errors()[0].get("msg"))
            return None

    def delete_menu(self, customer_id: str) -> None:
        """Forget a customer's menu (the cloud cleared the retained message).

        Raises:
            sqlite3.Error: the file cannot be written.
        """
        with self._lock:
            self.db.execute("DELETE FROM menus WHERE customer_id = ?", [str(customer_id)])
            self._unopenable.discard(str(customer_id))


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
