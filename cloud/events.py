"""Apply edge → cloud MQTT messages (events and status) to the database, within each device's rights.

:func:`handle_message` bounds and validates with :func:`dangol_protocol.parse_payload` (size and nesting
depth checked before JSON decoding), checks the event against what the sending device may do
(:mod:`dangol_cloud.device_trust`) and applies it in one transaction. A message that cannot be parsed, is
refused, names an unknown device or fails to apply is written to the bounded dead-letter table and counted
for its device; a replayed ``event_id`` changes nothing. :class:`Listener` subscribes to
``dangol/v1/devices/+/events`` and ``.../status`` with QoS 1 in a persistent session and applies messages on
its own worker thread (a bounded queue), acknowledging each once it was stored or dead-lettered.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from enum import Enum

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.db import Database
from dangol_cloud.device_trust import Refused, bounded_ts, check_event, record_dead_letter
from dangol_cloud.erasure import audit, record_confirmation
from dangol_cloud.models import (
    Customer, CustomerOrigin, Device, DeviceEvent, Erasure, ErasureRequest, Visit, utcnow,
)
from dangol_cloud.mqtt import connect_options, new_client
from dangol_protocol.client import is_refusal, refusals
from dangol_cloud.services import record_consent

__all__ = ["DATABASE_TROUBLE", "Outcome", "Listener", "handle_message"]

log = logging.getLogger(__name__)

DATABASE_TROUBLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.ProgrammingError, sa_exc.InternalError,
                    sa_exc.DisconnectionError, sa_exc.TimeoutError)
"""Errors that mean the database (not the message) is the problem: the message is not acknowledged, and
is retried (the broker redelivers it with the persistent session)."""


class Outcome(str, Enum):
    """What :func:`handle_message` did with a message."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    INVALID = "invalid"
    REFUSED = "refused"
    UNKNOWN_DEVICE = "unknown-device"
    ERROR = "error"
    IGNORED = "ignored"


def _stored_payload(event) -> dict:
    """The event as kept in ``device_events``, minus personal fields (name, who recorded consent): those live
    only in the encrypted customer columns, so an erasure leaves no copy behind."""
    payload = event.model_dump(mode="json", by_alias=True)
    if isinstance(event, proto.EnrolmentEvent):
        payload["display_name"] = None
        if payload.get("consent"):
            payload["consent"]["recorded_by"] = None
    return payload


def _apply_enrolment(session: Session, device: Device, event: proto.EnrolmentEvent) -> None:
    customer = session.get(Customer, str(event.customer_id))
    if customer is None:  # a new customer of this device's store
        customer = Customer(id=str(event.customer_id), source="edge", status="pending")
        session.add(customer)
        session.add(CustomerOrigin(customer_id=customer.id, store_id=device.store_id, device_id=device.id,
                                   created_at=utcnow()))
    elif customer.status not in ("pending", "active"):  # checked first by device_trust; never undo a withdrawal
        raise Refused(f"enrolment names customer {customer.id}, whose consent was withdrawn")
    if event.display_name:
        customer.display_name = event.display_name
    if event.consent is not None:  # the same service as the dashboard's consent form
        record_consent(session, customer, display_name=event.display_name, recorded_by=event.consent.recorded_by,
                       text_version=event.consent.text_version,
                       recorded_at=bounded_ts(event.consent.recorded_at, "consent recorded_at"),
                       actor=f"device:{device.id}", device_id=device.id)
    customer.status = event.status


def _apply_erasure_request(session: Session, device: Device, event: proto.ErasureDoneEvent) -> None:
    """Erased on the device's staff page: recorded as a request naming the device, for an owner to confirm."""
    for customer_id in sorted({str(c) for c in event.customer_ids}):
        if session.get(Customer, customer_id) is None:
            continue  # never reached the cloud, or already erased
        pending = session.scalar(select(ErasureRequest.id).where(ErasureRequest.customer_id == customer_id,
                                                                  ErasureRequest.status == "pending"))
        if pending is None:
            session.add(ErasureRequest(event_id=str(event.event_id), device_id=device.id, customer_id=customer_id,
                                       requested_at=utcnow(), status="pending"))
            audit(session, f"device:{device.id}", "erasure-asked-by-device", customer_id=customer_id,
                  device_id=device.id, detail="erased on the device; waiting for an owner to confirm everywhere")


