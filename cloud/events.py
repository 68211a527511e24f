"""Apply edge → cloud MQTT messages (events and status) to the database.

:func:`handle_message` validates with :func:`dangol_protocol.parse_payload`; an invalid payload, an
unknown device or a replayed ``event_id`` changes nothing. :class:`Listener` subscribes to
``dangol/v1/devices/+/events`` and ``.../status`` with QoS 1 in a persistent session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import Enum

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.db import Database
from dangol_cloud.erasure import audit, erase_customer, record_confirmation
from dangol_cloud.models import Customer, Device, DeviceEvent, Erasure, Visit
from dangol_cloud.mqtt import new_client

__all__ = ["Outcome", "Listener", "handle_message"]

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    """What :func:`handle_message` did with a message."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    INVALID = "invalid"
    UNKNOWN_DEVICE = "unknown-device"
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


def _apply_event(session: Session, device: Device, event) -> None:
    session.add(DeviceEvent(event_id=str(event.event_id), device_id=device.id, kind=event.kind, ts=event.ts,
                            payload=_stored_payload(event)))
    if isinstance(event, proto.ArrivalEvent):
        customer_id = str(event.customer_id) if event.customer_id else None
        if customer_id and session.get(Customer, customer_id) is None:
            log.warning("arrival %s names unknown customer %s; recorded as unknown", event.event_id, customer_id)
            customer_id = None
        session.add(Visit(event_id=str(event.event_id), customer_id=customer_id, device_id=device.id,
                          store_id=device.store_id, ts=event.ts, confidence=event.confidence,
                          shown_items=list(event.shown_items)))
    elif isinstance(event, proto.EnrolmentEvent):
        customer = session.get(Customer, str(event.customer_id))
        if customer is None:
            customer = Customer(id=str(event.customer_id), source="edge", status="pending")
            session.add(customer)
        customer.status = event.status
        if event.display_name:
            customer.display_name = event.display_name
        if event.consent is not None:
            new = customer.consent_at != event.consent.recorded_at
            customer.consent_by = event.consent.recorded_by
            customer.consent_at = event.consent.recorded_at
            customer.consent_text_version = event.consent.text_version
            if new:
                audit(session, f"device:{device.id}", "consent-recorded", customer_id=customer.id, device_id=device.id,
                      detail=f"text version {event.consent.text_version}")
    elif isinstance(event, proto.ErasureDoneEvent) and event.erasure_id is not None:
        erasure = session.get(Erasure, str(event.erasure_id))
        if erasure is not None:
            record_confirmation(session, erasure, device.id)
    elif isinstance(event, proto.ErasureDoneEvent):  # erased on the edge's staff page: erase everywhere
        for customer_id in map(str, event.customer_ids):
            if session.get(Customer, customer_id) is not None:
                erase_customer(session, customer_id, actor=f"device:{device.id}", reason="edge staff page",
                               confirmed_device=device.id)


