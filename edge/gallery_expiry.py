"""The gallery's clock-dependent rows: ``last_seen_at`` (retention), pending sign-ups' ``expires_at``, and what a step of
the wall clock does to them (:mod:`dangol_edge.clock`). A mixin of :class:`~dangol_edge.gallery.Gallery`.

Stamps are ISO 8601 UTC with seconds (``2026-12-07T06:53:31+00:00``): they compare as text."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection
from datetime import datetime, timedelta, timezone

from . import clock
from .clock_anchor import move_anchor, read_anchor, reconcile
from .clock_shift import move_seen, set_upgrade_started, stamp, upgrade_started

log = logging.getLogger(__name__)


class TooManyUnseen(RuntimeError):
    """A retention pass would erase more regulars than its limit: nothing was erased (the message says how many)."""

    def __init__(self, due: int, active: int, limit: int):
        super().__init__(f"retention would erase {due} of {active} regulars at once (more than {limit}) on a clock "
                         "not yet confirmed: nothing erased; erased once the clock has been steady for a day or the "
                         "system has synchronised it")
        self.due, self.active, self.limit = due, active, limit


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds")


class GalleryExpiry:
    """Retention, sign-up expiry and their repair after a clock step (needs the gallery's ``db``, ``_lock``,
    ``_delete`` and ``wipe_if_due``)."""

    def _touched_ids(self) -> set:
        """Customers :meth:`touch` stamped since the last :meth:`settle_stamps` (under ``_lock``)."""
        return self.__dict__.setdefault("_touched", set())

    def touch(self, customer_id: str, now: datetime | None = None) -> None:
        """Record that a customer was recognised now (drives retention); the next housekeeping pass checks the stamp
        against its clock (:meth:`settle_stamps`)."""
        ts = _iso(now or datetime.now(timezone.utc))
        with self._lock:
            self.db.execute("UPDATE customers SET last_seen_at = ? WHERE id = ?", [ts, customer_id])
            self._touched_ids().add(customer_id)

    def expire_unseen(self, days: int, now: datetime | None = None, limit: int | None = None) -> list[str]:
        """Erase active customers neither seen nor enrolled/updated in the last ``days`` days; returns their ids.
        Then wipes the ``-wal`` file (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_if_due`, also when an earlier
        deletion's wipe did not finish).

        Args:
            now: the clock to decide by (default: the wall clock now).
            limit: erase nothing when more than this many are due (None: no limit).
        Raises:
            TooManyUnseen: more than ``limit`` are due (nothing erased).
        """
        cutoff = _iso((now or datetime.now(timezone.utc)) - timedelta(days=days))
        ids = [r[0] for r in self.db.execute(
            "SELECT id FROM customers WHERE status = 'active' AND COALESCE(last_seen_at, updated_at) < ?", [cutoff])]
        if limit is not None and len(ids) > limit:
            active = self.db.execute("SELECT COUNT(*) FROM customers WHERE status = 'active'").fetchone()[0]
            raise TooManyUnseen(len(ids), active, limit)
        for cid in ids:
            self._delete(cid, report=True)
        self.wipe_if_due()
        return ids

    def count_active(self) -> int:
        """Active customers (regulars)."""
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM customers WHERE status = 'active'").fetchone()[0])

    def expire_pending(self, now: datetime | None = None) -> list[str]:
        """Erase pending customers past their ``expires_at``; returns their ids. First their stamps are brought into
        the wall clock's timeline after a step the daemon did not see (while it was stopped, or across a reboot:
        :func:`~dangol_edge.clock_anchor.reconcile`). Then wipes the ``-wal`` file as :meth:`expire_unseen` does (each
        housekeeping pass: a wipe an earlier deletion could not finish is retried).

        Raises:
            sqlite3.Error: the gallery cannot be read or written (nothing erased by the step that failed).
            OSError: this boot's id cannot be read now (nothing erased this pass: :func:`~dangol_edge.clock.boot_id`).
            AnchorError: the gallery's clock anchor was damaged, or a stamp could not be moved (the anchor is written
                afresh; nothing erased this pass: :func:`~dangol_edge.clock_anchor.reconcile`).
        """
        now = now or datetime.now(timezone.utc)
        reconcile(self.db, now, self._lock)
        ts = _iso(now)
        ids = [r[0] for r in self.db.execute(
            "SELECT id FROM customers WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?", [ts])]
        for cid in ids:
            self._delete(cid, report=True)
        self.wipe_if_due()
        return ids

    def delete_reported(self, customer_id: str) -> None:
        """:meth:`~dangol_edge.gallery.Gallery.delete` for an erasure the cloud must hear of (the staff page's erase and
        discard): the same transaction records the id for the report (:meth:`unreported_erasures`), so it survives a
        state file that cannot be written now and a restart before it can; :meth:`erasure_reported` once the report is
        queued. Then the ``-wal`` file is wiped as :meth:`~dangol_edge.gallery.Gallery.delete` does.

        Raises:
            UnknownCustomer: no such id.  sqlite3.Error: the gallery cannot be written (nothing erased, nothing
                recorded).
        """
        self._delete(customer_id, report=True)
        self.wipe_deleted()

    def unreported_erasures(self) -> list[str]:
        """Customers erased here whose erasure the cloud has not been told of: by :meth:`expire_unseen`,
        :meth:`expire_pending` and :meth:`delete_reported` (recorded by the erasure's own transaction, so a daemon
        killed or unable to write its state file before the report reports them at its next start)."""
        with self._lock:
            return [r[0] for r in self.db.execute("SELECT customer_id FROM erasure_reports ORDER BY rowid")]

    def erasure_reported(self, customer_id: str) -> None:
        """The erasure of ``customer_id`` is queued for the cloud: forget it (the ``-wal`` file is wiped by the next
        :meth:`~dangol_edge.sqlite.SQLiteFile.wipe_if_due`)."""
        with self._lock:
            self.db.execute("DELETE FROM erasure_reports WHERE customer_id = ?", [customer_id])
            self._wipe_due = True

    def forget_report(self, customer_id: str) -> None:
        """:meth:`erasure_reported` once the report is queued for the cloud; a record that cannot be cleared now stays
        (logged): the next start reports the erasure once more, never less."""
        try:
            self.erasure_reported(customer_id)
        except sqlite3.Error as exc:
            log.warning("the erasure of %s is queued for the cloud, but the gallery's record of it could not be cleared "
                        "(%s): the next start reports it again", customer_id, exc)

    def pending_ids(self) -> frozenset[str]:
        """Ids of the pending sign-ups now: the housekeeping pass's note of which sign-ups surely predate a step the
        next pass may find (:meth:`shift_stamps`)."""
        with self._lock:
            return frozenset(r[0] for r in self.db.execute("SELECT id FROM customers WHERE status = 'pending'"))

    def shift_stamps(self, step_s: float, made_before: datetime, known: Collection[str] = (),
                     seen_since: datetime | None = None) -> int:
        """The wall clock stepped by ``step_s`` seconds (``made_before``: where it would be now without the step): bring
        the stamps the running daemon knows to be in the old timeline into the new one, in one transaction.

        * Pending sign-ups made before the step (``created_at`` at most ``made_before``) move ``created_at`` and
          ``expires_at`` by the step, so each keeps the lifetime it had left (and its age on the staff page). After a
          step back only the ``known`` ones — pending at the pass before the step, so surely made before it — move;
          one made since that pass may be in either timeline (one made in the seconds after the step is too): it lives
          at most its lifetime from now and is never cut shorter than that. One made in another timeline (a previous
          boot's, after the box started with a clock behind) is left alone.
        * A running model upgrade's start (``meta`` :data:`~dangol_edge.gallery_models.UPGRADE_STARTED_KEY`) moves by
          the step too: a step never ages it.
        * After a step forward, retention's ``last_seen_at`` and ``updated_at`` written after ``seen_since`` (the
          daemon's first pass, in the old timeline — or this boot's first daemon's, kept by the clock anchor —; stamps
          have whole seconds: one in that second is older) up to ``made_before`` move by the step: a regular seen or
          activated on a clock behind is not erased early once NTP corrects it. (A stamp from before the box was off
          that is in that window moves too: it lives longer, never shorter. A step back leaves them:
          :meth:`settle_stamps` keeps them out of the future.)

        The gallery's clock anchor moves with them (:func:`~dangol_edge.clock_anchor.move_anchor`). Returns how many
        sign-ups changed.

        Raises:
            sqlite3.Error: the gallery cannot be written (nothing changed).
        """
        delta, confirmed, known, moved = timedelta(seconds=step_s), clock.clock_confirmed(), set(known), 0
        now = made_before + delta
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            rows = self.db.execute("SELECT id, created_at, expires_at FROM customers WHERE status = 'pending' AND "
                                   "expires_at IS NOT NULL AND created_at <= ?", [_iso(made_before)]).fetchall()
            for cid, created, expires in rows:
                created, expires = stamp(created, cid, "created_at"), stamp(expires, cid, "expires_at")
                if created is None or expires is None:
                    continue
                if step_s > 0 or cid in known:
                    created, expires = created + delta, expires + delta
                elif expires > now + (life := max(expires - created, timedelta(0))):
                    created, expires = now, now + life  # either timeline: at most its lifetime from now
                else:
                    continue
                self.db.execute("UPDATE customers SET created_at = ?, expires_at = ? WHERE id = ?",
                                [_iso(created), _iso(expires), cid])
                moved += 1
            if (started := upgrade_started(self.db)) is not None and started <= made_before:
                set_upgrade_started(self.db, started + delta)
            anchor = read_anchor(self.db)
            if anchor is not None and anchor.boot == clock.boot_id() and anchor.since is not None:
                seen_since = min(anchor.since, seen_since or anchor.since)  # this boot's earlier daemons' too
            if step_s > 0 and seen_since is not None:
                move_seen(self.db, seen_since, made_before, delta)
            move_anchor(self.db, step_s, confirmed)
        return moved

    def settle_stamps(self, now: datetime, stepped: float = 0.0) -> int:
        """Keep retention's stamps out of the future, once per housekeeping pass with that pass's clock ``now``.

        The customers :meth:`touch` stamped since the previous call get ``now`` when the clock ``stepped`` in between
        (their stamp is in the old timeline), else at most ``now`` (a stamp beyond it was made while the clock was
        briefly ahead). After a step back every ``last_seen_at`` and ``updated_at`` beyond ``now`` (made while the
        clock was ahead) becomes ``now``. Returns how many stamps changed."""
        ts = _iso(now)
        changed = 0
        with self._lock:
            touched = sorted(self._touched_ids())
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                for cid in touched:
                    changed += self.db.execute(
                        "UPDATE customers SET last_seen_at = ? WHERE id = ? AND (? OR last_seen_at > ?)",
                        [ts, cid, bool(stepped), ts]).rowcount
                if stepped < 0:
                    for column in ("last_seen_at", "updated_at"):
                        changed += self.db.execute(f"UPDATE customers SET {column} = ? WHERE {column} > ?",
                                                   [ts, ts]).rowcount
            self._touched_ids().difference_update(touched)  # kept for the next pass when the write failed
        return changed