def _apply_event(session: Session, device: Device, event, ts) -> None:
    session.add(DeviceEvent(event_id=str(event.event_id), device_id=device.id, kind=event.kind, ts=ts,
                            payload=_stored_payload(event)))
    if isinstance(event, proto.ArrivalEvent):
        customer_id = str(event.customer_id) if event.customer_id else None
        if customer_id and session.get(Customer, customer_id) is None:
            log.warning("arrival %s names unknown customer %s; recorded as unknown", event.event_id, customer_id)
            customer_id = None
        session.add(Visit(event_id=str(event.event_id), customer_id=customer_id, device_id=device.id,
                          store_id=device.store_id, ts=ts, confidence=event.confidence,
                          shown_items=list(event.shown_items)))
    elif isinstance(event, proto.EnrolmentEvent):
        _apply_enrolment(session, device, event)
    elif isinstance(event, proto.ErasureDoneEvent) and event.erasure_id is not None:
        record_confirmation(session, session.get(Erasure, str(event.erasure_id)), device.id)
    elif isinstance(event, proto.ErasureDoneEvent):
        _apply_erasure_request(session, device, event)


def _topic_device(topic: str) -> str | None:
    try:
        return proto.parse_topic(topic).device_id
    except proto.TopicError:
        return None


def _dead_letter(db: Database, topic: str, payload: bytes, kind: str, reason: str) -> None:
    with db.transaction() as session:
        record_dead_letter(session, topic=topic, payload=payload, kind=kind, reason=reason,
                           device_id=_topic_device(topic))


def handle_message(db: Database, topic: str, payload: bytes) -> Outcome:
    """Validate one message from a device topic, check it against the device's rights and record it in
    its own transaction.

    Events: each ``event_id`` is stored once (a replay by the same device is a no-op; by another device it
    is refused). Arrivals become visits, enrolments create/activate customers of the device's store,
    erasure-done confirms an erasure sent to the device or records the device's erasure request. Status
    updates the device's ``state``/``health`` (only if newer; a time ahead of the cloud's clock counts as
    now). Anything invalid, refused, from an unknown device, or failing to apply is logged with topic and
    reason and written to the dead-letter table (:func:`dangol_cloud.device_trust.record_dead_letter`).

    Returns:
        The :class:`Outcome`. Never raises for bad input; errors in :data:`DATABASE_TROUBLE` (database down
        or broken) propagate, and the caller must not acknowledge the message.
    """
    if proto.is_retained_clear(payload):
        return Outcome.IGNORED
    try:
        message = proto.parse_payload(topic, payload)
    except proto.PayloadError as exc:
        log.warning("dead letter: %s", exc)
        _dead_letter(db, topic, payload, "invalid", exc.reason)
        return Outcome.INVALID
    field = _nul_field(message.model_dump(mode="json", by_alias=True))
    if field is not None:  # PostgreSQL text cannot hold NUL, and no name or id needs one
        log.warning("dead letter on %r: %s contains a NUL character", topic, field)
        _dead_letter(db, topic, payload, "invalid", f"{field} contains a NUL character")
        return Outcome.INVALID
    try:
        return _store(db, topic, message)
    except Refused as exc:
        log.warning("refused message on %r from device %s: %s", topic, message.device_id, exc)
        _dead_letter(db, topic, payload, "refused", str(exc))
        return Outcome.REFUSED
    except LookupError as exc:
        log.warning("dead letter on %r: %s", topic, exc)
        _dead_letter(db, topic, payload, "unknown-device", str(exc))
        return Outcome.UNKNOWN_DEVICE
    except sa_exc.IntegrityError:  # a concurrent delivery of the same event_id won the race
        log.info("duplicate event on %r ignored (concurrent insert)", topic)
        return Outcome.DUPLICATE
    except sa_exc.DataError as exc:  # a value the database cannot store: the message is bad, not the database
        reason = f"the database refused a value ({str(exc.orig).splitlines()[0]})"
        log.warning("dead letter on %r: %s", topic, reason)
        _dead_letter(db, topic, payload, "invalid", reason[:300])
        return Outcome.INVALID
    except DATABASE_TROUBLE:
        raise
    except Exception as exc:  # a bug or a message we cannot apply: acknowledged and kept, never a stall
        log.exception("dead letter on %r: applying it failed", topic)
        _dead_letter(db, topic, payload, "error", f"{type(exc).__name__}: {exc}"[:300])
        return Outcome.ERROR


