"""The cloud's MQTT plumbing: connect from an ``mqtt://`` URL, publish QoS 1 messages and wait for PUBACKs.

The client is built by :mod:`dangol_protocol.client`, the MQTT 5 helper the edge uses too: a broker that
refuses a publish or a subscription (its ACL) says so in the PUBACK/SUBACK reason code (0x87 Not
authorized), where MQTT 3.1.1 acknowledges a refused publish like any other."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable

import paho.mqtt.client as mqtt

from dangol_protocol import client as mqtt5
from dangol_protocol.client import SESSION_NEVER_EXPIRES, connect_kwargs, is_refusal

__all__ = ["MqttError", "Message", "SESSION_NEVER_EXPIRES", "clear_retained", "connect", "connect_options",
           "new_client", "publish_all"]

log = logging.getLogger(__name__)

Message = tuple[str, bytes, bool]
"""(topic, payload, retained); always published with QoS 1."""


class MqttError(RuntimeError):
    """The broker is unreachable, refused the credentials, or did not acknowledge in time."""


def connect_options(*, clean_session: bool, receive_maximum: int | None = None) -> dict:
    """Keyword arguments of paho's ``connect``/``connect_async`` for an MQTT 5 session
    (:func:`dangol_protocol.client.connect_kwargs`).

    ``clean_session=False``: resume the session (``clean_start=False``) and keep it forever
    (:data:`SESSION_NEVER_EXPIRES`); True: a fresh session that ends with the connection.
    ``receive_maximum``: at most this many unacknowledged QoS 1 messages in flight to us.
    """
    return connect_kwargs(clean_start=clean_session, receive_maximum=receive_maximum)


def new_client(url: str, client_id: str, *, manual_ack: bool = False) -> tuple[mqtt.Client, str, int]:
    """A configured (not yet connected) paho v2 MQTT 5 client for ``mqtt[s]://[user:password@]host[:port]``
    (:func:`dangol_protocol.client.new_client`); connect it with :func:`connect_options`.

    Returns:
        (client, host, port). Raises MqttError on a malformed URL.
    """
    try:
        client, address = mqtt5.new_client(url, client_id, manual_ack=manual_ack)
    except mqtt5.MqttUrlError as exc:
        raise MqttError(str(exc)) from None
    return client, address.host, address.port


def connect(url: str, client_id: str, *, timeout: float = 10.0, clean_session: bool = True,
            on_connect=None, on_message=None, on_subscribe=None, manual_ack: bool = False) -> mqtt.Client:
    """Connect, start the network loop and wait for CONNACK.

    ``on_connect`` (paho v2 signature) runs after every successful (re)connection, e.g. to subscribe;
    ``on_message``/``on_subscribe`` are installed before connecting so no message is missed. With
    ``manual_ack`` a QoS 1 message is acknowledged only when the caller calls ``client.ack(mid, qos)``.

    Raises:
        MqttError: naming the broker, if it is unreachable, refuses the connection (e.g. bad credentials)
            or does not answer within ``timeout`` seconds.
    """
    client, host, port = new_client(url, client_id, manual_ack=manual_ack)
    done = threading.Event()
    result: dict = {}

    def _on_connect(c, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        if on_connect is not None and not is_refusal(reason_code):
            on_connect(c, userdata, flags, reason_code, properties)
        done.set()

    client.on_connect = _on_connect
    if on_message is not None:
        client.on_message = on_message
    if on_subscribe is not None:
        client.on_subscribe = on_subscribe
    try:
        client.connect(host, port, keepalive=30, **connect_options(clean_session=clean_session))
    except OSError as exc:
        raise MqttError(f"MQTT broker {host}:{port} unreachable: {exc}") from exc
    client.loop_start()
    if not done.wait(timeout) or is_refusal(result["rc"]):
        client.loop_stop()
        client.disconnect()
        reason = result.get("rc", "no CONNACK within %.0f s" % timeout)
        raise MqttError(f"MQTT broker {host}:{port} refused the connection: {reason}")
    return client


#: Most QoS 1 messages :func:`publish_all` leaves unacknowledged at once. MQTT numbers in-flight messages with
#: 16-bit packet identifiers (at most 65,535; MQTT 5 §2.2.1), so a chain-wide publish must wait for PUBACKs as
#: it goes; 10,000 keeps the pipe full (bench/bench_chain.py) with bounded memory.
PUBLISH_WINDOW = 10_000


def publish_all(client: mqtt.Client, messages: Iterable[Message], *, timeout: float = 30.0,
                window: int = PUBLISH_WINDOW) -> int:
    """Publish each ``(topic, payload, retained)`` with QoS 1 and wait until every PUBACK arrived.

    At most ``window`` messages are unacknowledged at a time (see :data:`PUBLISH_WINDOW`); ``messages`` may be
    a generator and is consumed as the broker acknowledges.

    Returns:
        Number of messages published.

    Raises:
        MqttError: one was not acknowledged within ``timeout``, or the broker refused it (PUBACK reason code,
            e.g. Not authorized by its ACL), naming the topic.
        ValueError: ``window`` is not between 1 and 65,535.
    """
    if not 1 <= window <= 65_535:
        raise ValueError(f"window {window}: expected 1..65535 unacknowledged messages")
    refused: dict[int, str] = {}
    client.on_publish = lambda c, u, mid, reason_code, props: (
        refused.__setitem__(mid, str(reason_code)) if is_refusal(reason_code) else None)
    total = 0
    pending: list = []

    def drain() -> None:
        for topic, info in pending:
            try:
                info.wait_for_publish(timeout)
            except (ValueError, RuntimeError) as exc:
                raise MqttError(f"publish to {topic} failed: {exc}") from exc
            if not info.is_published():
                raise MqttError(f"broker did not acknowledge the message to {topic} within {timeout} s")
            if info.mid in refused:
                raise MqttError(f"broker refused the message to {topic}: {refused[info.mid]}")
        pending.clear()
        refused.clear()

    for topic, payload, retained in messages:
        pending.append((topic, client.publish(topic, payload, qos=1, retain=retained)))
        total += 1
        if len(pending) >= window:
            drain()
    drain()
    return total


def clear_retained(url: str, topics: Iterable[str], *, client_id: str, timeout: float = 30.0) -> None:
    """Publish the empty retained payload (QoS 1) on each of ``topics``, so the broker forgets what it retained
    there, on a connection of its own (client id ``client_id`` plus a random suffix).

    Raises:
        MqttError: the broker is unreachable, refuses or does not acknowledge.
    """
    client = connect(url, f"{client_id}-{uuid.uuid4().hex[:8]}", timeout=timeout)
    try:
        publish_all(client, [(topic, b"", True) for topic in topics], timeout=timeout)
    finally:
        client.disconnect()
        client.loop_stop()