def handle_message(db: Database, topic: str, payload: bytes) -> Outcome:
    """Validate one message from a device topic and record it in its own transaction.

    Events: each ``event_id`` is stored once (a replay is a no-op). Arrivals become visits, enrolments
    create/activate customers, erasure-done marks the erasure confirmed. Status updates the device's
    ``state``/``health`` (only if newer). An invalid payload is logged with topic and reason, and dropped.

    Returns:
        The :class:`Outcome`. Never raises for bad input (a string with NUL, or any value the database
        refuses as data, is INVALID with nothing written); database outages propagate (not acknowledged).
    """
    if proto.is_retained_clear(payload):
        return Outcome.IGNORED
    try:
        message = proto.parse_payload(topic, payload)
    except proto.PayloadError as exc:
        log.warning("dropped message: %s", exc)
        return Outcome.INVALID
    field = _nul_field(message.model_dump(mode="json", by_alias=True))
    if field is not None:  # PostgreSQL text cannot hold NUL, and no name or id needs one
        log.warning("dropped message on %r: %s contains a NUL character", topic, field)
        return Outcome.INVALID
    device_id = str(message.device_id)
    try:
        with db.transaction() as session:
            device = session.get(Device, device_id)
            if device is None:
                log.warning("dropped message on %r: unknown device %s", topic, device_id)
                return Outcome.UNKNOWN_DEVICE
            if isinstance(message, proto.Status):
                if message.ts is not None and device.status_at is not None and message.ts < device.status_at:
                    return Outcome.IGNORED
                device.state = message.state
                device.status_at = message.ts or device.status_at
                if message.health is not None:
                    device.health = message.health.model_dump(mode="json")
                return Outcome.STORED
            if session.scalar(select(DeviceEvent.event_id).where(DeviceEvent.event_id == str(message.event_id))):
                log.info("duplicate event %s on %r ignored", message.event_id, topic)
                return Outcome.DUPLICATE
            _apply_event(session, device, message)
        return Outcome.STORED
    except IntegrityError:  # a concurrent delivery of the same event_id won the race
        log.info("duplicate event on %r ignored (concurrent insert)", topic)
        return Outcome.DUPLICATE
    except DataError as exc:  # a value the database cannot store: the message is bad, not the database
        log.warning("dropped message on %r: the database refused a value (%s)", topic, str(exc.orig).splitlines()[0])
        return Outcome.INVALID


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
            has not confirmed), and with None after an edge-initiated erasure was stored (send it to the
            other stores); its exceptions are logged (the erasures stay pending and are re-sent later).
        client_id: MQTT client id; the session is persistent (clean_session=False), so QoS 1 events sent
            while the listener was down are delivered when it reconnects. Messages are acknowledged only
            after they were stored (or judged invalid/duplicate): one that failed to store (database down)
            is redelivered by the broker when the listener reconnects.

    ``start()`` connects in the background and subscribes (also after every reconnection); a broker that
    is down at start or later is retried with back-off. ``stop()`` disconnects.
    """

    def __init__(self, db: Database, mqtt_url: str, client_id: str = "dangol-cloud-listener",
                 on_activated: Callable[[str], object] | None = None,
                 on_erasures: Callable[[str | None], object] | None = None) -> None:
        self.db = db
        self.on_activated = on_activated
        self.on_erasures = on_erasures
        self.mqtt_url = mqtt_url
        self.client_id = client_id
        self.client = None
        self.subscribed = threading.Event()
        self.counts: dict[Outcome, int] = {o: 0 for o in Outcome}
        self.failures = 0

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the listener: %s", reason_code)
            return
        client.subscribe(proto.device_subscriptions())

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            outcome = handle_message(self.db, message.topic, message.payload)
        except Exception:  # e.g. database down: NOT acknowledged, so the broker redelivers it on reconnect
            log.exception("failed to store message from %r; left unacknowledged for redelivery", message.topic)
            self.failures += 1
            return
        client.ack(message.mid, message.qos)
        self.counts[outcome] += 1
        if outcome is not Outcome.STORED:
            return
        event = proto.parse_payload(message.topic, message.payload)  # already validated: cannot fail
        if self.on_activated is not None and isinstance(event, proto.EnrolmentEvent) and event.status == "active":
            try:
                self.on_activated(str(event.customer_id))
            except Exception:  # the visit/enrolment is stored; the menu goes out with the next publish
                log.exception("welcoming newly active customer %s failed", event.customer_id)
        if self.on_erasures is None:
            return
        target = None
        if isinstance(event, proto.Status) and event.state == "online":
            target = str(event.device_id)
        elif not (isinstance(event, proto.ErasureDoneEvent) and event.erasure_id is None):
            return
        try:
            self.on_erasures(target)
        except Exception:  # stays pending: re-published on the schedule
            log.exception("re-publishing pending erasures (device %s) failed; retried on the schedule", target)

    def start(self, timeout: float = 10.0) -> "Listener":
        """Start the network loop and connect in the background; returns once subscribed, or after
        ``timeout`` seconds with a warning if the broker is not reachable yet (paho keeps retrying, with
        back-off up to 60 s, and subscribes on every successful connection).

        Raises:
            MqttError: the MQTT URL is malformed.
        """
        client, host, port = new_client(self.mqtt_url, self.client_id, clean_session=False, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = lambda c, u: log.warning("MQTT broker %s:%s unreachable; retrying", host, port)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        self.client = client
        if not self.subscribed.wait(timeout):
            log.warning("MQTT listener not subscribed after %.0f s (broker %s:%s); still trying", timeout, host, port)
        return self

    def stop(self) -> None:
        """Disconnect and stop the network loop (idempotent)."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
