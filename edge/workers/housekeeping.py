"""Housekeeping worker: systemd watchdog, status to the cloud, retention, expired sign-ups, held events, erasures,
catalogue and menus, the end of a model upgrade."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from ..config import EdgeConfig
from ..events import EventNotSaved, Outbox
from ..clock import ClockCheck, ClockWatch, retention_cap
from ..clock_anchor import SYNC_WAIT_KEY
from ..gallery import Gallery, TooManyUnseen
from ..reserve import SpaceReserve
from ..sdnotify import notify, watchdog_interval
from ..state import StateStore
from .base import Stats, Worker, storage_state

log = logging.getLogger(__name__)

#: The watchdog is fed only while the recognition loop beat within this many seconds (and is not failing).
HEARTBEAT_MAX_AGE_S = 10.0
#: The wait for NTP (:attr:`~dangol_edge.clock.ClockWatch.sync_waited_s`) is written to the gallery when it grew by
#: this many seconds (a restart loses at most that much of it), and when it ends.
SYNC_WAIT_SAVE_S = 600.0


class HousekeepingWorker(Worker):
    """Every 0.5 s: ``WATCHDOG=1`` to systemd (half of ``WatchdogSec``) while recognition is alive and
    ``ok`` and no worker thread died. Every ``mqtt.status_interval_s``, one pass: check the wall clock against the
    boot clock (:class:`~dangol_edge.clock.ClockWatch`: after a step, pending sign-ups keep their remaining lifetime —
    one made since the previous pass is never cut below its lifetime from now —, a running model upgrade keeps its age,
    regulars seen or activated since this boot's daemon started keep their time after a step forward, retention's
    stamps are kept out of the future, and retention waits for a steady — where the system tells, synchronised —
    clock (the day's wait for NTP counted across daemon starts: gallery ``meta`` :data:`SYNC_WAIT_KEY`), never erasing
    most regulars at once on a clock not yet trusted), erase expired pending
    sign-ups and customers unseen for ``privacy.retention_days`` — each reported to the cloud through ``on_erased`` (an
    ``erasure-done`` without an erasure id, as a staff-page erasure) —, carry out the cloud's erasures that failed
    (:meth:`~dangol_edge.sync.MQTTSync.retry_erasures`), save the catalogue and menus that could not be saved
    (:meth:`~dangol_edge.sync.MQTTSync.retry_downlink`), end a model upgrade whose time is up — by the deadline only on
    a clock retention may run by, with every step repaired (:meth:`~dangol_edge.upgrade.ModelUpgrade.check`) —, write
    events the outbox held, prune sent events, and publish ``status/1`` with :func:`health`; and ``status/1`` at once
    whenever the sync (re)connected (:meth:`~dangol_edge.sync.MQTTSync.take_status_due`: the broker may retain the
    last will ``offline``).

    A pass survives any error: each step that raises is counted (``stats.housekeeping_failures``; a storage
    error also sets ``stats.storage``) and logged — with its traceback once per kind of error in a streak of
    failing passes, and once when a pass succeeds again —, and the other steps still run. An erasure whose
    report failed (e.g. the state file could not be written) is kept in :attr:`unreported` and reported again
    on the next pass (also one the staff page could not report: :meth:`report_later`); the gallery records the ones
    housekeeping erased in the erasure's own transaction until their report is queued, so a daemon killed in between
    reports them at its next start (:meth:`~dangol_edge.gallery.Gallery.unreported_erasures`). :attr:`failing` tells
    the daemon's health (``housekeeping``) while passes keep failing.

    Args:
        on_erased: called with each customer id erased here (forgets it and tells the cloud).
        health: returns the current :class:`dangol_protocol.Health`.
        sync: the :class:`~dangol_edge.sync.MQTTSync`, or None offline.
        upgrade: the running :class:`~dangol_edge.upgrade.ModelUpgrade`, or None.
        clock: the :class:`~dangol_edge.clock.ClockWatch` (default a new one).
        reserve: the daemon's :class:`~dangol_edge.reserve.SpaceReserve`, allocated again by each pass, or None.
    """

    def __init__(self, config: EdgeConfig, gallery: Gallery, state: StateStore, outbox: Outbox, sync,
                 stats: Stats, on_erased: Callable[[str], None], health: Callable, stop_event: threading.Event,
                 upgrade=None, clock: ClockWatch | None = None, reserve: SpaceReserve | None = None):
        super().__init__("housekeeping", stop_event)
        self.config = config
        self.gallery = gallery
        self.state = state
        self.outbox = outbox
        self.sync = sync
        self.stats = stats
        self.on_erased = on_erased
        self.health = health
        self.upgrade = upgrade
        #: True once after each connection of the sync: publish ``online`` now (a sync without it never asks)
        self._status_due: Callable[[], bool] = getattr(sync, "take_status_due", lambda: False)
        #: Customers erased here whose report has not gone through yet (an ordered set; at most the gallery's size).
        self.unreported: dict[str, None] = {}
        self.clock = clock or ClockWatch()
        self._recorded_loaded = False  # the gallery's record of erasures not reported yet was read
        self.reserve = reserve
        #: (step in seconds, the clock before it, the sign-ups pending before it) not yet applied
        self._shifts: list[tuple[float, datetime, frozenset[str]]] = []
        self._pending_before: frozenset[str] = frozenset()  # sign-ups pending at the previous pass's start
        self._since: datetime | None = None  # the first pass's wall clock, moved with each step repaired since
        self._wait_loaded = False  # the wait for NTP earlier daemons counted was carried over
        self._wait_saved = 0.0  # the wait for NTP as last written to the gallery
        self._stepped = 0.0  # the step the next settle_stamps must know of
        self._held_why: str | None = None  # why retention is held (logged once per reason)
        self.streak = 0  # passes in a row with a failed step
        #: True while the last pass had a step that failed (cleared by a pass whose every step succeeded); the
        #: daemon's health reports it as ``housekeeping: failing``
        self.failing = False
        self._logged: set[tuple[str, type]] = set()  # (step, error type) logged with a traceback in this streak

    def recognition_alive(self, now: float) -> bool:
        """True while the recognition loop beats and is not failing and no worker thread died (what the watchdog
        stands for: a dead capture thread leaves recognition beating on an empty queue)."""
        st = self.stats
        return st.recognition == "ok" and not st.crashed and now - st.last_heartbeat < HEARTBEAT_MAX_AGE_S

    def loop(self) -> None:
        wd = watchdog_interval()
        next_status = 0.0
        next_wd = 0.0
        while not self.stop_event.wait(0.5):
            now = time.monotonic()
            if wd and now >= next_wd and self.recognition_alive(now):
                self._step("watchdog", notify, "WATCHDOG=1")
                next_wd = now + wd
            if now >= next_status:
                next_status = now + self.config.mqtt.status_interval_s
                self.run_pass()
            if self.sync is not None and self._status_due():  # (re)connected: the broker may retain the last will
                self._step("status", lambda: self.sync.publish_status(self.health()))

    def run_pass(self) -> bool:
        """One pass: :meth:`tidy`, then the status to the cloud. Returns True when every step succeeded."""
        ok = self.tidy()
        self.failing = not ok  # this pass's status tells whether its own steps failed
        if self.sync is not None:
            ok = self._step("status", lambda: self.sync.publish_status(self.health())) and ok
        if ok and self.streak:
            log.info("housekeeping recovered after %d failed pass(es)", self.streak)
        self.streak = 0 if ok else self.streak + 1
        self.failing = not ok
        if ok:
            self._logged.clear()
        return ok

    def tidy(self) -> bool:
        """Check the clock for a step (and repair what it would do), expire sign-ups and unseen customers by this
        pass's clock (reporting each, and any report an earlier pass could not make), retry the cloud's held erasures
        and the catalogue and menus that could not be saved, end a model upgrade whose time is up, retry held events,
        allocate the space reserve again, prune sent events. Never raises; returns True when every step succeeded."""
        days = self.config.privacy.retention_days
        if not self._recorded_loaded:  # erasures a previous run made but could not report
            self._recorded_loaded = self._step("erasure reports", self._load_unreported)
        if not self._wait_loaded:  # the wait for NTP earlier daemons counted
            self._wait_loaded = self._step("clock state", self._load_sync_wait)
        known = self._pending_before
        self._pending_before = frozenset()  # (what a failed read leaves: none surely made before a step)
        noted = self._step("clock state", self._note_pending)  # before the clock is read: before a step found next
        check = self.clock.check()
        if self._since is None:
            self._since = check.now
        if check.step_s:
            self._clock_stepped(check, known)
        ok = self._step("clock-step repair", self._repair, check) and noted
        settled = not self._shifts  # every step seen repaired: the gallery's stamps are in this clock's timeline
        if settled:  # never expire a sign-up whose lifetime a step has not given back yet
            settled = self._step("expire sign-ups", self._expire, lambda: self.gallery.expire_pending(check.now),
                                 "sign-up %s expired before staff recorded consent: erased")
            ok = settled and ok
        if self._wait_loaded and self._wait_saved != self.clock.sync_waited_s and (
                self._wait_saved < 0 or not self.clock.sync_waited_s
                or abs(self.clock.sync_waited_s - self._wait_saved) >= SYNC_WAIT_SAVE_S):
            ok = self._step("clock state", self._save_sync_wait) and ok
        if self._retention_may_run(check):
            ok = self._step("retention", self._expire, lambda: self._retention(check, days),
                            f"retention: erased customer %s (not seen for {days} days)") and ok
        ok = self._report_all() and ok
        if self.sync is not None:
            ok = self._step("cloud erasures", self._cloud_erasures) and ok
            ok = self._step("held catalogue and menus", self._downlink) and ok
        if self.upgrade is not None and not self.upgrade.done:  # its deadline passes only on a clock retention trusts
            ok = self._step("model upgrade", self.upgrade.check, check.now, settled and check.held is None) and ok
        ok = self._step("held events", self.outbox.retry) and ok
        if self.reserve is not None:
            self.reserve.ensure()  # never raises: allocated again once the disk has room
        return self._step("prune sent events", self.state.prune_sent) and ok

    def _load_unreported(self) -> None:
        for cid in self.gallery.unreported_erasures():
            self.unreported.setdefault(cid, None)

    def _load_sync_wait(self) -> None:
        """Carry over the wait for NTP earlier daemons counted (gallery ``meta`` :data:`SYNC_WAIT_KEY`). A value that
        cannot be read is logged and counted, and the wait counts from 0 (written afresh by this same pass)."""
        text = self.gallery.meta(SYNC_WAIT_KEY)
        try:
            self.clock.resume_sync_wait(float(text) if text is not None else 0.0)
            self._wait_saved = self.clock.sync_waited_s
        except ValueError as exc:
            self.stats.housekeeping_failures += 1
            log.error("the gallery's %s %r cannot be read (%s): the wait for NTP counts from now", SYNC_WAIT_KEY,
                      text, exc)
            self._wait_saved = -1.0  # not what the gallery holds: written by this pass, whatever the wait

    def _save_sync_wait(self) -> None:
        waited = self.clock.sync_waited_s
        self.gallery.set_meta(SYNC_WAIT_KEY, f"{waited:.0f}" if waited else None)
        self._wait_saved = waited

    def _note_pending(self) -> None:
        self._pending_before = self.gallery.pending_ids()

    def _clock_stepped(self, check: ClockCheck, known: frozenset[str]) -> None:
        self.stats.clock_steps += 1
        self._shifts.append((check.step_s, check.before, known))
        self._stepped = check.step_s
        log.warning("the wall clock stepped %+.0f s (NTP sync, a manual date or a bad time source): pending sign-ups "
                    "keep their remaining lifetime and retention waits for a steady clock", check.step_s)

    def _repair(self, check: ClockCheck) -> None:
        """Give pending sign-ups back the lifetime the clock's steps took, the upgrade its age, and regulars seen since
        the daemon started their time (:meth:`Gallery.shift_stamps`), and keep retention's stamps out of the future
        (:meth:`Gallery.settle_stamps`); what fails is retried next pass."""
        while self._shifts:
            step, before, known = self._shifts[0]
            self.gallery.shift_stamps(step, before, known, self._since)
            self._since += timedelta(seconds=step)
            self._shifts.pop(0)
        self.gallery.settle_stamps(check.now, self._stepped)
        self._stepped = 0.0

    def _retention_may_run(self, check: ClockCheck) -> bool:
        """False (logged once per reason, counted) while the clock says retention must wait."""
        if check.held is None:
            if self._held_why is not None:
                log.info("retention runs again: the clock is steady")
            self._held_why = None
            return True
        self.stats.retention_held += 1
        why = check.held.split(" (")[0].split(" stepped")[0]
        if why != self._held_why:
            log.warning("retention held: %s", check.held)
        self._held_why = why
        return False

    def _retention(self, check: ClockCheck, days: int) -> list[str]:
        """Retention by this pass's clock; on a clock not yet trusted, no more than :func:`retention_cap` at once
        (else nothing erased: logged once per hold, counted in ``stats.retention_held``)."""
        limit = None if check.trusted else retention_cap(self.gallery.count_active())
        try:
            return self.gallery.expire_unseen(days, check.now, limit=limit)
        except TooManyUnseen as exc:
            self.stats.retention_held += 1
            if self._held_why != "cap":
                log.error("retention held: %s", exc)
            self._held_why = "cap"
            return []

    def report_later(self, customer_id: str) -> None:
        """Report a customer erased elsewhere (the staff page) on the next passes: reporting it failed now."""
        self.unreported[customer_id] = None

    def _cloud_erasures(self) -> None:
        """Retry the cloud's erasures that failed; raises while some are still held (the step counts and logs it)."""
        left = self.sync.retry_erasures()
        if left:
            raise RuntimeError(f"{left} erasure(s) from the cloud still cannot be carried out; retried next pass")

    def _downlink(self) -> None:
        """Save the catalogue and menus that could not be saved; raises while some are still held (the step counts and
        logs it)."""
        left = self.sync.retry_downlink()
        if left:
            raise RuntimeError(f"{left} catalogue/menu message(s) from the cloud still cannot be saved; retried next "
                               "pass")

    def _expire(self, erase: Callable[[], list[str]], message: str) -> None:
        for cid in erase():
            log.info(message, cid)
            self.unreported[cid] = None

    def _report_all(self) -> bool:
        """Report every erasure not yet reported; the ones that fail stay for the next pass."""
        ok = True
        for cid in list(self.unreported):
            if self._step("erasure report", self._report, cid):
                self.unreported.pop(cid, None)
                # a failure leaves the record: reported again at the next start (once more, never less)
                self._step("erasure report record", self.gallery.erasure_reported, cid)
            else:
                ok = False
        return ok

    def _report(self, customer_id: str) -> None:
        try:
            self.on_erased(customer_id)
        except EventNotSaved as exc:  # held by the outbox, written by the next pass: reported
            self.stats.storage = "error"
            self.stats.housekeeping_failures += 1
            log.error("erasure of %s: %s", customer_id, exc)

    def _step(self, name: str, fn: Callable, *args) -> bool:
        """Run one step; count and log what it raises. Returns True when it succeeded."""
        try:
            fn(*args)
            return True
        except Exception as exc:
            self.stats.housekeeping_failures += 1
            if isinstance(exc, sqlite3.OperationalError):
                self.stats.storage = storage_state(exc)
            first = (name, type(exc)) not in self._logged
            self._logged.add((name, type(exc)))
            log.error("housekeeping: %s failed: %s: %s%s", name, type(exc).__name__, exc,
                      "" if first else " (again; retried next pass)", exc_info=exc if first else None)
            return False
