"""Whether the wall clock can be trusted to erase people by it (sign-up expiry, retention).

A Raspberry Pi has no real-time clock: it boots with the last saved time (``fake-hwclock``) and steps forward when NTP
syncs; a wrong manual date or a bad NTP answer steps it too. Expiry and retention compare the wall clock with stamps
written by the wall clock, so a step would erase people early. :class:`ClockWatch` compares, once per housekeeping
pass, how far the wall clock moved with how far the boot clock (``CLOCK_BOOTTIME``: never steps, counts suspend)
moved: a difference beyond :data:`STEP_TOLERANCE_S` is a step. The housekeeping worker then keeps pending sign-ups'
remaining lifetime (after a step back, one made since the previous pass — in either timeline — lives at most its
lifetime from now, never less), moves a running model upgrade's start with the step (a step never ages it) and, after
a step forward, the ``last_seen_at``/``updated_at`` this boot's daemons wrote in the old timeline; it holds retention
— and the upgrade's deadline — until the clock has been steady for :data:`STEADY_S` (and, where the system says
whether NTP has synchronised it, until it has, or the box has waited :data:`SYNC_WAIT_MAX_S` of running for it,
counted across daemon starts), and lets a pass erase most regulars at once only on a clock the system confirmed or
that has been steady for :data:`TRUST_AFTER_S` (:func:`retention_cap`).

A step while the daemon is *stopped* (an update, a crash, or NTP syncing during the next boot before the daemon
starts) is not seen by :class:`ClockWatch`, which starts afresh with each daemon. For pending sign-ups — the only
erasure the clock decides within hours — and a running model upgrade's age the gallery keeps an *anchor* (which also
carries, within one boot, retention's stamps over a step forward): the boot id, the boot clock and the wall clock
of one moment, and whether the system confirmed the clock then (:mod:`dangol_edge.clock_anchor`). The rule, and why:

* same boot: the boot clock says exactly how much time passed since the anchor, so any disagreement of the wall clock
  is a step; sign-ups made before it keep their remaining lifetime (forward), or are cut to at most their lifetime
  from now (backward: a clock that was ahead must not keep them for ever, and none is erased early);
* another boot, the previous one's clock and this one's both confirmed by the system (NTP): the wall clock is right
  on both sides, so the time the box was off counts;
* another boot otherwise: the old stamps are in a timeline that may be off by any amount (fake-hwclock's saved time),
  and how long the box was off is unknown. A sign-up keeps the lifetime it had at the anchor (refreshed every few
  minutes while sign-ups wait) less this boot's uptime — the only time surely passed since —: the time the box was
  off is not counted (never erased early), and its life is still bounded by its lifetime of the box running. Where
  the kernel gives no boot id (:func:`boot_id`), every daemon start counts as another boot, and the time surely
  passed is then the new daemon's running time (:func:`uptime`), never the box's.

A model upgrade's start follows the same rule (forward: moved with the step; backward: at most its period from now;
another boot not confirmed on both sides: its age is what it had at the anchor plus this boot's uptime). So on a box
without a clock that is switched off — where NTP's step after each boot is the time it was off — the upgrade's period
counts the time the box ran: it ends later than ``embedder.upgrade_days`` of the calendar, never sooner.

Whether the system confirms the clock is the kernel's NTP state (:func:`clock_confirmed`: ``adjtimex``, synchronised
unless ``STA_UNSYNC``, what ``timedatectl`` reports as NTPSynchronized, for systemd-timesyncd, chrony or ntpd alike).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

log = logging.getLogger(__name__)

#: A disagreement of the wall and boot clocks between two passes beyond this many seconds is a step. NTP slews at most
#: 500 ppm (0.5 ms per second: 15 ms over a 30 s pass), so only a step (or suspend without CLOCK_BOOTTIME) gets here.
STEP_TOLERANCE_S = 10.0
#: Retention is held until no step was seen for this many seconds (NTP corrects a bad answer within minutes).
STEADY_S = 600.0
#: Where the system runs an NTP client that has not synchronised the clock yet, retention waits at most this many
#: seconds of the box running unsynchronised since it was last synchronised — counted across daemon starts and
#: reboots (:attr:`ClockWatch.sync_waited_s`, kept in the gallery by the housekeeping worker), so a box switched off
#: every night still erases —; an offline box must still erase (the share cap then still guards it).
SYNC_WAIT_MAX_S = 86_400.0
#: A clock the system does not confirm as synchronised is trusted for large erasures after this many steady seconds.
TRUST_AFTER_S = 86_400.0
#: On a clock not yet trusted, a pass erases at most this share of the active regulars for retention …
RETENTION_CAP_SHARE = 0.2
#: … or this many, whichever is more (a small gallery's few unseen regulars are still erased at once).
RETENTION_CAP_MIN = 5
#: systemd-timesyncd's runtime folder, and the file it creates there once it has synchronised the clock.
TIMESYNC_DIR = Path("/run/systemd/timesync")
#: How often (seconds) the system is asked again whether the clock is synchronised.
SYNC_ASK_EVERY_S = 60.0


def boot_clock() -> float:
    """Seconds of ``CLOCK_BOOTTIME`` (never stepped, counts suspend), else the monotonic clock."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


