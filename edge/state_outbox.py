"""The ``outbox`` table of :class:`~dangol_edge.state.StateStore`: events waiting for the broker's PUBACK.

Columns: ``seq`` (delivery order), ``event_id`` (UUID, unique: the cloud deduplicates on it), ``topic``,
``customer_id`` (the customer an arrival or enrolment is about; NULL for an unknown face's arrival and for erasure
confirmations), ``payload`` (the JSON text) or ``sealed`` (the same JSON sealed with AES-256-GCM under the gallery
key, context ``outbox.payload:<event id>``: every event about a customer — an enrolment carries the full name and
the consent record with the staff member's name), ``created_at``, ``sent_at`` (only in rows of older versions).

* **Acknowledged** events are deleted when their PUBACK arrives (nothing of them is kept); rows an older version
  kept after their acknowledgement, and its unsealed events about customers, are dropped or sealed on open.
* **Erasure** (:meth:`OutboxTable.erase_customers`): in one transaction, every row about the customers goes (sent
  or not) with their cached menus, the confirmations the cloud needs (``erasure-done``) are queued and the ids are
  recorded as erased here (their menus are refused from then on: :mod:`dangol_edge.state_erased`); the ``-wal``
  file is then cut (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_deleted`) so the old pages leave it too, and a
  damaged copy of the file still kept (:mod:`dangol_edge.state_recovery`) is deleted. From the moment an erasure starts
  (:meth:`OutboxTable.begin_erasure`) until that transaction commits — a storage error may keep it waiting for a
  retry — nothing about those customers is handed to the flusher; and an event about them made before the erasure
  (an arrival decided a moment earlier, an event held in memory) is refused afterwards. So nothing about a
  customer reaches the cloud once their erasure has begun.
* Without a gallery key (the gallery itself cannot open without one) events are queued unsealed.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from .crypto import FieldCipher, GalleryKeyError
from .state_recovery import ASIDE_KEPT, remove_asides

log = logging.getLogger(__name__)

#: Erased customers remembered (id → time of the erasure) to refuse their older events; beyond, the oldest go.
ERASED_KEPT = 10_000

#: Event kinds about one customer (their ``customer_id``); erasure confirmations are about the erasure.
_ABOUT_A_CUSTOMER = ("arrival", "enrolment")


def _about(text: str) -> tuple[str | None, datetime | None]:
    """The customer an event's JSON is about and the event's time, or (None, None)."""
    try:
        d = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(d, dict) or d.get("kind") not in _ABOUT_A_CUSTOMER or not d.get("customer_id"):
        return None, None
    try:
        ts = datetime.fromisoformat(str(d.get("ts")).replace("Z", "+00:00"))
    except ValueError:
        ts = None
    return str(d["customer_id"]), ts


def _context(event_id: str) -> str:
    return f"outbox.payload:{event_id}"


class OutboxTable:
    """The outbox half of :class:`~dangol_edge.state.StateStore` (a mixin: it uses the store's ``db``, ``_lock``,
    ``_get_cipher``, ``_now``, ``path``, the menu cache's ``_unopenable`` and the erased table's ``_record_erased``)."""

    def _init_outbox(self) -> None:
        """Attributes only (no I/O): called by the store's constructor."""
        self._erased: OrderedDict[str, datetime] = OrderedDict()  # customer id → when their erasure began
        self._erasing: set[str] = set()  # customers whose erasure began and has not committed: nothing is sent
        #: queued events that could not be opened (sealed under another key): kept and skipped, each counted and
        #: logged once (they are sent once the daemon runs with the key they were sealed under)
        self.outbox_read_errors = 0
        self._unreadable_events: set[str] = set()  # their event ids (at most the outbox's rows)

    @staticmethod
    def _create_outbox(db) -> None:
        """Create the table, or add the columns an older version's table lacks."""
        if "outbox" not in db.table_names():
            db["outbox"].create({"seq": int, "event_id": str, "topic": str, "customer_id": str, "payload": str,
                                 "sealed": bytes, "created_at": str, "sent_at": str}, pk="seq")
            db["outbox"].create_index(["event_id"], unique=True)
            db["outbox"].create_index(["sent_at"])
        cols = db["outbox"].columns_dict
        for name, kind in (("customer_id", str), ("sealed", bytes)):
            if name not in cols:
                db["outbox"].add_column(name, kind)
        db["outbox"].create_index(["customer_id"], if_not_exists=True)

    def _migrate_outbox(self) -> None:
        """Drop the acknowledged rows an older version kept (full payloads) and seal its queued events about a
        customer."""
        unsealed = ("SELECT seq, event_id, payload FROM outbox WHERE sealed IS NULL AND payload LIKE "
                    "'%\"customer\\_id\":\"%' ESCAPE '\\'"
                    + ("" if self._get_cipher() is not None else " AND customer_id IS NULL"))  # (no key: unsealed)
        with self._lock:
            sent = self.db.execute("SELECT 1 FROM outbox WHERE sent_at IS NOT NULL LIMIT 1").fetchone()
            if not sent and not any(_about(text)[0] for _, _, text in self.db.execute(unsealed).fetchall()):
                return  # nothing to do: no write (another process may hold the write lock)
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL")
            for seq, event_id, text in self.db.execute(unsealed).fetchall():
                cid, _ = _about(text)
                if cid is not None:
                    sealed = self._seal_event(event_id, text)
                    self.db.execute("UPDATE outbox SET customer_id = ?, payload = ?, sealed = ? WHERE seq = ?",
                                    [cid, None if sealed else text, sealed, seq])

    def _seal_event(self, event_id: str, text: str) -> bytes | None:
        cipher = self._get_cipher()
        return None if cipher is None else cipher.seal(text.encode("utf-8"), _context(event_id))

    def _insert(self, event_id: str, topic: str, text: str, customer_id: str | None) -> None:
        """Insert one row (lock held): sealed when it is about a customer."""
        sealed = self._seal_event(event_id, text) if customer_id else None
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (event_id, topic, customer_id, payload, sealed, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", [event_id, topic, customer_id, None if sealed else text, sealed, self._now()])

    def enqueue(self, event_id: str, topic: str, payload: bytes | str) -> bool:
        """Add an event to the outbox (idempotent on ``event_id``); an event about a customer is sealed. Returns
        False, queueing nothing, for an event about a customer erased after the event was made (see the module
        docstring)."""
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        customer_id, ts = _about(text)
        with self._lock:
            erased_at = self._erased.get(customer_id) if customer_id else None
            if erased_at is not None and (ts is None or ts <= erased_at):
                log.info("event %s is about customer %s, erased since: not queued", event_id, customer_id)
                return False
            self._insert(str(event_id), topic, text, customer_id)
        return True

    def pending(self, limit: int = 100, exclude: Collection[str] = frozenset()) -> list[dict[str, Any]]:
        """Unacknowledged events, oldest first, at most ``limit``: dicts with ``event_id``, ``topic``, ``payload`` (the
        JSON text, unsealed) and ``customer_id`` (or None); events about customers being erased, and the ids in
        ``exclude`` (e.g. events the broker refused, waiting for their retry), are left out and do not count towards
        ``limit`` (so they never hide newer events). An event that
        cannot be unsealed with the current key (``dangol-edge rotate-key`` re-sealed the file while this process
        still runs under the old key, or its state step failed) is skipped, never deleted: it is sent once the
        daemon runs with the key it was sealed under. Each is logged and counted once in
        :attr:`outbox_read_errors`."""
        out = []
        with self._lock:
            erasing = sorted(self._erasing)
            cursor = self.db.execute("SELECT event_id, topic, customer_id, payload, sealed FROM outbox "
                                     "WHERE sent_at IS NULL AND (customer_id IS NULL OR customer_id NOT IN "
                                     f"({','.join('?' * len(erasing))})) ORDER BY seq", erasing)
            for event_id, topic, cid, text, sealed in cursor:
                if event_id in exclude:
                    continue
                if sealed is not None:
                    try:
                        cipher = self._get_cipher()
                        if cipher is None:
                            raise GalleryKeyError(f"{_context(event_id)}: no gallery key")
                        text = cipher.open(sealed, _context(event_id)).decode("utf-8")
                    except GalleryKeyError as exc:
                        if event_id not in self._unreadable_events:
                            if len(self._unreadable_events) >= 10_000:  # bounded: some may be logged again
                                self._unreadable_events.clear()
                            self._unreadable_events.add(event_id)
                            self.outbox_read_errors += 1
                            log.error("%s: queued event %s cannot be opened with this key (%s); kept and skipped "
                                      "until the daemon runs with the key it was sealed under (rotate-key?)",
                                      self.path, event_id, exc)
                        continue
                out.append({"event_id": event_id, "topic": topic, "payload": text, "customer_id": cid})
                if len(out) >= limit:
                    break
            cursor.close()
        return out

    def sendable(self, event_id: str, customer_id: str | None) -> bool:
        """Whether an event read by :meth:`pending` may still be published: it is still queued and its customer's
        erasure has not begun since (the flusher asks just before publishing an event about a customer)."""
        with self._lock:
            if customer_id in self._erasing:
                return False
            return self.db.execute("SELECT 1 FROM outbox WHERE event_id = ? AND sent_at IS NULL",
                                   [str(event_id)]).fetchone() is not None

    def mark_sent(self, event_id: str) -> None:
        """Record the broker's acknowledgement of an event: its row is deleted (nothing of it is kept)."""
        with self._lock:
            self.db.execute("DELETE FROM outbox WHERE event_id = ?", [str(event_id)])

    def outbox_depth(self) -> int:
        """Events not yet acknowledged."""
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])

    def prune_sent(self, keep: int = 0) -> None:
        """Drop acknowledged rows beyond the newest ``keep`` (only an older version's: rows now go on their PUBACK);
        finish a wipe of the ``-wal`` file an erasure could not (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_if_due`,
        logged there); delete the damaged copies kept longer than :data:`~dangol_edge.state_recovery.ASIDE_KEPT`
        (:mod:`dangol_edge.state_recovery`). Each housekeeping pass.

        Raises:
            sqlite3.Error: the file cannot be written.  OSError: a damaged copy cannot be deleted.
        """
        with self._lock:
            self.db.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND seq NOT IN "
                "(SELECT seq FROM outbox WHERE sent_at IS NOT NULL ORDER BY seq DESC LIMIT ?)", [keep])
        self.wipe_if_due()
        for name in remove_asides(self.path, ASIDE_KEPT):
            log.info("%s: deleted (a damaged copy kept %g hours)", name, ASIDE_KEPT / timedelta(hours=1))

    def begin_erasure(self, customer_ids: Iterable) -> None:
        """The customers' erasure begins (in memory, cannot fail): from now on nothing queued about them is handed
        to the flusher until :meth:`erase_customers` commits, and events about them made before now are refused.
        At most :data:`ERASED_KEPT` customers are remembered."""
        now = datetime.now(timezone.utc)
        with self._lock:
            for cid in map(str, customer_ids):
                self._erased[cid] = now
                self._erased.move_to_end(cid)
                self._erasing.add(cid)
            while len(self._erased) > ERASED_KEPT:
                self._erasing.discard(self._erased.popitem(last=False)[0])

    def erase_customers(self, customer_ids: Iterable, confirmations: Iterable[tuple[str, str, bytes | str]] = ()
                        ) -> int:
        """Take erased customers out of this file in one transaction: their cached menus and every outbox row about
        them (sent or not) go, ``confirmations`` — (event id, topic, payload) of the ``erasure-done`` events —
        are queued, and the ids are recorded as erased here, so a menu of theirs is never cached again
        (:mod:`dangol_edge.state_erased`). Begins the erasure first (:meth:`begin_erasure`), so while the
        transaction fails nothing about them is sent. Then the ``-wal`` file is wiped
        (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_deleted`: one a reader blocks is logged and finished by the next
        housekeeping pass, :meth:`prune_sent`), and a damaged copy of the file kept because its salvage failed is
        deleted (:func:`~dangol_edge.state_recovery.remove_asides`; one that cannot be is logged and left to
        :meth:`prune_sent`).

        Returns:
            The outbox rows removed.

        Raises:
            sqlite3.Error: the file cannot be written (nothing is changed).
        """
        ids = sorted({str(c) for c in customer_ids})
        rows = [(str(e), t, p.decode("utf-8") if isinstance(p, bytes) else p) for e, t, p in confirmations]
        removed = 0
        self.begin_erasure(ids)
        with self._lock:
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                for start in range(0, len(ids), 500):
                    part = ids[start:start + 500]
                    marks = ",".join("?" * len(part))
                    self.db.execute(f"DELETE FROM menus WHERE customer_id IN ({marks})", part)
                    removed += self.db.execute(f"DELETE FROM outbox WHERE customer_id IN ({marks})", part).rowcount
                self._record_erased(ids)  # their menus are refused from now on (dangol_edge.state_erased)
                for event_id, topic, text in rows:
                    self._insert(event_id, topic, text, None)
            self._erasing.difference_update(ids)
            self._unopenable.difference_update(ids)
            self.wipe_deleted()
        try:
            for name in remove_asides(self.path):
                log.info("%s: deleted (a damaged copy) by an erasure", name)
        except OSError as exc:
            log.error("%s: a damaged copy cannot be deleted (%s); the housekeeping pass tries again", self.path, exc)
        return removed

    def _reseal_outbox(self, cipher: FieldCipher | None, new: FieldCipher) -> tuple[int, int]:
        """Re-seal queued events under ``new`` (lock held, inside the caller's transaction); one the current key
        cannot open is dropped (logged). Returns (re-sealed, dropped)."""
        resealed = dropped = 0
        for seq, event_id, sealed in self.db.execute(
                "SELECT seq, event_id, sealed FROM outbox WHERE sealed IS NOT NULL").fetchall():
            if sealed[1:5] == new.key_id:
                continue
            try:
                if cipher is None:
                    raise GalleryKeyError(f"{_context(event_id)}: no current key")
                text = cipher.open(sealed, _context(event_id))
            except GalleryKeyError as exc:
                log.error("%s: queued event %s cannot be opened (%s); dropped", self.path, event_id, exc)
                self.db.execute("DELETE FROM outbox WHERE seq = ?", [seq])
                dropped += 1
                continue
            self.db.execute("UPDATE outbox SET sealed = ? WHERE seq = ?", [new.seal(text, _context(event_id)), seq])
            resealed += 1
        return resealed, dropped