def _store(db: Database, topic: str, message) -> Outcome:
    """Apply a validated message in one transaction. Raises Refused, or LookupError for an unknown device."""
    device_id = str(message.device_id)
    with db.transaction() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise LookupError(f"unknown device {device_id}")
        if isinstance(message, proto.Status):
            ts = None if message.ts is None else min(message.ts, utcnow())
            if ts is not None and device.status_at is not None and ts < device.status_at:
                return Outcome.IGNORED
            device.state = message.state
            device.status_at = ts or device.status_at
            if message.health is not None:
                device.health = message.health.model_dump(mode="json")
            return Outcome.STORED
        stored_by = session.scalar(select(DeviceEvent.device_id).where(DeviceEvent.event_id == str(message.event_id)))
        if stored_by == device.id:
            log.info("duplicate event %s on %r ignored", message.event_id, topic)
            return Outcome.DUPLICATE
        ts = check_event(session, device, message)
        _apply_event(session, device, message, ts)
    return Outcome.STORED


def _nul_field(value, path: str = "payload") -> str | None:
    """Dotted path of the first string containing U+0000 in a JSON-like value, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _nul_field(item, f"{path}.{key}")
        if found is not None:
            return found
    return None


class Listener:
    """Background MQTT consumer of device events and status.

    Args:
        db: the database to write to.
        mqtt_url: broker URL (``mqtt://user:password@host:port``).
        on_activated: called with the customer id after an ``enrolment`` event made a customer active
            (e.g. to publish their first menu); its exceptions are logged, not raised.
        on_erasures: called with a device id when that device reports ``online`` (re-send the erasures it
            has not confirmed); its exceptions are logged (the erasures stay pending and are re-sent later).
        client_id: MQTT client id, reserved for the cloud by the broker configuration
            (:mod:`dangol_cloud.broker_auth`: a device may connect only with its own id); MQTT 5, the session
            is persistent (``clean_start=False``, never expires), so QoS 1 events sent while the listener was
            down are delivered when it reconnects; a refused subscription is logged with its reason code.
        queue_size: messages handed from paho's network thread to the worker; also the session's Receive
            Maximum, so the broker never has more unacknowledged messages in flight to us than the queue
            holds and the network thread never waits on the database.

    paho's network thread only queues each message; one worker thread applies them in order
    (:func:`handle_message`) and acknowledges each once it was stored, judged a duplicate, or written to
    the dead-letter table — a poison message can never hold the broker's in-flight window. Only
    :data:`DATABASE_TROUBLE` leaves a message unacknowledged: the worker retries it with back-off (1 s … 30 s,
    counted in ``failures``) until the database answers or the listener stops (then the broker redelivers it).

    ``start()`` connects in the background and subscribes (also after every reconnection); a broker that
    is down at start or later is retried with back-off. ``stop()`` disconnects.
    """

    def __init__(self, db: Database, mqtt_url: str, client_id: str = "dangol-cloud-listener",
                 on_activated: Callable[[str], object] | None = None,
                 on_erasures: Callable[[str | None], object] | None = None, queue_size: int = 100) -> None:
        self.db = db
        self.on_activated = on_activated
        self.on_erasures = on_erasures
        self.mqtt_url = mqtt_url
        self.client_id = client_id
        self.client = None
        self.subscribed = threading.Event()
        self.counts: dict[Outcome, int] = {o: 0 for o in Outcome}
        self.failures = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._generation = 0
        self._worker: threading.Thread | None = None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if is_refusal(reason_code):
            log.error("MQTT broker refused the listener: %s", reason_code)
            return
        self._generation += 1  # message ids of an earlier connection must not be acknowledged on this one
        client.subscribe(proto.device_subscriptions())

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = refusals(reason_codes)
        if refused:
            log.error("MQTT broker refused the listener's subscriptions: %s", refused)
            return
        self.subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        item = (self._generation, message.topic, bytes(message.payload), message.mid, message.qos)
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                log.warning("listener queue full (%d); waiting for the worker", self._queue.maxsize)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._process(*item)

    def _process(self, generation: int, topic: str, payload: bytes, mid: int, qos: int) -> None:
        delay = 1.0
        while True:
            try:
                outcome = handle_message(self.db, topic, payload)
                break
            except DATABASE_TROUBLE:  # not the message's fault: keep it, retry; unacknowledged if we stop
                self.failures += 1
                log.exception("failed to store message from %r; retrying in %.0f s", topic, delay)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
            except Exception:  # even writing its dead letter failed: acknowledge it anyway, never stall
                log.exception("message from %r could not be applied nor dead-lettered; acknowledged", topic)
                outcome = Outcome.ERROR
                break
        client = self.client
        if client is not None and generation == self._generation:
            client.ack(mid, qos)  # a message of an older connection is redelivered (deduplicated on event_id)
        self.counts[outcome] += 1
        if outcome is Outcome.STORED:
            self._after_stored(topic, payload)

    def _after_stored(self, topic: str, payload: bytes) -> None:
        event = proto.parse_payload(topic, payload)  # already validated: cannot fail
        if self.on_activated is not None and isinstance(event, proto.EnrolmentEvent) and event.status == "active":
            try:
                self.on_activated(str(event.customer_id))
            except Exception:  # the visit/enrolment is stored; the menu goes out with the next publish
                log.exception("welcoming newly active customer %s failed", event.customer_id)
        if self.on_erasures is not None and isinstance(event, proto.Status) and event.state == "online":
            try:
                self.on_erasures(str(event.device_id))
            except Exception:  # stays pending: re-published on the schedule
                log.exception("re-publishing pending erasures (device %s) failed; retried on the schedule",
                              event.device_id)

    def start(self, timeout: float = 10.0) -> "Listener":
        """Start the worker and the network loop and connect in the background; returns once subscribed, or
        after ``timeout`` seconds with a warning if the broker is not reachable yet (paho keeps retrying,
        with back-off up to 60 s, and subscribes on every successful connection).

        Raises:
            MqttError: the MQTT URL is malformed.
        """
        client, host, port = new_client(self.mqtt_url, self.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = lambda c, u: log.warning("MQTT broker %s:%s unreachable; retrying", host, port)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        self._stopping.clear()
        self._worker = threading.Thread(target=self._work, name="dangol-listener-worker", daemon=True)
        self._worker.start()
        self.client = client
        client.connect_async(host, port, keepalive=30,
                             **connect_options(clean_session=False, receive_maximum=self._queue.maxsize))
        client.loop_start()
        if not self.subscribed.wait(timeout):
            log.warning("MQTT listener not subscribed after %.0f s (broker %s:%s); still trying", timeout, host, port)
        return self

    def stop(self) -> None:
        """Disconnect, stop the network loop and the worker (idempotent). Messages still queued are not
        acknowledged: the broker delivers them again to the next session."""
        self._stopping.set()
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
        if self._worker is not None:
            while True:  # make room for the sentinel; what is dropped here was never acknowledged
                try:
                    self._queue.put_nowait(None)
                    break
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass
            self._worker.join(timeout=60)
            self._worker = None
