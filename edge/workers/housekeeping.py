"""Housekeeping worker: systemd watchdog, status to the cloud, retention, expired sign-ups, held events."""

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
    ``ok``. Every ``mqtt.status_interval_s``: erase expired pending sign-ups and customers unseen for
    ``privacy.retention_days`` — each reported to the cloud through ``on_erased`` (an ``erasure-done``
    without an erasure id, as a staff-page erasure) —, write events the outbox held, prune sent events,
    and publish ``status/1`` with :func:`health`.

    Args:
        on_erased: called with each customer id erased here (forgets it and tells the cloud).
        health: returns the current :class:`dangol_protocol.Health`.
        sync: the :class:`~dangol_edge.sync.MQTTSync`, or None offline.
    """

    def __init__(self, config: EdgeConfig, gallery: Gallery, state: StateStore, outbox: Outbox, sync,
                 stats: Stats, on_erased: Callable[[str], None], health: Callable, stop_event: threading.Event):
        super().__init__("housekeeping", stop_event)
        self.config = config
        self.gallery = gallery
        self.state = state
        self.outbox = outbox
        self.sync = sync
        self.stats = stats
        self.on_erased = on_erased
        self.health = health

    def recognition_alive(self, now: float) -> bool:
        """True while the recognition loop beats and is not failing (what the watchdog stands for)."""
        return self.stats.recognition == "ok" and now - self.stats.last_heartbeat < HEARTBEAT_MAX_AGE_S

    def loop(self) -> None:
        wd = watchdog_interval()
        next_status = 0.0
        next_wd = 0.0
        while not self.stop_event.wait(0.5):
            now = time.monotonic()
            if wd and now >= next_wd and self.recognition_alive(now):
                notify("WATCHDOG=1")
                next_wd = now + wd
            if now >= next_status:
                next_status = now + self.config.mqtt.status_interval_s
                self.tidy()
                if self.sync is not None:
                    self.sync.publish_status(self.health())

    def tidy(self) -> None:
        """Expire sign-ups and unseen customers (reporting each), retry held events, prune sent ones."""
        days = self.config.privacy.retention_days
        try:
            for cid in self.gallery.expire_pending():
                log.info("sign-up %s expired before staff recorded consent: erased", cid)
                self._report(cid)
            for cid in self.gallery.expire_unseen(days):
                log.info("retention: erased customer %s (not seen for %d days)", cid, days)
                self._report(cid)
            self.outbox.retry()
            self.state.prune_sent()
        except sqlite3.OperationalError as exc:
            self.stats.storage = storage_state(exc)
            log.error("housekeeping cannot write the edge database: %s", exc)

    def _report(self, customer_id: str) -> None:
        try:
            self.on_erased(customer_id)
        except EventNotSaved as exc:  # held by the outbox, written by the next tidy()
            self.stats.storage = "error"
            log.error("erasure of %s: %s", customer_id, exc)
