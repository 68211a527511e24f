"""The cloud's erasures on the edge: carried out, confirmed only once done, retried after a failure.

An ``erasures/1`` message is applied in two steps: the gallery deletions (the daemon's ``on_erasure``: one committed
transaction per customer; an id already gone counts as erased) and then one transaction of the state file that
deletes the customers' cached menus and every queued event about them and queues the ``erasure-done``
confirmations (at most :data:`~dangol_protocol.models.MAX_ERASED_IDS` ids each, all with the erasure's id)
(:meth:`~dangol_edge.state_outbox.OutboxTable.erase_customers`). So the cloud is told only what has committed.

When either step fails — the gallery locked by another writer, a full disk, a read-only medium, or anything else —
the erasure is *held* (by erasure id: the cloud sending the same erasure again replaces it) and carried out again
by every housekeeping pass (:meth:`CloudErasures.retry`) until it commits. At most :data:`HELD_MAX` are held;
beyond, the oldest is dropped, counted (:attr:`CloudErasures.dropped`) and logged as an error: the cloud re-sends
every erasure a device has not confirmed when the device comes back online (docs/mqtt.md). Every failure is
counted (:attr:`CloudErasures.errors`); an erasure's first failure is logged as an error with its traceback, the
next ones as warnings, and its success after failures once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable

from dangol_protocol import Erasures, dump_payload
from dangol_protocol.models import MAX_ERASED_IDS

from .events import EventFactory
from .workers.base import Stats, storage_state

log = logging.getLogger(__name__)

#: Erasures held for a retry at most; beyond, the oldest is dropped (the cloud re-sends unconfirmed erasures).
HELD_MAX = 100


class CloudErasures:
    """Carries out the cloud's erasures for :class:`~dangol_edge.sync.MQTTSync` (see the module docstring).

    Args:
        state: the :class:`~dangol_edge.state.StateStore` (menus, outbox).
        events: makes the ``erasure-done`` events.
        topic: this device's events topic.
        on_erasure: deletes the customers from the gallery (and memory); returns the ids it erased. Raises on a
            storage error.
        stats: the daemon's counters (``storage`` is set on a storage error).
        wake: wakes the outbox flusher once a confirmation is queued.

    Attributes:
        errors: attempts that failed (each held erasure is retried).
        dropped: held erasures dropped unconfirmed beyond :data:`HELD_MAX`.
    """

    def __init__(self, state, events: EventFactory, topic: str, on_erasure: Callable[[Erasures], list],
                 stats: Stats, wake: Callable[[], None]):
        self.state = state
        self.events = events
        self.topic = topic
        self.on_erasure = on_erasure
        self.stats = stats
        self.wake = wake
        self.errors = 0
        self.dropped = 0
        self._held: OrderedDict[uuid.UUID, Erasures] = OrderedDict()
        self._failures: dict[uuid.UUID, int] = {}  # failed attempts of each held erasure
        self._lock = threading.Lock()  # the two dicts
        self._applying = threading.Lock()  # one erasure at a time (paho's thread, the housekeeping thread)
        self._flagged = False  # stats.storage was set by a failure here (reset once an erasure succeeds)

    @property
    def held(self) -> int:
        """Erasures waiting for a retry."""
        return len(self._held)

    def apply(self, erasures: Erasures) -> bool:
        """Carry out one erasure and queue its confirmation; False when it failed and is held for a retry.
        Never raises (it runs on paho's network thread)."""
        with self._applying:
            return self._apply(erasures)

    def retry(self) -> int:
        """Carry out the held erasures again, oldest first, until one fails (it then goes to the back, so one that
        keeps failing does not block the others). Returns how many are still held. Never raises."""
        with self._lock:
            waiting = list(self._held.values())
        for er in waiting:
            with self._applying:
                if er.erasure_id not in self._held:  # carried out meanwhile (the cloud sent it again)
                    continue
                if not self._apply(er):
                    with self._lock:
                        if er.erasure_id in self._held:
                            self._held.move_to_end(er.erasure_id)
                    break
        return self.held

    def _apply(self, er: Erasures) -> bool:
        ids = list(er.customer_ids)
        self.state.begin_erasure(ids)  # nothing more about them is sent, even while this fails
        try:
            erased = self.on_erasure(er)
            done = [self.events.erasure_done(ids[i:i + MAX_ERASED_IDS], erasure_id=er.erasure_id)
                    for i in range(0, len(ids), MAX_ERASED_IDS)]
            self.state.erase_customers(ids, [(str(e.event_id), self.topic, dump_payload(e)) for e in done])
        except Exception as exc:  # a storage error above all; whatever it is, the erasure must not be lost
            self._hold(er, exc)
            return False
        with self._lock:
            self._held.pop(er.erasure_id, None)
            failures = self._failures.pop(er.erasure_id, 0)
        self.wake()
        if self._flagged:
            self._flagged, self.stats.storage = False, "ok"
        if failures:
            log.info("erasure %s carried out after %d failed attempt(s) and confirmed (%d customers erased here)",
                     er.erasure_id, failures, len(erased))
        else:
            log.info("erasure %s: %d customers erased here", er.erasure_id, len(erased))
        return True

    def _hold(self, er: Erasures, exc: Exception) -> None:
        self.errors += 1
        if isinstance(exc, sqlite3.Error):
            self.stats.storage, self._flagged = storage_state(exc), True
        with self._lock:
            n = self._failures.get(er.erasure_id, 0) + 1
            self._failures[er.erasure_id] = n
            self._held[er.erasure_id] = er  # the same erasure sent again keeps its place
            lost = []
            while len(self._held) > HELD_MAX:
                old_id, old = self._held.popitem(last=False)
                self._failures.pop(old_id, None)
                lost.append(old)
        if n == 1:
            log.error("erasure %s of %d customer(s) could not be carried out (%s: %s); held, retried on every "
                      "housekeeping pass and confirmed only once done", er.erasure_id, len(er.customer_ids),
                      type(exc).__name__, exc, exc_info=exc)
        else:
            log.warning("erasure %s still cannot be carried out (attempt %d: %s: %s); retried on the next pass",
                        er.erasure_id, n, type(exc).__name__, exc)
        for old in lost:
            self.dropped += 1
            log.error("erasure %s dropped unconfirmed: more than %d erasures are waiting for a retry (%d dropped so "
                      "far); the cloud sends it again when this device comes back online", old.erasure_id, HELD_MAX,
                      self.dropped)
