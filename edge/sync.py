"""MQTT sync between one edge device and the cloud (paho-mqtt 2.x, MQTT 5).

* **Session**: MQTT 5, client id ``dangol-edge-<device>`` (:func:`dangol_protocol.device_client_id`; the
  broker pins each device login to it), persistent session (``clean_start=False``,
  session expiry a week), QoS 1 everywhere, retained last will ``status/1 offline`` on the device's status topic, automatic
  reconnect with exponential backoff (``reconnect_min_s`` … ``reconnect_max_s``).
* **Down-link**: subscribes to its store's catalogue, menus and erasures (topic table in docs/mqtt.md);
  every payload is validated by :func:`dangol_protocol.parse_payload` — an invalid one is logged with
  its topic and reason and dropped, leaving the cache untouched. Catalogue and menus are cached in the
  :class:`~dangol_edge.state.StateStore`, so the box keeps working with the broker down; a menu of a customer
  erased on this box is refused (:mod:`dangol_edge.state_erased`). One that cannot be saved (disk full, …) is held
  in memory, bounded, and saved by each housekeeping pass (:mod:`dangol_edge.downlink`,
  :meth:`MQTTSync.retry_downlink`).
* **Up-link** (:mod:`dangol_edge.sync_uplink`): events go through the outbox table first; a flusher publishes them in
  order while connected and marks each sent when the broker's PUBACK arrives with a success code (a refusal, e.g. by
  the ACL, keeps it in the outbox, logged, and it is tried again after a back-off without blocking newer events; so
  does 0x10 *No matching subscribers*: the cloud's listener session is missing, nobody got it). Each PUBACK settles
  the event its message id was recorded for — also one ``publish()`` reported *not connected*, which paho sends after
  reconnecting; one that arrives before ``publish()`` has returned is parked and settled by the publisher (cleared on
  every connection, bounded), so a refusal is never mistaken for a success and a leftover acknowledgement never
  settles a later event. After a reconnect or a restart the unacknowledged ones are sent again, so delivery is
  at-least-once and the cloud's deduplication on ``event_id`` makes it exactly-once from the cloud's point of view.
* **Status**: ``online`` with health every ``status_interval_s`` and right after every connection (the broker
  publishes the retained last will ``offline`` when a connection drops): :meth:`MQTTSync.take_status_due`, published
  by the housekeeping worker on its own thread.
* **Storage faults**: a catalogue or menu that cannot be saved is held and saved later (above). When the
  acknowledgement of an event cannot be recorded (disk full, read-only medium) the event
  stays unacknowledged and is sent again; when a pass of the flusher fails (e.g. the outbox cannot be read)
  the flusher lives on. Either way ``stats.storage`` reports it, every failure is counted
  (:attr:`MQTTSync.storage_errors`, :attr:`MQTTSync.flush_errors`), a streak is logged once with its traceback
  and once when it ends, and the flusher retries after a back-off (``reconnect_min_s`` doubling up to
  ``reconnect_max_s``). Nothing raised by this code reaches paho's network thread, which would die of it.
* **Erasures** (:mod:`dangol_edge.erasures`): confirmed (at most ``MAX_ERASED_IDS`` ids per ``erasure-done``, same
  ``erasure_id``) only once the gallery's and the state's deletions committed; one that fails (a locked gallery, a
  full disk) is held, bounded, and retried by each housekeeping pass (:meth:`MQTTSync.retry_erasures`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
import importlib.metadata
from datetime import datetime, timezone

from dangol_protocol import client as mqtt5
from dangol_protocol import (
    Catalogue, Erasures, Menu, Status, dump_payload, last_will, parse_payload,
)
from dangol_protocol.client import MqttUrlError
from dangol_protocol.models import Health
from dangol_protocol.parse import PayloadError, is_retained_clear
from dangol_protocol.topics import (
    TopicError, TopicKind, device_client_id, events_topic, parse_topic, status_topic, store_subscriptions,
)

from .config import MQTTConfig
from .downlink import DownlinkCache
from .erasures import CloudErasures
from .events import EventFactory
from .state import StateStore
from .sync_uplink import Uplink
from .workers.base import Stats

log = logging.getLogger(__name__)


#: How long the broker keeps this device's session (subscriptions, queued QoS 1 messages) while it is
#: offline, seconds: a week covers a shop closed for the holidays.
SESSION_EXPIRY_S = 7 * 24 * 3600


def installed_version() -> str:
    """The installed ``dangol`` distribution's version (``importlib.metadata``), ``"unknown"`` when the
    package is not installed (run from a bare source tree)."""
    try:
        return importlib.metadata.version("dangol")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class MQTTConfigError(MqttUrlError):
    """The broker URL is malformed; the message names it (without the password)."""


def parse_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """``mqtt[s]://user:password@host:port`` → (host, port, user, password, tls)
    (:func:`dangol_protocol.client.parse_url`).

    Raises:
        MQTTConfigError: unknown scheme or no host.
    """
    try:
        a = mqtt5.parse_url(url)
    except MqttUrlError as exc:
        raise MQTTConfigError(str(exc)) from None
    return a.host, a.port, a.username, a.password, a.tls


class MQTTSync(Uplink):
    """The device's MQTT client.

    Args:
        config: broker settings.  device_id, store_id: this box's UUIDs.
        state: the catalogue/menu cache and outbox.
        on_erasure: called with each valid :class:`Erasures`: deletes the customers from the gallery and returns
            the ids it erased (raises on a storage error: the erasure is then held and retried; the confirmation is
            queued here once done).
        on_change: called with ``"catalogue"`` or ``"menu"`` after the cache changed (e.g. refresh the display).
        software_version: reported in ``status/1``; default the installed package's (:func:`installed_version`).
        stats: the daemon's :class:`~dangol_edge.workers.base.Stats`, whose ``storage`` this client sets when the
            state database fails it (default: its own).

    Attributes:
        storage_errors: broker acknowledgements that could not be recorded (the event is sent again).
        flush_errors: passes of the outbox flusher that failed (retried after a back-off).
        erasures: the :class:`~dangol_edge.erasures.CloudErasures` (``held``, ``errors``, ``dropped``).
        downlink: the :class:`~dangol_edge.downlink.DownlinkCache`: catalogue and menus that could not be saved
            (``held``, ``errors``, ``dropped``).
    """

    def __init__(self, config: MQTTConfig, device_id: uuid.UUID, store_id: uuid.UUID, state: StateStore,
                 on_erasure: Callable[[Erasures], list[str]] | None = None,
                 on_change: Callable[[str], None] | None = None, software_version: str | None = None,
                 stats: Stats | None = None):
        self.config = config
        self.device_id = device_id
        self.store_id = store_id
        self.state = state
        self.on_erasure = on_erasure
        self.on_change = on_change
        self.software_version = software_version or installed_version()
        self.stats = stats if stats is not None else Stats()
        self._init_uplink()
        self.events = EventFactory(device_id)
        self.connected = threading.Event()
        self.invalid_messages = 0
        self._client = None  # paho's mqtt.Client once started
        #: subscriptions the broker refused in its last SUBACK (reason code ≥ 0x80, e.g. its ACL)
        self.refused_subscriptions = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: set by every successful connection (the broker may have published the retained last will ``offline``):
        #: the housekeeping worker then publishes ``online`` on its own thread (:meth:`take_status_due`)
        self._status_due = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.erasures = CloudErasures(state, self.events, events_topic(device_id),
                                      lambda er: self.on_erasure(er) if self.on_erasure else [], self.stats,
                                      self._wake.set)
        self.downlink = DownlinkCache(state, self.stats, self._changed)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (works with the broker down) and start the outbox flusher.

        Raises:
            MQTTConfigError: no or malformed broker URL.
        """
        if not self.config.url:
            raise MQTTConfigError("no broker URL (set [mqtt] url or DANGOL_MQTT_URL)")
        try:  # MQTT 5: a PUBACK carries a reason code, so a publish the broker's ACL refuses is reported
            c, address = mqtt5.new_client(self.config.url, device_client_id(self.device_id),
                                          tls_ca=self.config.tls_ca, will=last_will(self.device_id))
        except MqttUrlError as exc:
            raise MQTTConfigError(str(exc)) from None
        c.reconnect_delay_set(min_delay=max(1, int(self.config.reconnect_min_s)),
                              max_delay=max(1, int(self.config.reconnect_max_s)))
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        self._client = c
        # persistent session: queued QoS 1 messages survive outages
        c.connect_async(address.host, address.port, keepalive=self.config.keepalive_s,
                        **mqtt5.connect_kwargs(clean_start=False, session_expiry_s=SESSION_EXPIRY_S))
        c.loop_start()
        self._flusher = threading.Thread(target=self._flush_loop, name="mqtt-outbox", daemon=True)
        self._flusher.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish ``offline`` (a clean disconnect does not fire the last will), disconnect, stop threads."""
        self._stop.set()
        self._wake.set()
        if self._flusher:
            self._flusher.join(timeout)
        c = self._client
        if c is not None:
            if self.connected.is_set():
                info = self._publish(status_topic(self.device_id),
                                     dump_payload(Status(device_id=self.device_id, state="offline",
                                                         ts=datetime.now(timezone.utc))), None, retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError) as exc:
                    log.warning("the offline status was not acknowledged (%s); the broker's last will covers it", exc)
            c.disconnect()
            c.loop_stop()
            self._client = None

    # --- callbacks (paho's network thread) ----------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if mqtt5.is_refusal(reason_code):
            log.error("broker refused the connection: %s", reason_code)
            return
        self._retry_refused_now()  # e.g. the ACL was fixed: try refused events again at once
        self._clear_early()
        log.info("connected to the broker (session present: %s)", flags.session_present)
        client.subscribe(store_subscriptions(self.store_id))
        self.connected.set()
        self._status_due.set()  # the broker may have published the last will: say online again (housekeeping)
        self._wake.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = mqtt5.refusals(reason_codes)
        self.refused_subscriptions = len(refused)
        if refused:  # e.g. the ACL does not give this login its store's topics: the screen will go stale
            log.error("the broker refused %d of this device's subscriptions (%s); check the store id and the "
                      "broker's ACL", len(refused), ", ".join(refused))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._stop.is_set():
            log.info("disconnected from the broker")
        elif self.connected.is_set():
            log.warning("disconnected from the broker (%s); reconnecting with backoff", reason_code)
        self.connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self.handle_message(msg.topic, msg.payload)
        except Exception:  # a bug in a handler must not kill paho's network thread
            log.exception("failed to handle a message on %s", msg.topic)

    def handle_message(self, topic: str, payload: bytes) -> str:
        """Validate and apply one down-link message; returns what happened: ``catalogue``, ``menu``,
        ``menu-cleared``, ``stale`` (the cache has a newer one), ``erased`` (a menu of a customer erased here:
        refused), ``held`` (a catalogue, menu or clear that could not be saved: held and saved by a housekeeping pass),
        ``erasures``, ``erasure-held`` (it failed and is retried), ``invalid``. A storage error is never raised: the
        message is held (paho acknowledges it when this returns)."""
        try:
            t = parse_topic(topic)
            if t.store_id != str(self.store_id):
                raise PayloadError(topic, "not this device's store")
            if t.kind is TopicKind.MENU and is_retained_clear(payload):
                return self.downlink.clear_menu(t.customer_id)
            obj = parse_payload(topic, payload)
        except (PayloadError, TopicError) as exc:
            self.invalid_messages += 1
            log.warning("dropped invalid message: %s", exc)
            return "invalid"
        if isinstance(obj, Catalogue):  # kept as the protocol's objects from here to the screen
            return self.downlink.put_catalogue(obj)
        if isinstance(obj, Menu):
            return self.downlink.put_menu(obj)
        if isinstance(obj, Erasures):
            if not self.erasures.apply(obj):
                return "erasure-held"
            self.downlink.forget(obj.customer_ids)
            return "erasures"
        self.invalid_messages += 1
        log.warning("dropped unexpected %s payload on %s", type(obj).__name__, topic)
        return "invalid"

    def _changed(self, what: str) -> None:
        if self.on_change:
            self.on_change(what)

    # --- up-link -----------------------------------------------------------------------------------
    def send_event(self, event) -> None:
        """Queue an event (``ArrivalEvent`` | ``EnrolmentEvent`` | ``ErasureDoneEvent``) in the outbox (one about a
        customer erased since it was made is not queued)."""
        if self.state.enqueue(str(event.event_id), events_topic(self.device_id), dump_payload(event)):
            self._wake.set()

    def wake(self) -> None:
        """Wake the outbox flusher (events were queued in the state directly, e.g. an erasure's confirmation)."""
        self._wake.set()

    def retry_erasures(self) -> int:
        """Carry out the held erasures again (the housekeeping worker calls it on each pass); returns how many are
        still held (:meth:`~dangol_edge.erasures.CloudErasures.retry`)."""
        return self.erasures.retry()

    def retry_downlink(self) -> int:
        """Save the held catalogue and menus again (the housekeeping worker calls it on each pass); returns how many
        are still held. Once none is and some were dropped (beyond the bound), subscribes to the store's topics again
        so the broker sends its retained catalogue and menus again (:mod:`dangol_edge.downlink`). Never raises."""
        left = self.downlink.retry()
        if not left and self.downlink.lost:
            lost, self.downlink.lost = self.downlink.lost, 0
            c = self._client
            if c is not None and self.connected.is_set():  # (else the next connection subscribes anyway)
                log.info("%d dropped menu(s): subscribing again for the broker's retained copies", lost)
                c.subscribe(store_subscriptions(self.store_id))
        return left

    def take_status_due(self) -> bool:
        """Whether a connection was made since ``online`` was last published (the broker may retain the last will
        ``offline``); clears the request. The housekeeping worker polls it and publishes :meth:`publish_status` with
        fresh health on its own thread: ``online`` follows a connection within half a second."""
        due = self._status_due.is_set()
        self._status_due.clear()
        return due

    def publish_status(self, health: Health) -> None:
        """Publish ``online`` with health on the retained status topic (skipped while disconnected: the next
        connection asks for it again, :meth:`take_status_due`)."""
        if self._client is not None and self.connected.is_set():
            self._status_due.clear()  # before publishing: a connection made meanwhile asks again
            self._publish(status_topic(self.device_id),
                          dump_payload(Status(device_id=self.device_id, state="online", ts=datetime.now(timezone.utc),
                                              health=health, software_version=self.software_version)),
                          None, retain=True)
