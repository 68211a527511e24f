"""Housekeeping worker: systemd watchdog, status to the cloud, retention, expired sign-ups, held events, erasures,
catalogue and menus, the end of a model upgrade."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from ..config import EdgeConfig
from ..events import EventNotSaved, Outbox
from ..gallery import Gallery
from ..sdnotify import notify, watchdog_interval
from ..state import StateStore
from .base import Stats, Worker, storage_state

log = logging.getLogger(__name__)

#: The watchdog is fed only while the recognition loop beat within this many seconds (and is not failing).
HEARTBEAT_MAX_AGE_S = 10.0


class HousekeepingWorker(Worker):
    """Every 0.5 s: ``WATCHDOG=1`` to systemd (half of ``WatchdogSec``) while recognition is alive and
    ``ok`` and no worker thread died. Every ``mqtt.status_interval_s``, one pass: erase expired pending sign-ups
    and customers unseen for ``privacy.retention_days`` — each reported to the cloud through ``on_erased`` (an
    ``erasure-done`` without an erasure id, as a staff-page erasure) —, carry out the cloud's erasures that failed
    (:meth:`~dangol_edge.sync.MQTTSync.retry_erasures`), save the catalogue and menus that could not be saved
    (:meth:`~dangol_edge.sync.MQTTSync.retry_downlink`), end a model upgrade whose time is up
    (:meth:`~dangol_edge.upgrade.ModelUpgrade.check`), write events the outbox held, prune sent events, and
    publish ``status/1`` with :func:`health`; and ``status/1`` at once whenever the sync (re)connected
    (:meth:`~dangol_edge.sync.MQTTSync.take_status_due`: the broker may retain the last will ``offline``).

    A pass survives any error: each step that raises is counted (``stats.housekeeping_failures``; a storage
    error also sets ``stats.storage``) and logged — with its traceback once per kind of error in a streak of
    failing passes, and once when a pass succeeds again —, and the other steps still run. An erasure whose
    report failed (e.g. the state file could not be written) is kept in :attr:`unreported` and reported again
    on the next pass (also one the staff page could not report: :meth:`report_later`).

    Args:
        on_erased: called with each customer id erased here (forgets it and tells the cloud).
        health: returns the current :class:`dangol_protocol.Health`.
        sync: the :class:`~dangol_edge.sync.MQTTSync`, or None offline.
        upgrade: the running :class:`~dangol_edge.upgrade.ModelUpgrade`, or None.
    """

    def __init__(self, config: EdgeConfig, gallery: Gallery, state: StateStore, outbox: Outbox, sync,
                 stats: Stats, on_erased: Callable[[str], None], health: Callable, stop_event: threading.Event,
                 upgrade=None):
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
        self.streak = 0  # passes in a row with a failed step
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
        if self.sync is not None:
            ok = self._step("status", lambda: self.sync.publish_status(self.health())) and ok
        if ok and self.streak:
            log.info("housekeeping recovered after %d failed pass(es)", self.streak)
        self.streak = 0 if ok else self.streak + 1
        if ok:
            self._logged.clear()
        return ok

    def tidy(self) -> bool:
        """Expire sign-ups and unseen customers (reporting each, and any report an earlier pass could not make),
        retry the cloud's held erasures and the catalogue and menus that could not be saved, end a model upgrade whose
        time is up, retry held events, prune sent ones. Never raises; returns True
        when every step succeeded."""
        days = self.config.privacy.retention_days
        ok = self._step("expire sign-ups", self._expire, self.gallery.expire_pending,
                        "sign-up %s expired before staff recorded consent: erased")
        ok = self._step("retention", self._expire, lambda: self.gallery.expire_unseen(days),
                        f"retention: erased customer %s (not seen for {days} days)") and ok
        ok = self._report_all() and ok
        if self.sync is not None:
            ok = self._step("cloud erasures", self._cloud_erasures) and ok
            ok = self._step("held catalogue and menus", self._downlink) and ok
        if self.upgrade is not None and not self.upgrade.done:
            ok = self._step("model upgrade", self.upgrade.check) and ok
        ok = self._step("held events", self.outbox.retry) and ok
        return self._step("prune sent events", self.state.prune_sent) and ok

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
