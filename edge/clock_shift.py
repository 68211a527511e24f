"""Moving the gallery's clock-dependent stamps by a step of the wall clock (:mod:`dangol_edge.clock`): retention's
``last_seen_at``/``updated_at`` and a running model upgrade's start (``meta``
:data:`~dangol_edge.gallery_models.UPGRADE_STARTED_KEY`). Used by the running daemon's repair of a step it saw
(:meth:`~dangol_edge.gallery_expiry.GalleryExpiry.shift_stamps`) and by the clock anchor's repair of one it did not
(:func:`~dangol_edge.clock_anchor.reconcile`), inside their transactions (``db``: the gallery's sqlite-utils
database, its lock held). Stamps are ISO 8601 UTC with whole seconds (they compare as text)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from .gallery_models import UPGRADE_STARTED_KEY

log = logging.getLogger(__name__)


def iso(ts: datetime) -> str:
    """``ts`` as the gallery writes stamps: ISO 8601 UTC, whole seconds."""
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds")


def stamp(text: str | None, row: str, column: str) -> datetime | None:
    """The aware stamp in ``text``, or None when it cannot be read (logged, naming ``row`` and ``column``: it is left
    as written, and the rest of the repair goes on)."""
    try:
        ts = datetime.fromisoformat(text)
        if ts.tzinfo is None:
            raise ValueError("no time zone")
        return ts
    except (TypeError, ValueError) as exc:
        log.warning("%s %s: stamp %r cannot be read (%s); not moved with the clock's step", row, column, text, exc)
        return None


def move_seen(db, since: datetime, before: datetime, delta: timedelta) -> int:
    """Move every ``last_seen_at`` and ``updated_at`` after ``since`` up to ``before`` by ``delta``: the stamps written
    in the old timeline of a step forward (``since``: when this boot's daemon started, in that timeline; ``before``:
    where the clock would be now without the step). Returns how many stamps moved."""
    moved = 0
    for column in ("last_seen_at", "updated_at"):
        rows = db.execute(f"SELECT id, {column} FROM customers WHERE {column} > ? AND {column} <= ?",
                          [iso(since), iso(before)]).fetchall()
        for cid, text in rows:
            if (ts := stamp(text, cid, column)) is not None:
                db.execute(f"UPDATE customers SET {column} = ? WHERE id = ?", [iso(ts + delta), cid])
                moved += 1
    return moved


def upgrade_started(db) -> datetime | None:
    """When the running model upgrade started (None: none runs, or the stamp cannot be read: logged)."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", [UPGRADE_STARTED_KEY]).fetchone()
    return stamp(row[0], "meta", UPGRADE_STARTED_KEY) if row is not None else None


def set_upgrade_started(db, ts: datetime) -> None:
    """Move the running model upgrade's start to ``ts`` (only when one runs)."""
    db.execute("UPDATE meta SET value = ? WHERE key = ?", [iso(ts), UPGRADE_STARTED_KEY])
