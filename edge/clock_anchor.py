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

A gallery without an anchor (the first pass of this version) trusts the wall clock once, as before; so does one whose
anchor cannot be read (not JSON, a value of another type or out of range: :meth:`Anchor.parse`), which is written
afresh and reported (:class:`AnchorError`: the housekeeping pass counts and logs it). Limits, all on
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
#: An anchor's boot clock is read only in ``[0, BOOT_S_MAX)`` seconds (about 317 years: beyond any boot) …
BOOT_S_MAX = 1e10
#: … and its wall clock (and ``since``) only in ``[WALL_MIN, WALL_MAX)``: a Pi without a saved time boots at 1970, and
#: the anchor's arithmetic (adding up to :data:`BOOT_S_MAX`) stays inside the calendar Python can count.
WALL_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
WALL_MAX = datetime(9000, 1, 1, tzinfo=timezone.utc)


class AnchorError(ValueError):
    """:func:`reconcile` could not use something it read — a damaged anchor (written afresh), or stamps it could not
    move (left to the wall clock) —; raised after the rest was done and written, so that the housekeeping pass counts
    and logs it."""


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
    def parse(cls, text: str) -> "Anchor":
        """The anchor in ``text`` (as :meth:`dumps` writes it).

        Raises:
            ValueError: it is not such an anchor: not JSON, a field missing or of another type, ``boot`` empty,
                ``boot_s`` not a finite number in ``[0, BOOT_S_MAX)``, ``wall`` or ``since`` without a zone or outside
                ``[WALL_MIN, WALL_MAX)``, ``confirmed`` not true or false.
        """
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError(f"not a JSON object but {type(d).__name__}")
        boot, boot_s, confirmed = d.get("boot"), d.get("boot_s"), d.get("confirmed")
        if not isinstance(boot, str) or not boot:
            raise ValueError(f"boot {boot!r} is not a boot id")
        if isinstance(boot_s, bool) or not isinstance(boot_s, (int, float)) or not 0 <= boot_s < BOOT_S_MAX:
            raise ValueError(f"boot_s {boot_s!r} is not a boot clock reading (seconds in [0, {BOOT_S_MAX:g}))")
        if not isinstance(confirmed, bool):
            raise ValueError(f"confirmed {confirmed!r} is not true or false")
        wall = _when(d.get("wall"), "wall")
        since = _when(d["since"], "since") if d.get("since") is not None else None
        return cls(boot, float(boot_s), wall, confirmed, since)

    @classmethod
    def loads(cls, text: str | None) -> "Anchor | None":
        """The anchor in ``text``, or None when there is none or it cannot be read (:meth:`parse`; logged: a new one
        is written)."""
        if text is None:
            return None
        try:
            return cls.parse(text)
        except ValueError as exc:
            log.warning("the gallery's clock anchor cannot be read (%s); written afresh", exc)
            return None


def _when(value, field: str) -> datetime:
    """The aware moment ``value`` (ISO 8601) in ``[WALL_MIN, WALL_MAX)``, else ValueError naming ``field``."""
    try:
        ts = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} {value!r} is not an ISO 8601 moment") from None
    if ts.tzinfo is None:
        raise ValueError(f"{field} {value!r} has no time zone")
    if not WALL_MIN <= ts < WALL_MAX:
        raise ValueError(f"{field} {value!r} is outside [{WALL_MIN:%Y}, {WALL_MAX:%Y})")
    return ts


def read_anchor(db) -> Anchor | None:
    """The gallery's anchor (``db``: its sqlite-utils database), or None (none, or it cannot be read: logged)."""
    return Anchor.loads(_text(db))


def _text(db) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [ANCHOR_KEY]).fetchone()
    return row[0] if row else None


