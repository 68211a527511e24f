"""The gallery's clock anchor: pending sign-ups keep their lifetime — and a running model upgrade its age, and regulars
seen since the box booted their time — across a wall-clock step the running daemon did not see: one while it was
stopped, or across a reboot (the rule and its reasons: :mod:`dangol_edge.clock`).

The anchor is one ``meta`` row (:data:`ANCHOR_KEY`, JSON): the boot id, the boot clock (seconds of
``CLOCK_BOOTTIME``), the wall clock (ISO 8601 UTC) of one moment in the timeline the pending sign-ups' stamps are in,
whether the system confirmed the clock then, and since when this boot's daemons wrote retention stamps in that
timeline (``since``). :func:`reconcile` (each housekeeping pass, before sign-ups expire) compares it with the clocks
now and moves the stamps (``created_at`` and ``expires_at`` together, so each keeps its lifetime ``expires_at −
created_at``), the model upgrade's start and, after a step forward in the same boot, retention's stamps written since
``since`` (:mod:`dangol_edge.clock_shift`); :func:`move_anchor` keeps it in step with the running daemon's own repair
of a step (:meth:`~dangol_edge.gallery_expiry.GalleryExpiry.shift_stamps`). It is written at the first pass, after a
step or a reboot, every :data:`REFRESH_S` while sign-ups wait or a model upgrade runs (a reboot then loses at most
that much of their known age), else daily (:data:`REFRESH_IDLE_S`): an idle box does not write its memory card at
every pass.

A gallery without an anchor (the first pass of this version) trusts the wall clock once, as before. Limits, all on
the side of a longer life, never a shorter one: a sign-up made (by ``dangol-edge enroll --pending``) while the daemon
was stopped and before a forward step is moved with the older ones; one made just before a backward step the daemon
did not see is not moved back.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from . import clock
from .clock_shift import move_seen, set_upgrade_started, upgrade_started
from .gallery_models import UPGRADE_STARTED_KEY

log = logging.getLogger(__name__)

#: The anchor's key in the gallery's ``meta`` table.
ANCHOR_KEY = "clock_anchor"
#: The ``meta`` key of the seconds the box has waited for NTP to synchronise the clock, across daemon starts
#: (:attr:`~dangol_edge.clock.ClockWatch.sync_waited_s`; absent: none).
SYNC_WAIT_KEY = "clock_sync_waited_s"
#: While sign-ups wait or a model upgrade runs, the anchor is written again after this many seconds of the boot clock.
REFRESH_S = 300.0
#: Without sign-ups, after this many (NTP slews the wall and boot clocks alike, so only a step parts them; a daily
#: write keeps anything else from adding up).
REFRESH_IDLE_S = 86_400.0


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Anchor:
    """One moment on both clocks. ``boot``: the boot id; ``boot_s``: the boot clock, seconds; ``wall``: the wall clock
    (aware UTC); ``confirmed``: the system said the clock was synchronised
    (:func:`~dangol_edge.clock.clock_confirmed`); ``since``: when this boot's first daemon's housekeeping first ran,
    on the anchor's wall clock (moved with each step repaired since; None in an anchor of an earlier version): the
    retention stamps after it are in the anchor's timeline."""

    boot: str
    boot_s: float
    wall: datetime
    confirmed: bool
    since: datetime | None = None

    def dumps(self) -> str:
        d = {"boot": self.boot, "boot_s": self.boot_s, "wall": self.wall.isoformat(), "confirmed": self.confirmed}
        return json.dumps(d | ({"since": self.since.isoformat()} if self.since is not None else {}))

    @classmethod
    def loads(cls, text: str | None) -> "Anchor | None":
        """The anchor in ``text``, or None when there is none or it cannot be read (logged: a new one is written)."""
        if text is None:
            return None
        try:
            d = json.loads(text)
            wall = datetime.fromisoformat(d["wall"])
            if wall.tzinfo is None:
                raise ValueError("wall clock without a zone")
            since = datetime.fromisoformat(d["since"]) if d.get("since") is not None else None
            if since is not None and since.tzinfo is None:
                raise ValueError("since without a zone")
            return cls(str(d["boot"]), float(d["boot_s"]), wall, bool(d["confirmed"]), since)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("the gallery's clock anchor cannot be read (%s: %s); written afresh", type(exc).__name__, exc)
            return None


