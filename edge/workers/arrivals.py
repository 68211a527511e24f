"""Arrival worker: a decision of the recognition worker → welcome screen, gallery ``last_seen``, event."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from dangol_protocol import CatalogueItem

from ..config import EdgeConfig
from ..events import EventFactory, EventNotSaved, Outbox
from ..gallery import Gallery, UnknownCustomer
from ..menu_text import choose_picks
from ..screen import Screen
from ..state import StateStore
from .base import Stats, Worker, storage_state

log = logging.getLogger(__name__)


class ArrivalWorker(Worker):
    """Handle each decision from ``decisions``: a known customer's arrival is welcomed with their picks
    (first), recorded (``last_seen_at``, drives retention) and reported; an unknown face is counted and
    reported without an id. A storage error (disk full, read-only medium) never stops the greeting: it
    sets ``stats.storage`` (``full`` | ``error``) and the event is held by the outbox for a retry. Any other
    error while handling one decision (e.g. a gallery row that cannot be opened) is counted in
    ``stats.arrival_failures`` and logged — with its traceback once per streak of failures — and the worker
    goes on with the next decision; :attr:`failing` tells the daemon's health (``arrivals``) while a streak lasts.

    ``now`` returns the instant of an arrival (default: now, aware, in UTC; tests inject a fixed clock); its hour
    on the cached catalogue's ``timezone`` clock (else the box's local time) picks the menu's day-part
    (:func:`dangol_edge.menu_text.daypart_hour`)."""

    def __init__(self, config: EdgeConfig, gallery: Gallery, state: StateStore, screen: Screen,
                 events: EventFactory, outbox: Outbox, decisions: queue.Queue, stats: Stats,
                 stop_event: threading.Event, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        super().__init__("arrivals", stop_event)
        self.config = config
        self.gallery = gallery
        self.state = state
        self.screen = screen
        self.events = events
        self.outbox = outbox
        self.decisions = decisions
        self.stats = stats
        self.now = now
        #: True while the last decision failed (cleared by the next one handled; a streak is logged with its
        #: traceback once); the daemon's health reports it as ``arrivals: failing``
        self.failing = False

    def loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                d = self.decisions.get(timeout=0.2)
            except queue.Empty:
                continue
            self.handle(d)

    def handle(self, d) -> None:
        """One decision (a :class:`~dangol_edge.tracker.Decision`: ``kind`` known/unknown, ``customer_id``,
        ``score``, ``first_ts`` in monotonic seconds). Never raises (see the class docstring)."""
        try:
            if d.kind == "known":
                self.arrival(d.customer_id, d.score, d.first_ts)
            else:
                self.stats.unknown += 1
                self.outbox.send(self.events.arrival(None, None, []))
            self.stats.storage = "ok"
        except (sqlite3.OperationalError, EventNotSaved) as exc:
            # disk full / read-only medium: keep greeting people, report it, write nothing partial
            self.stats.storage = storage_state(exc)
            log.error("cannot write the edge database (%s): event for %s held for a retry",
                      exc, d.customer_id or "an unknown face")
        except Exception as exc:  # one bad decision must not end the worker (the watchdog would not notice)
            self.stats.arrival_failures += 1
            who = d.customer_id or "an unknown face"
            if not self.failing:
                log.exception("the arrival of %s failed; going on with the next decision", who)
            else:
                log.error("the arrival of %s failed too (%s: %s); %d failed so far", who, type(exc).__name__, exc,
                          self.stats.arrival_failures)
            self.failing = True
            return
        if self.failing:
            log.info("arrivals are handled again (%d failed so far)", self.stats.arrival_failures)
            self.failing = False

    def arrival(self, customer_id: str, score: float, first_seen: float) -> None:
        """Welcome, record and report a known customer (already erased: nothing happens). A welcome the screen did not
        show (a sign-up being captured: :meth:`~dangol_edge.screen.Screen.show_welcome`) is reported with no items
        shown."""
        try:
            customer = self.gallery.customer(customer_id)
        except UnknownCustomer:
            return  # erased meanwhile
        picks = self.picks_for(customer_id)
        decided = time.monotonic()
        shown = self.screen.show_welcome(customer.first_name, [_screen_pick(p) for p in picks], customer_id,
                                         self.config.display.welcome_s, arrival_ts=decided,
                                         own_picks=picks.own)  # a Picks: house items are not "your usual"
        self.stats.arrivals += 1
        self.stats.arrival_times.append((first_seen, decided))
        log.info("arrival: %s (score %.3f, %d picks%s)", customer_id, score, len(picks),
                 "" if shown is not None else ", not shown: a sign-up is being captured")
        # the cloud counts what the door showed ("shown → bought", "shown and ignored"): nothing when it showed nothing
        event = self.events.arrival(customer_id, score, [p.id for p in picks] if shown is not None else [])
        try:
            self.gallery.touch(customer_id)
        finally:
            self.outbox.send(event)

    def picks_for(self, customer_id: str) -> list[CatalogueItem]:
        """The customer's picks now (:func:`dangol_edge.menu_text.choose_picks`: the current day-part's picks
        of the cached menu, or its all-day picks, or without a menu the catalogue's first house items; only items
        the cached catalogue marks available), best first, at most ``display.picks``."""
        return choose_picks(self.state.menu(customer_id), self.state.catalogue(), limit=self.config.display.picks,
                            at=self.now())


def _screen_pick(item: CatalogueItem) -> dict:
    """A chosen item as the screen state keeps it (JSON-ready; the page formats the price)."""
    return {"id": item.id, "name": item.name, "price": item.price, "category": item.category,
            "description": item.description}
