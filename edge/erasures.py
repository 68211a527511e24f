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
next ones as warnings, and its success after failures once. The holding and retrying is
:class:`~dangol_edge.held.HeldRetries`, shared with the catalogue and menus that could not be saved.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from dangol_protocol import Erasures, dump_payload
from dangol_protocol.models import MAX_ERASED_IDS

from .events import EventFactory
from .held import HELD, HeldRetries
from .workers.base import Stats

log = logging.getLogger(__name__)

#: Erasures held for a retry at most; beyond, the oldest is dropped (the cloud re-sends unconfirmed erasures).
HELD_MAX = 100


class CloudErasures(HeldRetries[uuid.UUID, Erasures]):
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

    held_note = "held, retried on every housekeeping pass and confirmed only once done"
    drop_note = "; unconfirmed: the cloud sends it again when this device comes back online"

    def __init__(self, state, events: EventFactory, topic: str, on_erasure: Callable[[Erasures], list],
                 stats: Stats, wake: Callable[[], None]):
        super().__init__(stats, HELD_MAX, log)
        self.state = state
        self.events = events
        self.topic = topic
        self.on_erasure = on_erasure
        self.wake = wake

    def apply(self, erasures: Erasures) -> bool:
        """Carry out one erasure and queue its confirmation; False when it failed and is held for a retry.
        Never raises (it runs on paho's network thread)."""
        return self.attempt(erasures.erasure_id, erasures) is not HELD

    def _carry_out(self, er: Erasures) -> list:
        """The gallery's deletions, then one transaction of the state file (menus, outbox, confirmations, erased ids).
        Returns the ids erased from the gallery. Raises on any failure."""
        ids = list(er.customer_ids)
        self.state.begin_erasure(ids)  # nothing more about them is sent, even while this fails
        erased = self.on_erasure(er)
        done = [self.events.erasure_done(ids[i:i + MAX_ERASED_IDS], erasure_id=er.erasure_id)
                for i in range(0, len(ids), MAX_ERASED_IDS)]
        self.state.erase_customers(ids, [(str(e.event_id), self.topic, dump_payload(e)) for e in done])
        return erased

    def _describe(self, key: uuid.UUID, er: Erasures) -> str:
        return f"erasure {er.erasure_id} of {len(er.customer_ids)} customer(s)"

    def _done(self, key: uuid.UUID, er: Erasures, failures: int, erased: list) -> None:
        self.wake()
        if failures:
            log.info("erasure %s carried out after %d failed attempt(s) and confirmed (%d customers erased here)",
                     er.erasure_id, failures, len(erased))
        else:
            log.info("erasure %s: %d customers erased here", er.erasure_id, len(erased))