def _read(db) -> tuple[Anchor | None, str | None]:
    """The gallery's anchor (None: none, or it cannot be read) and why it cannot be read (None: it can, or none)."""
    text = _text(db)
    if text is None:
        return None, None
    try:
        return Anchor.parse(text), None
    except ValueError as exc:
        return None, f"the gallery's clock anchor {repr(text)[:120]} cannot be read ({exc}); written afresh"


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
        OSError: this boot's id cannot be read yet (:func:`~dangol_edge.clock.boot_id`; nothing read or changed: no
            sign-up may expire by stamps maybe in another timeline; the next pass asks again).
        sqlite3.Error: the gallery cannot be read, or the stamps need moving and cannot be written (nothing changed;
            the next pass tries again). An anchor alone that cannot be written is logged and tried again next pass.
        AnchorError: the anchor could not be read (it was written afresh: the wall clock is trusted once, as on the
            first pass), or some stamps could not be moved (left to the wall clock; the rest was done); or a value
            made the repair fail (OverflowError, ValueError: nothing moved, the anchor written afresh so that the
            next pass does not fail alike).
    """
    boot, boot_s = clock.boot_id(), clock.boot_clock()
    with lock:
        seen, _ = _read(db)
        what = _due(seen, boot, boot_s, now, _waiting(db))
    if what is None:
        return None
    confirmed = clock.clock_confirmed()  # outside the lock (a system without adjtimex asks timedatectl)
    problems: list[str] = []
    try:
        with lock, db.conn:
            db.execute("BEGIN IMMEDIATE")
            anchor, damage = _read(db)  # (only the housekeeping thread writes it: as read above)
            what = _due(anchor, boot, boot_s, now, _waiting(db))
            if what is None:
                return None
            problems += [damage] if damage else []
            moved = 0
            since = now if what in ("first", "reboot") or anchor.since is None else anchor.since
            if what == "forward":
                moved = _forward(db, anchor, boot_s, now, problems)
            elif what == "backward":
                moved = _backward(db, now, problems)
            elif what == "reboot" and not (anchor.confirmed and confirmed):
                moved = _rebase(db, anchor, boot, boot_s, now, problems)
            if what in ("forward", "backward"):
                since = anchor.since + (now - _expected(anchor, boot_s)) if anchor.since is not None else now
            _write(db, Anchor(boot, boot_s, now, confirmed, since))
    except sqlite3.Error as exc:
        if what in ("forward", "backward") or (what == "reboot" and not (seen.confirmed and confirmed)) or problems:
            raise  # the stamps are not in today's timeline (or the anchor is damaged): nothing may expire by them yet
        log.warning("the gallery's clock anchor could not be written (%s: %s); the next pass tries again (sign-ups "
                    "expire as usual meanwhile)", type(exc).__name__, exc)
        return None
    except (OverflowError, ValueError) as exc:  # a value beyond the calendar: rolled back
        _write_afresh(db, lock, boot, boot_s, now, confirmed)
        raise AnchorError(f"the clock's {what} could not be repaired ({type(exc).__name__}: {exc}): nothing moved; "
                          "the anchor was written afresh (the wall clock is trusted from now)") from exc
    if moved and what == "reboot":
        log.info("after a reboot without a clock the system confirmed on both sides: %d pending sign-up(s) keep the "
                 "lifetime they surely have left (the time the box was off is not counted)", moved)
    elif moved:
        step = (now - anchor.wall).total_seconds() - (boot_s - anchor.boot_s)
        kept = "keep their remaining lifetime" if what == "forward" else "live at most their lifetime from now"
        log.warning("the wall clock stepped %+.0f s while the daemon was stopped: %d pending sign-up(s) %s", step,
                    moved, kept)
    if problems:
        raise AnchorError("; ".join(problems))
    return what


def _write_afresh(db, lock, boot: str, boot_s: float, now: datetime, confirmed: bool) -> None:
    """Write a new anchor at ``now`` (a repair failed on a value: the next pass must not fail alike); one that cannot
    be written is logged (the caller raises)."""
    try:
        with lock, db.conn:
            db.execute("BEGIN IMMEDIATE")
            _write(db, Anchor(boot, boot_s, now, confirmed, now))
    except sqlite3.Error as exc:
        log.warning("the gallery's clock anchor could not be written afresh (%s: %s); the next pass tries again",
                    type(exc).__name__, exc)


def _expected(anchor: Anchor, boot_s: float) -> datetime:
    """Where the wall clock would be now without a step since ``anchor`` (same boot)."""
    return anchor.wall + timedelta(seconds=boot_s - anchor.boot_s)


def _move(db, problems: list[str], cid: str, fn, *args) -> int:
    """Set sign-up ``cid``'s ``created_at`` and ``expires_at`` to ``fn(*args)`` (None: unchanged); returns 1 when set.
    Stamps that cannot be counted (near the calendar's ends) are left to the wall clock, noted in ``problems``."""
    try:
        stamps = fn(*args)
        if stamps is None:
            return 0
        _set(db, cid, *stamps)
        return 1
    except (OverflowError, ValueError) as exc:
        problems.append(f"sign-up {cid}: its stamps cannot be moved ({exc}); it expires by the wall clock alone")
        return 0


def _forward(db, anchor: Anchor, boot_s: float, now: datetime, problems: list[str]) -> int:
    """The wall clock stepped forward: stamps made before the step (at most where the clock would be without it) move
    with it — the sign-ups', the model upgrade's start, and retention's stamps this boot's daemons wrote (after the
    anchor's ``since``)."""
    expected = _expected(anchor, boot_s)
    step = now - expected
    moved = sum(_move(db, problems, cid, lambda c, e: (c + step, e + step), created, expires)
                for cid, created, expires in _pending(db) if created <= expected)
    if (started := upgrade_started(db)) is not None and started <= expected:
        set_upgrade_started(db, started + step)
    if anchor.since is not None:
        move_seen(db, anchor.since, expected, step)
    return moved


def _backward(db, now: datetime, problems: list[str]) -> int:
    """The wall clock stepped back (it was ahead): no sign-up lives beyond its lifetime from now, and a model upgrade
    runs at most its period from now. None is moved back: one made after the step cannot be told from one made before
    it."""
    if (started := upgrade_started(db)) is not None and started > now:
        set_upgrade_started(db, now)

    def cut(created: datetime, expires: datetime) -> tuple[datetime, datetime] | None:
        life = max(expires - created, timedelta(0))
        return (now, now + life) if expires > now + life else None
    return sum(_move(db, problems, cid, cut, created, expires)
               for cid, created, expires in _pending(db))


def _rebase(db, anchor: Anchor, boot: str, boot_s: float, now: datetime, problems: list[str]) -> int:
    """Another boot, the clock not confirmed on both sides: each sign-up keeps what it had left at the anchor (or at
    its making, if later), less the time surely passed since — at most this boot's uptime
    (:func:`~dangol_edge.clock.uptime`: where the kernel gives no boot id, this daemon's running time) —, and never
    more than its lifetime."""
    up = timedelta(seconds=clock.uptime(boot, boot_s))

    def rebased(created: datetime, expires: datetime) -> tuple[datetime, datetime]:
        life = max(expires - created, timedelta(0))
        start = max(anchor.wall, created)  # its age up to here is already off what it has left
        left = min(expires - start, life)
        new_expires = now + left - min(max(now - start, timedelta(0)), up)
        return new_expires - life, new_expires
    moved = sum(_move(db, problems, cid, rebased, created, expires)
                for cid, created, expires in _pending(db))
    if (started := upgrade_started(db)) is not None:  # its age: what it had at the anchor, and this boot's uptime
        known = max(anchor.wall - started, timedelta(0)) + up
        if started < now - known:
            set_upgrade_started(db, now - known)
    return moved


def move_anchor(db, step_s: float, confirmed: bool) -> None:
    """The running daemon repaired a step of ``step_s`` seconds (inside the caller's transaction): the anchor moves
    with the stamps, so :func:`reconcile` does not count the step again; ``confirmed``: the system's word on the clock
    now (:func:`~dangol_edge.clock.clock_confirmed`)."""
    anchor = read_anchor(db)
    if anchor is not None and anchor.boot == clock.boot_id():
        step = timedelta(seconds=step_s)
        since = anchor.since + step if anchor.since is not None else None
        _write(db, Anchor(anchor.boot, anchor.boot_s, anchor.wall + step, confirmed, since))
