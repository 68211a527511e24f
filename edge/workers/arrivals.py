"""Arrival worker: a decision of the recognition worker → welcome screen, gallery ``last_seen``, event."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time

from ..config import EdgeConfig
from ..events import EventFactory, EventNotSaved, Outbox
from ..gallery import Gallery, UnknownCustomer
from ..screen import Screen
from ..state import StateStore
from .base import Stats, Worker

log = logging.getLogger(__name__)


class ArrivalWorker(Worker):
    """Handle each decision from ``decisions``: a known customer's arrival is welcomed with their picks
    (first), recorded (``last_seen_at``, drives retention) and reported; an unknown face is counted and
    reported without an id. A storage error (disk full, read-only medium) never stops the greeting: it
    sets ``stats.storage`` (``full`` | ``error``) and the event is held by the outbox for a retry."""

    def __init__(self, config: EdgeConfig, gallery: Gallery, state: StateStore, screen: Screen,
                 events: EventFactory, outbox: Outbox, decisions: queue.Queue, stats: Stats,
                 stop_event: threading.Event):
        super().__init__("arrivals", stop_event)
        self.config = config
        self.gallery = gallery
        self.state = state
        self.screen = screen
        self.events = events
        self.outbox = outbox
        self.decisions = decisions
        self.stats = stats

    def loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                d = self.decisions.get(timeout=0.2)
            except queue.Empty:
                continue
            self.handle(d)

    def handle(self, d) -> None:
        """One decision (a :class:`~dangol_edge.tracker.Decision`: ``kind`` known/unknown, ``customer_id``,
        ``score``, ``first_ts`` in monotonic seconds)."""
        try:
            if d.kind == "known":
                self.arrival(d.customer_id, d.score, d.first_ts)
            else:
                self.stats.unknown += 1
                self.outbox.send(self.events.arrival(None, None, []))
            self.stats.storage = "ok"
        except (sqlite3.OperationalError, EventNotSaved) as exc:
            # disk full / read-only medium: keep greeting people, report it, write nothing partial
            self.stats.storage = "full" if "full" in str(exc) else "error"
            log.error("cannot write the edge database (%s): event for %s held for a retry",
                      exc, d.customer_id or "an unknown face")

    def arrival(self, customer_id: str, score: float, first_seen: float) -> None:
        """Welcome, record and report a known customer (already erased: nothing happens)."""
        try:
            customer = self.gallery.customer(customer_id)
        except UnknownCustomer:
            return  # erased meanwhile
        picks = self.picks_for(customer_id)
        decided = time.monotonic()
        self.screen.show_welcome(customer.first_name, picks, customer_id, self.config.display.welcome_s,
                                 arrival_ts=decided)
        self.stats.arrivals += 1
        self.stats.arrival_times.append((first_seen, decided))
        log.info("arrival: %s (score %.3f, %d picks)", customer_id, score, len(picks))
        event = self.events.arrival(customer_id, score, [p["id"] for p in picks])
        try:
            self.gallery.touch(customer_id)
        finally:
            self.outbox.send(event)

    def picks_for(self, customer_id: str) -> list[dict]:
        """The customer's cached picks that the cached catalogue has and marks available, best first,
        at most ``display.picks``; without a menu, the catalogue's first available items (cold start).
        Each pick is ``{"id", "name", "price", "category", "description"}``."""
        catalogue = self.state.catalogue() or {"items": []}
        items = {i["id"]: i for i in catalogue["items"] if i.get("available", True)}
        menu = self.state.menu(customer_id)
        ids = [p["item_id"] for p in menu["items"]] if menu else list(items)
        out = []
        for iid in ids:
            if iid in items:
                it = items[iid]
                out.append({k: it.get(k) for k in ("id", "name", "price", "category", "description")})
            if len(out) >= self.config.display.picks:
                break
        return out
