"""Up-link events of one device: made in one place, queued in one place.

* :class:`EventFactory` fills what every ``event/1`` carries — ``event_id`` (a fresh UUID, the cloud
  deduplicates on it), ``device_id`` and ``ts`` (aware UTC) — for arrivals, enrolments and erasure
  confirmations, so no caller builds those three fields itself.
* :class:`Outbox` queues an event for the cloud: through :class:`~dangol_edge.sync.MQTTSync` when a broker is
  configured (outbox table + flusher), else straight into the state's outbox table (an offline box keeps
  its events for when a broker is configured). When the outbox itself cannot be written (disk full,
  read-only medium) the event is held in memory — at most :data:`HELD_MAX`, oldest dropped and counted —
  and :meth:`Outbox.retry` (called by the housekeeping worker) writes it once the storage works again. Any other
  failure (e.g. ``sqlite3.DatabaseError``: a damaged page) raises as it is: nothing is held, and the caller keeps what
  it must report again (an activation: :mod:`dangol_edge.activation_reports`).
  :meth:`Outbox.erase` takes an erased customer out of the queue (held events and outbox rows, sent or not) and
  queues the confirmation the cloud needs, in one step; an event about them made before the erasure is never
  queued afterwards (:meth:`~dangol_edge.state_outbox.OutboxTable.enqueue`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

import numpy as np
from dangol_protocol import (
    ArrivalEvent, Consent, EnrolmentEvent, ErasureDoneEvent, dump_payload, new_event_id,
)
from dangol_protocol.topics import events_topic

log = logging.getLogger(__name__)

#: Events held in memory while the outbox cannot be written; beyond, the oldest is dropped (and counted).
HELD_MAX = 1000

Event = ArrivalEvent | EnrolmentEvent | ErasureDoneEvent


def subject(event: Event) -> str | None:
    """The customer an event is about (a known customer's arrival, an enrolment), or None (an unknown face's
    arrival, an erasure confirmation: those stay through an erasure)."""
    cid = getattr(event, "customer_id", None)
    return None if cid is None else str(cid)


class EventFactory:
    """Builds this device's events.

    Args:
        device_id: this box's UUID (``uuid.UUID(int=0)`` on an unregistered box).
        clock: aware UTC ``datetime`` now (tests may pass their own).
    """

    def __init__(self, device_id: uuid.UUID, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.device_id = device_id
        self.clock = clock

    def _common(self) -> dict:
        return {"event_id": new_event_id(), "device_id": self.device_id, "ts": self.clock()}

    def arrival(self, customer_id: str | None, score: float | None, shown: list[str]) -> ArrivalEvent:
        """A recognised regular (``customer_id``, cosine ``score`` clipped to [0, 1], item ids shown) or,
        with ``customer_id=None``, an unknown face."""
        return ArrivalEvent(**self._common(), customer_id=uuid.UUID(customer_id) if customer_id else None,
                            confidence=None if score is None else float(np.clip(score, 0.0, 1.0)),
                            shown_items=shown)

    def pending(self, customer_id: str, short_code: str | None) -> EnrolmentEvent:
        """A sign-up at the door (button): pending until staff record consent."""
        return EnrolmentEvent(**self._common(), customer_id=uuid.UUID(customer_id), status="pending",
                              short_code=short_code)

    def activated(self, customer_id: str, display_name: str, consent: Consent | None) -> EnrolmentEvent:
        """Staff recorded the customer's name and consent: ``consent`` is the record the gallery keeps
        (:attr:`~dangol_edge.gallery.Customer.consent`), sent as it is.

        Raises:
            ValueError: ``consent`` is None (e.g. the stored record failed validation; nothing is invented).
            TypeError: ``consent`` is not a :class:`~dangol_protocol.Consent`.
        """
        if consent is None:
            raise ValueError(f"customer {customer_id} has no valid consent record: no enrolment event is sent")
        if not isinstance(consent, Consent):
            raise TypeError(f"consent must be a dangol_protocol.Consent, not {type(consent).__name__}")
        return EnrolmentEvent(**self._common(), customer_id=uuid.UUID(customer_id), status="active",
                              display_name=display_name, consent=consent)

    def erasure_done(self, customer_ids: Iterable, erasure_id: uuid.UUID | None = None) -> ErasureDoneEvent:
        """Customers erased here: the answer to the cloud's ``erasure_id``, or (None) a request the cloud
        records for an owner to confirm (staff page, discarded or expired sign-up, retention)."""
        return ErasureDoneEvent(**self._common(), erasure_id=erasure_id,
                                customer_ids=[c if isinstance(c, uuid.UUID) else uuid.UUID(str(c))
                                              for c in customer_ids])


class EventNotSaved(RuntimeError):
    """The outbox could not be written; the event is held in memory and retried (message says why)."""


class Outbox:
    """Queues events for the cloud.

    Args:
        device_id: for the events topic when there is no sync.
        state: the :class:`~dangol_edge.state.StateStore` (its outbox table).
        sync: the :class:`~dangol_edge.sync.MQTTSync`, or None offline.
    """

    def __init__(self, device_id: uuid.UUID, state, sync=None):
        self.device_id = device_id
        self.state = state
        self.sync = sync
        self.dropped = 0
        self._held: deque[Event] = deque()
        self._on_saved: dict[uuid.UUID, Callable[[], None]] = {}  # held event id -> called once it is written
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Events waiting in memory for the storage to work again."""
        return len(self._held)

    def _write(self, event: Event) -> None:
        if self.sync is not None:
            self.sync.send_event(event)
        else:
            self.state.enqueue(str(event.event_id), events_topic(self.device_id), dump_payload(event))

    def erase(self, customer_ids: Iterable, confirmations: Iterable[Event] = ()) -> int:
        """Take erased customers out of the queue in one step: their events held in memory and every outbox row
        about them (sent or not) go, with their cached menus, and ``confirmations`` (the ``erasure-done`` events)
        are queued in the same transaction (:meth:`~dangol_edge.state_outbox.OutboxTable.erase_customers`).
        Returns the events removed.

        Raises:
            sqlite3.Error: the state file cannot be written (nothing there is changed; call again).
        """
        ids = {str(c) for c in customer_ids}
        with self._lock:
            kept = deque(e for e in self._held if subject(e) not in ids)
            for e in self._held:
                if subject(e) in ids:
                    self._on_saved.pop(e.event_id, None)
            gone, self._held = len(self._held) - len(kept), kept
        topic = events_topic(self.device_id)
        removed = self.state.erase_customers(ids, [(str(e.event_id), topic, dump_payload(e)) for e in confirmations])
        if self.sync is not None:
            self.sync.wake()
        return removed + gone

    def send(self, event: Event, on_saved: Callable[[], None] | None = None) -> None:
        """Queue ``event``.

        Args:
            on_saved: called once the event is written: before this returns, or later by :meth:`retry` (on its
                thread) when it was held; never when a held event is dropped or erased. It must not raise (what it
                raises is logged).

        Raises:
            EventNotSaved: the outbox cannot be written now (``sqlite3.OperationalError``: disk full, read-only
                medium); the event is held and retried by :meth:`retry`.
            sqlite3.DatabaseError: the state file failed otherwise (e.g. a damaged page): nothing is held.
        """
        try:
            self._write(event)
        except sqlite3.OperationalError as exc:
            self._hold(event, on_saved)
            raise EventNotSaved(f"event {event.event_id} not saved ({exc}); held in memory and retried") from exc
        self._saved(event, on_saved)

    @staticmethod
    def _saved(event: Event, on_saved: Callable[[], None] | None) -> None:
        if on_saved is None:
            return
        try:
            on_saved()
        except Exception:
            log.exception("event %s (%s) is saved, but what was to follow it failed", event.event_id, event.kind)

    def _hold(self, event: Event, on_saved: Callable[[], None] | None = None) -> None:
        with self._lock:
            if len(self._held) >= HELD_MAX:
                lost = self._held.popleft()
                self._on_saved.pop(lost.event_id, None)
                self.dropped += 1
                log.error("dropped held event %s (%s): more than %d events could not be saved",
                          lost.event_id, lost.kind, HELD_MAX)
            self._held.append(event)
            if on_saved is not None:
                self._on_saved[event.event_id] = on_saved

    def _remove_held(self, event: Event) -> None:
        """Take ``event`` itself (identity, not equality) out of the held events, if it is still there; the caller
        holds the lock."""
        for i, held in enumerate(self._held):
            if held is event:
                del self._held[i]
                return

    def retry(self) -> int:
        """Write held events, oldest first, until one fails again; returns how many were written. An event taken out
        meanwhile by :meth:`erase` (another thread) is not taken out a second time, nor is any other in its place;
        its ``on_saved`` was dropped by the erasure."""
        done = 0
        while True:
            with self._lock:
                if not self._held:
                    return done
                event = self._held[0]
            try:
                self._write(event)
            except sqlite3.OperationalError as exc:
                log.warning("%d held event(s) still cannot be saved: %s", len(self._held), exc)
                return done
            with self._lock:  # an erasure or the HELD_MAX bound may have taken it out meanwhile: never another
                if self._held and self._held[0] is event:
                    self._held.popleft()
                else:
                    self._remove_held(event)
                on_saved = self._on_saved.pop(event.event_id, None)
            self._saved(event, on_saved)
            done += 1