def read_anchor(db) -> Anchor | None:
    """The gallery's anchor (``db``: its sqlite-utils database), or None."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", [ANCHOR_KEY]).fetchone()
    return Anchor.loads(row[0] if row else None)


def _write(db, anchor: Anchor) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [ANCHOR_KEY, anchor.dumps()])


def _pending(db) -> list[tuple[str, datetime, datetime]]:
    """(id, created_at, expires_at) of the pending sign-ups with a lifetime; one whose stamps cannot be read is left
    to the wall clock (logged)."""
    out = []
    for cid, created, expires in db.execute("SELECT id, created_at, expires_at FROM customers WHERE status = "
                                            "'pending' AND expires_at IS NOT NULL").fetchall():
        try:
            out.append((cid, datetime.fromisoformat(created), datetime.fromisoformat(expires)))
        except (TypeError, ValueError) as exc:
            log.warning("sign-up %s: its stamps cannot be read (%s); it expires by the wall clock alone", cid, exc)
    return out


def _waiting(db) -> bool:
    """Whether a pending sign-up with a lifetime waits, or a model upgrade runs (their age is what the anchor keeps)."""
    return db.execute("SELECT 1 FROM customers WHERE status = 'pending' AND expires_at IS NOT NULL LIMIT 1"
                      ).fetchone() is not None or db.execute("SELECT 1 FROM meta WHERE key = ?", [UPGRADE_STARTED_KEY]
                                                             ).fetchone() is not None


def _set(db, cid: str, created: datetime, expires: datetime) -> None:
    db.execute("UPDATE customers SET created_at = ?, expires_at = ? WHERE id = ?", [_iso(created), _iso(expires), cid])


def _due(anchor: Anchor | None, boot: str, boot_s: float, now: datetime, waiting: bool) -> str | None:
    """What :func:`reconcile` must do: ``first``, ``forward``, ``backward``, ``reboot``, ``refresh`` or None."""
    if anchor is None:
        return "first"
    if anchor.boot != boot:
        return "reboot"
    drift = (now - anchor.wall).total_seconds() - (boot_s - anchor.boot_s)
    if drift > clock.STEP_TOLERANCE_S:
        return "forward"
    if drift < -clock.STEP_TOLERANCE_S:
        return "backward"
    return "refresh" if boot_s - anchor.boot_s >= (REFRESH_S if waiting else REFRESH_IDLE_S) else None


def reconcile(db, now: datetime, lock) -> str | None:
    """Bring the pending sign-ups' stamps into the timeline of the wall clock ``now`` (the housekeeping pass's) by the
    rule of :mod:`dangol_edge.clock`, and write the anchor when due, in one transaction. Returns what was done
    (``first``, ``forward``, ``backward``, ``reboot``, ``refresh``) or None (nothing written).

    Args:
        db: the gallery's sqlite-utils database.  lock: the gallery's lock (held while reading and writing).
    Raises:
        sqlite3.Error: the gallery cannot be read, or the stamps need moving and cannot be written (nothing changed;
            the next pass tries again). An anchor alone that cannot be written is logged and tried again next pass.
    """
    boot, boot_s = clock.boot_id(), clock.boot_clock()
    with lock:
        seen = read_anchor(db)
        what = _due(seen, boot, boot_s, now, _waiting(db))
    if what is None:
        return None
    confirmed = clock.clock_confirmed()  # outside the lock (a system without adjtimex asks timedatectl)
    try:
        with lock, db.conn:
            db.execute("BEGIN IMMEDIATE")
            anchor = read_anchor(db)  # (only the housekeeping thread writes it: as read above)
            what = _due(anchor, boot, boot_s, now, _waiting(db))
            if what is None:
                return None
            moved = 0
            since = now if what in ("first", "reboot") or anchor.since is None else anchor.since
            if what == "forward":
                moved = _forward(db, anchor, boot_s, now)
            elif what == "backward":
                moved = _backward(db, now)
            elif what == "reboot" and not (anchor.confirmed and confirmed):
                moved = _rebase(db, anchor, boot_s, now)
            if what in ("forward", "backward"):
                since = anchor.since + (now - _expected(anchor, boot_s)) if anchor.since is not None else now
            _write(db, Anchor(boot, boot_s, now, confirmed, since))
    except sqlite3.Error as exc:
        if what in ("forward", "backward") or (what == "reboot" and not (seen.confirmed and confirmed)):
            raise  # the stamps are not in today's timeline: nothing may expire by them yet
        log.warning("the gallery's clock anchor could not be written (%s: %s); the next pass tries again (sign-ups "
                    "expire as usual meanwhile)", type(exc).__name__, exc)
        return None
    if moved and what == "reboot":
        log.info("after a reboot without a clock the system confirmed on both sides: %d pending sign-up(s) keep the "
                 "lifetime they surely have left (the time the box was off is not counted)", moved)
    elif moved:
        step = (now - anchor.wall).total_seconds() - (boot_s - anchor.boot_s)
        kept = "keep their remaining lifetime" if what == "forward" else "live at most their lifetime from now"
        log.warning("the wall clock stepped %+.0f s while the daemon was stopped: %d pending sign-up(s) %s", step,
                    moved, kept)
    return what


def _expected(anchor: Anchor, boot_s: float) -> datetime:
    """Where the wall clock would be now without a step since ``anchor`` (same boot)."""
    return anchor.wall + timedelta(seconds=boot_s - anchor.boot_s)


def _forward(db, anchor: Anchor, boot_s: float, now: datetime) -> int:
    """The wall clock stepped forward: stamps made before the step (at most where the clock would be without it) move
    with it — the sign-ups', the model upgrade's start, and retention's stamps this boot's daemons wrote (after the
    anchor's ``since``)."""
    expected = _expected(anchor, boot_s)
    step = now - expected
    rows = [r for r in _pending(db) if r[1] <= expected]
    for cid, created, expires in rows:
        _set(db, cid, created + step, expires + step)
    if (started := upgrade_started(db)) is not None and started <= expected:
        set_upgrade_started(db, started + step)
    if anchor.since is not None:
        move_seen(db, anchor.since, expected, step)
    return len(rows)


def _backward(db, now: datetime) -> int:
    """The wall clock stepped back (it was ahead): no sign-up lives beyond its lifetime from now, and a model upgrade
    runs at most its period from now. None is moved back: one made after the step cannot be told from one made before
    it."""
    if (started := upgrade_started(db)) is not None and started > now:
        set_upgrade_started(db, now)
    moved = 0
    for cid, created, expires in _pending(db):
        life = max(expires - created, timedelta(0))
        if expires > now + life:
            _set(db, cid, now, now + life)
            moved += 1
    return moved


def _rebase(db, anchor: Anchor, boot_s: float, now: datetime) -> int:
    """Another boot, the clock not confirmed on both sides: each sign-up keeps what it had left at the anchor (or at
    its making, if later), less the time surely passed since — this boot's uptime, or less for one that seems made in
    this boot —, and never more than its lifetime."""
    for cid, created, expires in (rows := _pending(db)):
        life = max(expires - created, timedelta(0))
        left = min(expires - max(anchor.wall, created), life)
        passed = min(max((now - created).total_seconds(), 0.0), max(boot_s, 0.0))
        new_expires = now + left - timedelta(seconds=passed)
        _set(db, cid, new_expires - life, new_expires)
    if (started := upgrade_started(db)) is not None:  # its age: what it had at the anchor, and this boot's uptime
        known = max(anchor.wall - started, timedelta(0)) + timedelta(seconds=max(boot_s, 0.0))
        if started < now - known:
            set_upgrade_started(db, now - known)
    return len(rows)


def move_anchor(db, step_s: float, confirmed: bool) -> None:
    """The running daemon repaired a step of ``step_s`` seconds (inside the caller's transaction): the anchor moves
    with the stamps, so :func:`reconcile` does not count the step again; ``confirmed``: the system's word on the clock
    now (:func:`~dangol_edge.clock.clock_confirmed`)."""
    anchor = read_anchor(db)
    if anchor is not None and anchor.boot == clock.boot_id():
        step = timedelta(seconds=step_s)
        since = anchor.since + step if anchor.since is not None else None
        _write(db, Anchor(anchor.boot, anchor.boot_s, anchor.wall + step, confirmed, since))
