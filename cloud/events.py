"""Apply edge → cloud MQTT messages (events and status) to the database, within each device's rights.

:func:`handle_message` bounds and validates with :func:`dangol_protocol.parse_payload` (size and nesting
depth checked before JSON decoding), checks the event against what the sending device may do
(:mod:`dangol_cloud.device_trust`) and applies it in one transaction (:mod:`dangol_cloud.event_store`). A
message that cannot be parsed, is refused, names an unknown device or fails to apply is written to the bounded
dead-letter table and counted for its device; a replayed ``event_id`` changes nothing. :class:`Listener`
subscribes to ``dangol/v1/devices/+/events`` with QoS 1 and ``.../status`` with QoS 0 (the retained latest is
enough; a QoS 0 subscription is never queued while the cloud is down, :data:`dangol_protocol.topics.STATUS_QOS`)
in a persistent session and applies messages on its own worker thread (a bounded queue), acknowledging each once
it was stored or dead-lettered. Status itself is applied by :mod:`dangol_cloud.device_status`.

A *retained* event (handed over on every subscription) is never applied: counted (``retained``), dead-lettered once
and cleared by the listener, whose events subscription is *no local* and *retain as published*. Mosquitto's ACLs
grant topics, not the retain flag, so it cannot forbid one (docs/mqtt.md)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import exc as sa_exc

import dangol_protocol as proto
from dangol_cloud.background import ErasureResender, MenuRepublisher
from dangol_cloud.broker_logins import LoginReconciler
from dangol_cloud.db import Database
from dangol_cloud.device_trust import Refused, nul_field, record_dead_letter, record_retained_event
from dangol_cloud.event_store import Outcome, store_message
from dangol_cloud.models import Device
from dangol_cloud.mqtt import connect_options, new_client
from dangol_protocol.client import is_refusal, refusals

__all__ = ["DATABASE_TROUBLE", "FOLLOW_UP_MAX_PENDING", "Outcome", "Listener", "handle_message"]

log = logging.getLogger(__name__)

#: Newly active customers whose failed welcome (``on_activated``) may wait for a retry at once (:class:`Listener`).
FOLLOW_UP_MAX_PENDING = 10_000

DATABASE_TROUBLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.ProgrammingError, sa_exc.InternalError,
                    sa_exc.DisconnectionError, sa_exc.TimeoutError)
"""Errors that mean the database (not the message) is the problem: the message is not acknowledged, and
is retried (the broker redelivers it with the persistent session)."""


def _topic_device(topic: str) -> str | None:
    try:
        return proto.parse_topic(topic).device_id
    except proto.TopicError:
        return None


def _dead_letter(db: Database, topic: str, payload: bytes, kind: str, reason: str) -> None:
    with db.transaction() as session:
        record_dead_letter(session, topic=topic, payload=payload, kind=kind, reason=reason,
                           device_id=_topic_device(topic))


def _not_an_event(db: Database, topic: str, payload: bytes, retained: bool) -> Outcome | None:
    """The outcome of an empty or retained message on an events topic (:func:`handle_message`), else None."""
    device_id = _topic_device(topic)
    if device_id is None or proto.parse_topic(topic).kind is not proto.TopicKind.EVENTS:
        return None
    if proto.is_retained_clear(payload):  # an event is never empty: only the cloud clears a removed device's topic
        with db.sessions() as session:
            if session.get(Device, device_id) is None:
                log.info("empty payload on %r ignored (a removed device's topic cleared)", topic)
                return Outcome.FORGOTTEN_DEVICE
        log.warning("dead letter on %r: empty payload on an events topic", topic)
        _dead_letter(db, topic, b"", "invalid", "empty payload on an events topic (only the cloud clears it)")
        return Outcome.INVALID
    if not retained:
        return None
    with db.transaction() as session:
        new = record_retained_event(session, topic=topic, payload=payload)
    log.warning("retained message on %r never applied (dead-lettered%s); clearing it", topic, "" if new else " before")
    return Outcome.RETAINED


def handle_message(db: Database, topic: str, payload: bytes, *, retained: bool = False,
                   came_online: Callable[[str], object] | None = None,
                   activated: Callable[[str], object] | None = None) -> Outcome:
    """Validate one message from a device topic, check it against the device's rights and record it in
    its own transaction.

    ``retained``: the broker delivered it as a retained message (on subscription, or live with the listener's
    *retain as published*), not a live one. ``came_online``: called with the device id, after the commit, when a
    status shows the device coming online (:func:`dangol_cloud.device_status.came_online`). ``activated``: called
    with the customer id, after the commit, when an enrolment made a customer active (not on a no-op ``active``).

    A retained message on an events topic is never applied: ``RETAINED``, dead-lettered once (the caller clears it).
    An empty payload (a clear) is ignored on status topics, a dead letter on an events topic unless its device is
    gone (``FORGOTTEN_DEVICE``: the cloud's clear of a removed device's topic).

    Events: each ``event_id`` is stored once (a replay by the same device is a no-op; by another device it
    is refused; a concurrent copy losing the race is ``DUPLICATE``, while any other integrity error is applied once
    more as what it now is, :func:`dangol_cloud.event_store.store_message`). Arrivals become visits, enrolments
    create/activate customers of the device's store, erasure-done confirms an erasure sent to the device or records
    the device's erasure request. Status updates the device's ``state``/``health`` in arrival order, ``status_at``
    the time received, unless retained (:func:`dangol_cloud.device_status.apply_status`). Anything invalid, refused,
    from an unknown device, or failing to apply is logged with topic and reason and written to the dead-letter table
    (:func:`dangol_cloud.device_trust.record_dead_letter`) — except a *retained* status of an unknown device (a
    removed device's last report): ``FORGOTTEN_DEVICE``, not kept.

    Returns:
        The :class:`Outcome`. Never raises for bad input; errors in :data:`DATABASE_TROUBLE` (database down
        or broken) propagate, and the caller must not acknowledge the message.
    """
    outcome = _not_an_event(db, topic, payload, retained)
    if outcome is not None:
        return outcome
    if proto.is_retained_clear(payload):
        return Outcome.IGNORED
    try:
        message = proto.parse_payload(topic, payload)
    except proto.PayloadError as exc:
        log.warning("dead letter: %s", exc)
        _dead_letter(db, topic, payload, "invalid", exc.reason)
        return Outcome.INVALID
    field = nul_field(message.model_dump(mode="json", by_alias=True))
    if field is not None:  # PostgreSQL text cannot hold NUL, and no name or id needs one
        log.warning("dead letter on %r: %s contains a NUL character", topic, field)
        _dead_letter(db, topic, payload, "invalid", f"{field} contains a NUL character")
        return Outcome.INVALID
    try:
        outcome, woke, made_active = store_message(db, topic, message, retained=retained)
    except Refused as exc:
        log.warning("refused message on %r from device %s: %s", topic, message.device_id, exc)
        _dead_letter(db, topic, payload, "refused", str(exc))
        return Outcome.REFUSED
    except LookupError as exc:
        if retained and isinstance(message, proto.Status):  # a removed device's last report, still retained
            log.info("retained status of unknown device %s ignored (removed device)", message.device_id)
            return Outcome.FORGOTTEN_DEVICE
        log.warning("dead letter on %r: %s", topic, exc)
        _dead_letter(db, topic, payload, "unknown-device", str(exc))
        return Outcome.UNKNOWN_DEVICE
    except sa_exc.DataError as exc:  # a value the database cannot store: the message is bad, not the database
        reason = f"the database refused a value ({str(exc.orig).splitlines()[0]})"
        log.warning("dead letter on %r: %s", topic, reason)
        _dead_letter(db, topic, payload, "invalid", reason[:300])
        return Outcome.INVALID
    except sa_exc.IntegrityError as exc:  # failed twice, not as a duplicate (event_store): kept, never dropped
        reason = f"the database refused it twice ({(str(exc.orig).splitlines() or ['?'])[0]})"
        log.warning("dead letter on %r: %s", topic, reason)
        _dead_letter(db, topic, payload, "error", reason[:300])
        return Outcome.ERROR
    except DATABASE_TROUBLE:
        raise
    except Exception as exc:  # a bug or a message we cannot apply: acknowledged and kept, never a stall
        log.exception("dead letter on %r: applying it failed", topic)
        _dead_letter(db, topic, payload, "error", f"{type(exc).__name__}: {exc}"[:300])
        return Outcome.ERROR
    if woke and came_online is not None:
        came_online(str(message.device_id))
    if made_active is not None and activated is not None:
        activated(made_active)
    return outcome


class Listener:
    """Background MQTT consumer of device events and status.

    Args:
        db: the database to write to.
        mqtt_url: broker URL (``mqtt://user:password@host:port``).
        on_activated: called with the customer id after an ``enrolment`` event made a customer active — once: not
            for a re-sent or no-op ``active`` (e.g. to write and publish their first menu). If it raises (broker
            down, model unreadable) the failure is logged and counted in ``follow_up_failures`` and the customer
            is handed to :attr:`follow_ups` (a :class:`~dangol_cloud.background.MenuRepublisher`), which calls it
            again every ``follow_up_retry`` seconds, off the worker, until it succeeds (``follow_ups.failures``:
            failed retries; at most :data:`FOLLOW_UP_MAX_PENDING` customers wait, more are dropped and counted).
        on_erasures: called with a device id when that device comes online — its state was ``offline`` or
            unknown, or its status shows a restart (:func:`dangol_cloud.device_status.came_online`), never on
            each health report — to re-send the erasures it has not confirmed. Never on the worker: it is handed to
            an :class:`~dangol_cloud.background.ErasureResender` (:attr:`resender`), which runs it on its own thread
            at most once per ``erasure_interval`` per device; skipped ones are counted
            (:attr:`erasure_resends_skipped`) and its exceptions logged and counted in ``resender.failures`` (the
            erasures stay pending and are re-sent on the schedule).
        erasure_interval: seconds between two re-sends of one device's erasures (``serve`` passes
            ``erasure_republish_minutes``); 0, the default: no limit, repeats coalesce while one is pending.
        follow_up_retry: seconds between two tries of a welcome (``on_activated``) that failed.
        client_id: MQTT client id, reserved for the cloud by the broker configuration
            (:mod:`dangol_cloud.broker_auth`: a device may connect only with its own id); MQTT 5, the session
            is persistent (``clean_start=False``, never expires), so QoS 1 events sent while the listener was
            down are delivered when it reconnects; a refused subscription is logged with its reason code.
        queue_size: messages handed from paho's network thread to the worker; also the session's Receive
            Maximum, so the broker never has more unacknowledged messages in flight to us than the queue
            holds and the network thread never waits on the database.
        reconcile_logins: on every connection, bring the broker's device logins in line with the database
            (:attr:`logins`, a :class:`~dangol_cloud.broker_logins.LoginReconciler`: removed devices' logins
            deleted, unknown ones left alone, logins with an old password disabled; counted, failures logged and
            counted).

    paho's network thread only queues each message; one worker thread applies them in order
    (:func:`handle_message`) and acknowledges each once it was stored, judged a duplicate, or written to
    the dead-letter table — a poison message can never hold the broker's in-flight window. Only
    :data:`DATABASE_TROUBLE` leaves a message unacknowledged: the worker retries it with back-off (1 s … 30 s,
    counted in ``failures``) until the database answers or the listener stops (then the broker redelivers it).

    ``start()`` connects in the background and subscribes (also after every reconnection); a broker that
    is down at start or later is retried with back-off. ``stop()`` disconnects. A retained event is cleared, not
    waited for: :attr:`retained_cleared`, :attr:`retained_clear_failures` (it comes back, counted, not re-kept).
    """

    def __init__(self, db: Database, mqtt_url: str, client_id: str = "dangol-cloud-listener",
                 on_activated: Callable[[str], object] | None = None,
                 on_erasures: Callable[[str], object] | None = None, queue_size: int = 100,
                 erasure_interval: float = 0.0, follow_up_retry: float = 30.0, reconcile_logins: bool = True) -> None:
        self.db = db
        self.logins = LoginReconciler(db, mqtt_url, client_id=f"{client_id}-logins") if reconcile_logins else None
        self.on_activated = on_activated
        self.follow_up_retry = follow_up_retry
        self.follow_ups: MenuRepublisher | None = None  # made by start() when on_activated is given
        self.on_erasures = on_erasures
        self.erasure_interval = erasure_interval
        self.resender: ErasureResender | None = None  # made by start() when on_erasures is given
        self.mqtt_url = mqtt_url
        self.client_id = client_id
        self.client = None
        self.subscribed = threading.Event()
        self.counts: dict[Outcome, int] = {o: 0 for o in Outcome}
        self.failures = 0
        self.follow_up_failures = 0  # first on_activated calls that raised (logged; retried by follow_ups)
        self.retained_cleared = 0  # retained events cleared on the broker (its PUBACK said so)
        self.retained_clear_failures = 0  # clears not sent or refused by the broker (logged)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._generation = 0
        self._worker: threading.Thread | None = None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if is_refusal(reason_code):
            log.error("MQTT broker refused the listener: %s", reason_code)
            return
        self._generation += 1  # message ids of an earlier connection must not be acknowledged on this one
        client.subscribe([(topic, SubscribeOptions(qos=qos, noLocal=True, retainAsPublished=True))
                          if topic == proto.ALL_DEVICE_EVENTS else (topic, SubscribeOptions(qos=qos))
                          for topic, qos in proto.device_subscriptions()])  # events: retained seen, own clears not
        if self.logins is not None:  # on a thread of its own, one at a time
            self.logins.start()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if is_refusal(reason_code):  # the listener publishes only the clears of retained events
            self.retained_clear_failures += 1
            log.error("the broker refused to clear a retained event (message %d): %s", mid, reason_code)
        else:
            self.retained_cleared += 1

    def _clear_retained(self, topic: str) -> None:
        """Publish the empty retained payload on ``topic`` (QoS 1, not waited for: :meth:`_on_publish` counts)."""
        client = self.client
        rc = client.publish(topic, b"", qos=1, retain=True).rc if client is not None else None
        if rc != MQTT_ERR_SUCCESS:  # paho may still send it after reconnecting; else it comes back, counted once
            self.retained_clear_failures += 1
            log.warning("retained event on %r not cleared now (%s); it is counted, not dead-lettered, if it comes "
                        "back", topic, "stopping" if rc is None else rc)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = refusals(reason_codes)
        if refused:
            log.error("MQTT broker refused the listener's subscriptions: %s", refused)
            return
        self.subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        item = (self._generation, message.topic, bytes(message.payload), message.mid, message.qos, message.retain)
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

    def _process(self, generation: int, topic: str, payload: bytes, mid: int, qos: int, retained: bool) -> None:
        delay = 1.0
        woke: list[str] = []
        activated: list[str] = []
        while True:
            try:
                outcome = handle_message(self.db, topic, payload, retained=retained, came_online=woke.append,
                                         activated=activated.append)
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
        if outcome is Outcome.RETAINED:
            self._clear_retained(topic)
        if outcome is Outcome.STORED:
            self._after_stored(activated, woke)

    def _after_stored(self, activated: list[str], woke: list[str]) -> None:
        for customer_id in activated if self.on_activated is not None else ():  # made active by this very event
            try:
                self.on_activated(customer_id)
            except Exception:  # the enrolment is stored; the welcome is retried off the worker until it succeeds
                self.follow_up_failures += 1
                log.exception("welcoming newly active customer %s failed; retrying every %.0f s", customer_id,
                              self.follow_up_retry)
                if self.follow_ups is not None:
                    self.follow_ups.submit(customer_id)
        for device_id in woke if self.resender is not None else ():
            self.resender.submit(device_id)  # returns at once: the re-send runs on the resender's thread

    @property
    def erasure_resends_skipped(self) -> int:
        """Come-online erasure re-sends skipped (a device re-sent less than ``erasure_interval`` ago)."""
        return self.resender.skipped if self.resender is not None else 0

    def start(self, timeout: float = 10.0) -> "Listener":
        """Start the worker and the network loop and connect in the background; returns once subscribed, or
        after ``timeout`` seconds with a warning if the broker is not reachable yet (paho keeps retrying,
        with back-off up to 60 s, and subscribes on every successful connection).

        Raises:
            MqttError: the MQTT URL is malformed.
            ValueError: ``erasure_interval`` is negative.
        """
        if self.on_erasures is not None:
            self.resender = ErasureResender(self.on_erasures, min_interval=self.erasure_interval)
        if self.on_activated is not None:
            welcome = self.on_activated
            self.follow_ups = MenuRepublisher(lambda ids: sum(int(welcome(i) or 0) for i in ids),
                                              retry_seconds=self.follow_up_retry, max_pending=FOLLOW_UP_MAX_PENDING,
                                              what="welcomes")
        client, host, port = new_client(self.mqtt_url, self.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
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
        if self.resender is not None:
            self.resender.stop()
        if self.follow_ups is not None:
            self.follow_ups.stop()
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