def system_synchronised() -> bool | None:
    """Whether the system says NTP has synchronised the clock: True, False (an NTP client runs but has not), or None
    when the system does not tell (no systemd-timesyncd and no ``timedatectl`` answer, or NTP switched off)."""
    if (TIMESYNC_DIR / "synchronized").exists():
        return True
    if TIMESYNC_DIR.is_dir():  # timesyncd runs and has not synchronised yet
        return False
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTP", "-p", "NTPSynchronized"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if props.get("NTPSynchronized") == "yes":
        return True
    return False if props.get("NTP") == "yes" else None


#: The kernel's id of this boot (a new one at every boot).
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
#: ``adjtimex``'s status bit "clock not synchronised", and its return value for the same (``<sys/timex.h>``).
STA_UNSYNC, TIME_ERROR = 0x0040, 5
_PROCESS_BOOT = f"process-{uuid.uuid4()}"  # where the kernel gives no boot id: every daemon counts as a new boot
#: Where the kernel's boot id exists but cannot be read (an error other than its absence), :func:`boot_id` raises for
#: at most this many seconds of the boot clock since this process first asked, then takes the process's own id.
BOOT_ID_RETRY_S = 600.0


class _BootId:
    """This process's answer to :func:`boot_id`, read once: a boot id cannot change within a process (so one read that
    fails later cannot make a running daemon look rebooted)."""

    def __init__(self):
        self.id: str | None = None  # the answer, once known
        self.own = False  # it is this process's own id (the kernel gives none)
        self.first_asked: float | None = None  # boot clock of the first question (this process's start, at most)


_BOOT = _BootId()


def boot_id() -> str:
    """This boot's id (Linux: ``/proc/sys/kernel/random/boot_id``, read once per process); where there is none (the
    file is missing or empty: not Linux), one per process, so that every start counts as a new boot (:func:`uptime`
    then counts only this process's running time).

    Raises:
        OSError: the file exists but cannot be read now (e.g. ``EMFILE``): ask again later — for at most
            :data:`BOOT_ID_RETRY_S` of this process, after which it takes its own id (logged).
    """
    known = _BOOT
    if known.id is not None:
        return known.id
    asked = boot_clock()
    if known.first_asked is None:
        known.first_asked = asked
    try:
        text = BOOT_ID_PATH.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        if asked - known.first_asked < BOOT_ID_RETRY_S:
            raise  # (the caller's step logs and counts it)
        log.error("this boot's id (%s) has not been readable for %.0f s (%s: %s): this daemon counts as a boot of its "
                  "own", BOOT_ID_PATH, asked - known.first_asked, type(exc).__name__, exc)
        text = ""
    known.id, known.own = (text, False) if text else (_PROCESS_BOOT, True)
    return known.id


def uptime(boot: str, boot_s: float) -> float:
    """The seconds surely passed since the boot ``boot`` (:func:`boot_id`) began, at the boot clock ``boot_s``
    (:func:`boot_clock`): ``boot_s``; for this process's own id (the kernel gives none: a restart looks like a new
    boot, and the boot clock counts the time before it too), the time since this process first asked for its id."""
    known = _BOOT
    if known.own and boot == known.id and known.first_asked is not None:
        return max(boot_s - known.first_asked, 0.0)
    return max(boot_s, 0.0)


class _Timex(ctypes.Structure):
    """``struct timex`` up to ``status`` (the kernel writes the rest into :attr:`_pad`, sized beyond any ABI's)."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_pad", ctypes.c_byte * 512)]


@functools.cache
def _adjtimex():
    """libc's ``adjtimex``, or None where there is none (not Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).adjtimex  # the process's own symbols: libc on Linux
    except (OSError, AttributeError):
        return None


