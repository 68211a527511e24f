"""The ``erased`` table of :class:`~dangol_edge.state.StateStore`: customers erased on this box, so that their menus
are never cached here again.

A menu may reach the box after its customer was erased here: the broker still retains it (an erasure made at the
door reaches the cloud only as a *request*, which an owner may leave unconfirmed or dismiss — the cloud then keeps
the customer and goes on publishing their menus), or it was on its way when the erasure happened (a training publish
racing the cloud's erasure). Every reconnection or restart brings the retained copy again. So:

* every erasure of the state file (:meth:`~dangol_edge.state_outbox.OutboxTable.erase_customers`: the staff page,
  ``dangol-edge customers delete`` in its own process, an expired sign-up, retention, the cloud's erasures) records
  the customer ids in ``erased`` (``customer_id`` UUID text, ``erased_at`` ISO-8601 UTC) **in the same transaction**
  that deletes their cached menu and queued events — a failed erasure records nothing;
* :meth:`~dangol_edge.state.StateStore.put_menu` refuses a menu of a customer in ``erased`` (or whose erasure has
  begun in this process and not committed yet): not stored, counted in :attr:`ErasedTable.refused_menus`, logged
  (WARNING the first time for each customer, then DEBUG). The table is read on every menu, so an erasure made by
  another process counts at once, and after a restart.

**How long**: as long as a menu may still come, which has no safe time limit (the cloud may keep publishing menus
of a customer erased only here). So ids are kept by count, not by age: the newest :data:`ERASED_MAX` (100,000 ids,
about 12 MB at the bound with the index: more customers than one door erases in decades); beyond, the oldest go,
logged as a warning with how many. A customer id is never enrolled again on this box (a new sign-up gets a new UUID);
an operator who re-enrols one with ``dangol-edge enroll --customer-id`` lifts it with
:meth:`ErasedTable.lift_erasure`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone

log = logging.getLogger(__name__)

#: Erased customer ids kept in the state file at most; beyond, the oldest are forgotten (logged).
ERASED_MAX = 100_000


class ErasedTable:
    """The ``erased`` half of :class:`~dangol_edge.state.StateStore` (a mixin: it uses the store's ``db``,
    ``_lock``, ``path`` and the outbox's ``_erasing``).

    Attributes:
        refused_menus: menus refused because their customer was erased here.
    """

    def _init_erased(self) -> None:
        """Attributes only (no I/O): called by the store's constructor."""
        self.refused_menus = 0
        self._refusals_logged: set[str] = set()  # customer ids whose refusal was logged as a warning (bounded)

    @staticmethod
    def _create_erased(db) -> None:
        """Create the table (an older version's file has none)."""
        if "erased" not in db.table_names():
            db["erased"].create({"customer_id": str, "erased_at": str}, pk="customer_id")

    def _record_erased(self, ids: list[str]) -> None:
        """Record erased customer ids (lock held, inside the caller's transaction: the erasure's); an id erased again
        becomes the newest. Beyond :data:`ERASED_MAX` the oldest go (logged).

        Raises:
            sqlite3.Error: the file cannot be written (the caller's transaction rolls back).
        """
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        for cid in ids:  # delete + insert: a fresh rowid, so rowid order is the order of the erasures
            self.db.execute("DELETE FROM erased WHERE customer_id = ?", [cid])
            self.db.execute("INSERT INTO erased (customer_id, erased_at) VALUES (?, ?)", [cid, now])
        over = self.db.execute("SELECT COUNT(*) FROM erased").fetchone()[0] - ERASED_MAX
        if over > 0:
            self.db.execute("DELETE FROM erased WHERE rowid IN (SELECT rowid FROM erased ORDER BY rowid LIMIT ?)",
                            [over])
            log.warning("%s: more than %d customers erased here: the %d oldest are forgotten (a menu of theirs still "
                        "retained by the broker would be cached again)", self.path, ERASED_MAX, over)

    def is_erased(self, customer_id) -> bool:
        """Whether the customer was erased on this box (recorded in the file, by any process) or their erasure has
        begun in this process.

        Raises:
            sqlite3.Error: the file cannot be read.
        """
        cid = str(customer_id)
        with self._lock:
            return cid in self._erasing or self.db.execute(
                "SELECT 1 FROM erased WHERE customer_id = ?", [cid]).fetchone() is not None

    def _refuse_menu(self, customer_id: str) -> bool:
        """True (counted, logged) when a menu of ``customer_id`` must not be stored: they were erased here. Lock held.

        Raises:
            sqlite3.Error: the file cannot be read.
        """
        if not self.is_erased(customer_id):
            return False
        self.refused_menus += 1
        if customer_id not in self._refusals_logged:
            if len(self._refusals_logged) >= 10_000:  # bounded: some may be logged as warnings again
                self._refusals_logged.clear()
            self._refusals_logged.add(customer_id)
            log.warning("refused a menu of customer %s, erased on this box: not cached (%d refused so far)",
                        customer_id, self.refused_menus)
        else:
            log.debug("refused a menu of customer %s, erased on this box", customer_id)
        return True

    def erased_count(self) -> int:
        """Erased customer ids kept in the file.

        Raises:
            sqlite3.Error: the file cannot be read.
        """
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM erased").fetchone()[0])

    def lift_erasure(self, customer_ids: Iterable) -> int:
        """Forget that customers were erased here (one enrolled again under the same id), so their menus are cached
        again; returns how many were recorded.

        Raises:
            sqlite3.Error: the file cannot be written.
        """
        ids = sorted({str(c) for c in customer_ids})
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            n = sum(self.db.execute("DELETE FROM erased WHERE customer_id = ?", [cid]).rowcount for cid in ids)
            self._refusals_logged.difference_update(ids)
        return n
