"""The edge's cache of what the cloud sent and its queue of what it must send: SQLite via sqlite-utils (WAL).

Tables:

* ``catalogue``: one row (``id = 1``) with the newest ``catalogue/1`` snapshot (JSON) and its version;
  an older or equal version never replaces a newer one (retained messages can arrive out of order
  after a reconnect).
* ``menus``: ``customer_id`` → newest ``menu/1`` payload (JSON).
* ``outbox``: events waiting for the broker's PUBACK: ``event_id`` (UUID, the cloud deduplicates on
  it), ``topic``, ``payload``, ``created_at``, ``sent_at`` (NULL until acknowledged). Events survive
  restarts and broker outages and are delivered in ``seq`` order.

The box keeps serving the cached catalogue and menus while the cloud or the broker is down.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from typing import Any


from .sqlite import SQLiteFile, connect


class StateError(RuntimeError):
    """The state file cannot be opened; the message names it."""


class StateStore(SQLiteFile):
    """Catalogue, menus and outbox in one SQLite file. Thread-safe (one connection, one lock)."""

    def open(self) -> "StateStore":
        """Open or create the file (WAL). Raises :class:`StateError` naming the file."""
        if self._db is not None:
            return self
        try:
            db = connect(self.path)
            names = db.table_names()
            if "catalogue" not in names:
                db["catalogue"].create({"id": int, "version": int, "payload": str, "received_at": str}, pk="id")
            if "menus" not in names:
                db["menus"].create({"customer_id": str, "payload": str, "generated_at": str, "received_at": str},
                                   pk="customer_id")
            if "outbox" not in names:
                db["outbox"].create({"seq": int, "event_id": str, "topic": str, "payload": str,
                                     "created_at": str, "sent_at": str}, pk="seq")
                db["outbox"].create_index(["event_id"], unique=True)
                db["outbox"].create_index(["sent_at"])
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StateError(f"{self.path}: cannot open state database: {exc}") from exc
        self._db = db
        return self

    @staticmethod
    def _now() -> str:
        return datetime.now(timezone.utc).isoformat(timespec="milliseconds")

    # --- catalogue ---------------------------------------------------------------------------------
    def put_catalogue(self, payload: dict[str, Any]) -> bool:
        """Store a ``catalogue/1`` payload (a dict as from JSON) if it is newer; returns True if stored."""
        version = int(payload["version"])
        with self._lock:
            row = self.db.execute("SELECT version FROM catalogue WHERE id = 1").fetchone()
            if row and row[0] >= version:
                return False
            self.db["catalogue"].upsert({"id": 1, "version": version, "payload": json.dumps(payload),
                                         "received_at": self._now()}, pk="id")
        return True

    def catalogue(self) -> dict[str, Any] | None:
        """The cached catalogue payload, or None before the first one arrives."""
        with self._lock:
            row = self.db.execute("SELECT payload FROM catalogue WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else None

    # --- menus -------------------------------------------------------------------------------------
    def put_menu(self, payload: dict[str, Any]) -> bool:
        """Store a ``menu/1`` payload unless an equally new or newer one is cached; returns True if stored."""
        cid = str(payload["customer_id"])
        gen = str(payload["generated_at"])
        with self._lock:
            row = self.db.execute("SELECT generated_at FROM menus WHERE customer_id = ?", [cid]).fetchone()
            if row and _ts(row[0]) >= _ts(gen):
                return False
            self.db["menus"].upsert({"customer_id": cid, "payload": json.dumps(payload), "generated_at": gen,
                                     "received_at": self._now()}, pk="customer_id")
        return True

    def menu(self, customer_id: str) -> dict[str, Any] | None:
        """A customer's cached menu payload, or None."""
        with self._lock:
            row = self.db.execute("SELECT payload FROM menus WHERE customer_id = ?", [str(customer_id)]).fetchone()
        return json.loads(row[0]) if row else None

    def delete_menu(self, customer_id: str) -> None:
        """Forget a customer's menu (erasure, or the cloud cleared the retained message)."""
        with self._lock:
            self.db.execute("DELETE FROM menus WHERE customer_id = ?", [str(customer_id)])

    # --- outbox ------------------------------------------------------------------------------------
    def enqueue(self, event_id: str, topic: str, payload: bytes | str) -> None:
        """Add an event to the outbox (idempotent on ``event_id``)."""
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        with self._lock:
            self.db.execute(
                "INSERT OR IGNORE INTO outbox (event_id, topic, payload, created_at) VALUES (?, ?, ?, ?)",
                [str(event_id), topic, text, self._now()])

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """Unacknowledged events, oldest first: dicts with ``event_id``, ``topic``, ``payload``."""
        with self._lock:
            return list(self.db.query(
                "SELECT event_id, topic, payload FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?", [limit]))

    def mark_sent(self, event_id: str) -> None:
        """Record the broker's acknowledgement of an event."""
        with self._lock:
            self.db.execute("UPDATE outbox SET sent_at = ? WHERE event_id = ?", [self._now(), str(event_id)])

    def outbox_depth(self) -> int:
        """Events not yet acknowledged."""
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])

    def prune_sent(self, keep: int = 10_000) -> None:
        """Drop acknowledged events beyond the newest ``keep``."""
        with self._lock:
            self.db.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND seq NOT IN "
                "(SELECT seq FROM outbox WHERE sent_at IS NOT NULL ORDER BY seq DESC LIMIT ?)", [keep])


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