def clock_confirmed() -> bool:
    """True when the kernel says an NTP client has synchronised the clock (``adjtimex`` read-only: neither
    ``TIME_ERROR`` nor ``STA_UNSYNC``; a time set by hand sets ``STA_UNSYNC``); else, where ``adjtimex`` cannot be
    called, when :func:`system_synchronised` says so (which may run ``timedatectl``: up to 5 s). False when nothing
    confirms it."""
    call = _adjtimex()
    tx = _Timex()
    state = call(ctypes.byref(tx)) if call is not None else -1
    if state < 0:
        return system_synchronised() is True
    return state != TIME_ERROR and not tx.status & STA_UNSYNC


@dataclass(frozen=True)
class ClockCheck:
    """One pass's reading.

    Attributes:
        now: the wall clock (UTC) that pass decides by.
        step_s: the step since the previous pass, seconds (0.0: none; negative: the clock went back).
        before: the wall clock of the previous pass plus the boot clock's advance: where the clock would be without
            the step (None on the first pass).
        held: why retention must not run now (None: it may).
        trusted: the system confirmed the clock, or it has been steady for :data:`TRUST_AFTER_S`: no share cap.
    """

    now: datetime
    step_s: float = 0.0
    before: datetime | None = None
    held: str | None = None
    trusted: bool = False


class ClockWatch:
    """Compares the wall clock with the boot clock once per pass (:meth:`check`). Not thread-safe: the housekeeping
    thread's."""

    def __init__(self):
        self.started = boot_clock()
        self._last: tuple[datetime, float] | None = None  # (wall, boot) of the previous pass
        self._steady_since = self.started  # boot clock of the last step (or the start)
        self._synced: bool | None = None
        self._asked = -SYNC_ASK_EVERY_S * 2
        #: Seconds the box has run with an NTP client that had not synchronised the clock, since it last had (this
        #: daemon's passes, plus what :meth:`resume_sync_wait` carried over from earlier ones); 0 once synchronised.
        self.sync_waited_s = 0.0

    def resume_sync_wait(self, seconds: float) -> None:
        """Carry over the wait for NTP earlier daemons counted (:attr:`sync_waited_s`; call before the first
        :meth:`check`).

        Raises:
            ValueError: ``seconds`` is not a finite number ≥ 0 (nothing carried over).
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a wait for NTP of {seconds!r} s (must be a finite number ≥ 0)")
        self.sync_waited_s += seconds

    def check(self) -> ClockCheck:
        """Read both clocks; report a step since the previous pass and whether retention may run."""
        now, boot = datetime.now(timezone.utc), boot_clock()
        step, before = 0.0, None
        since = self._last[1] if self._last is not None else self.started  # the previous pass (or the start)
        if self._last is not None:
            wall0, boot0 = self._last
            drift = (now - wall0).total_seconds() - (boot - boot0)
            if abs(drift) > STEP_TOLERANCE_S:
                step = drift
                before = wall0 + timedelta(seconds=boot - boot0)
                self._steady_since = boot
        self._last = (now, boot)
        if boot - self._asked >= SYNC_ASK_EVERY_S or step:
            self._synced, self._asked = system_synchronised(), boot
        if self._synced is False:  # unsynchronised since the previous pass (or the start): that time was waited
            self.sync_waited_s += max(boot - since, 0.0)
        elif self._synced is True:
            self.sync_waited_s = 0.0
        steady_s = boot - self._steady_since
        held = None
        if steady_s < STEADY_S and self._steady_since != self.started:
            held = f"the clock stepped {steady_s:.0f} s ago (retention waits for {STEADY_S:.0f} s of a steady clock)"
        elif self._synced is False and self.sync_waited_s < SYNC_WAIT_MAX_S:
            held = (f"the system has not synchronised the clock (NTP) yet (waited {self.sync_waited_s / 3600:.1f} h "
                    f"of {SYNC_WAIT_MAX_S / 3600:.0f} h)")
        trusted = self._synced is True or steady_s >= TRUST_AFTER_S
        return ClockCheck(now=now, step_s=step, before=before, held=held, trusted=trusted)


def retention_cap(active: int) -> int:
    """How many regulars one pass may erase for retention on a clock not yet trusted, of ``active`` regulars."""
    return max(RETENTION_CAP_MIN, int(active * RETENTION_CAP_SHARE))
