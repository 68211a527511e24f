"""paho-mqtt 2.x plumbing: connect from an ``mqtt://`` URL, publish QoS 1 messages and wait for PUBACKs.

MQTT 5 (as the edge): a broker that refuses a publish or a subscription (its ACL) says so in the PUBACK/SUBACK
reason code (0x87 Not authorized), where MQTT 3.1.1 acknowledges a refused publish like any other."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["MqttError", "Message", "SESSION_NEVER_EXPIRES", "connect", "connect_options", "new_client", "publish_all"]

SESSION_NEVER_EXPIRES = 0xFFFFFFFF
"""MQTT 5 session expiry interval meaning "never" (as ``clean_session=False`` under 3.1.1): the listener's
queued events wait for it however long it is down (the broker's ``persistent_client_expiration`` still applies)."""

log = logging.getLogger(__name__)

Message = tuple[str, bytes, bool]
"""(topic, payload, retained); always published with QoS 1."""


class MqttError(RuntimeError):
    """The broker is unreachable, refused the credentials, or did not acknowledge in time."""


def connect_options(*, clean_session: bool, receive_maximum: int | None = None) -> dict:
    """Keyword arguments of paho's ``connect``/``connect_async`` for an MQTT 5 session.

    ``clean_session=False``: resume the session (``clean_start=False``) and keep it forever
    (:data:`SESSION_NEVER_EXPIRES`); True: a fresh session that ends with the connection.
    ``receive_maximum``: at most this many unacknowledged QoS 1 messages in flight to us.
    """
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean_session else SESSION_NEVER_EXPIRES
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return {"clean_start": clean_session, "properties": props}


def new_client(url: str, client_id: str, *, manual_ack: bool = False) -> tuple[mqtt.Client, str, int]:
    """A configured (not yet connected) paho v2 MQTT 5 client for ``mqtt[s]://[user:password@]host[:port]``;
    connect it with :func:`connect_options`.

    Returns:
        (client, host, port). Raises MqttError on a malformed URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise MqttError(f"MQTT URL {url!r} is not mqtt://[user:password@]host[:port]")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    if parts.username:
        client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
    if parts.scheme == "mqtts":
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    return client, parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883)


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
        if on_connect is not None and not reason_code.is_failure:
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
    if not done.wait(timeout) or result["rc"].is_failure:
        client.loop_stop()
        client.disconnect()
        reason = result.get("rc", "no CONNACK within %.0f s" % timeout)
        raise MqttError(f"MQTT broker {host}:{port} refused the connection: {reason}")
    return client


def publish_all(client: mqtt.Client, messages: Iterable[Message], *, timeout: float = 30.0) -> int:
    """Publish each ``(topic, payload, retained)`` with QoS 1 and wait until every PUBACK arrived.

    Returns:
        Number of messages published.

    Raises:
        MqttError: one was not acknowledged within ``timeout``, or the broker refused it (PUBACK reason code,
            e.g. Not authorized by its ACL), naming the topic.
    """
    refused: dict[int, str] = {}
    client.on_publish = lambda c, u, mid, reason_code, props: (
        refused.__setitem__(mid, str(reason_code)) if reason_code.is_failure else None)
    sent = [(topic, client.publish(topic, payload, qos=1, retain=retained)) for topic, payload, retained in messages]
    for topic, info in sent:
        try:
            info.wait_for_publish(timeout)
        except (ValueError, RuntimeError) as exc:
            raise MqttError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            raise MqttError(f"broker did not acknowledge the message to {topic} within {timeout} s")
        if info.mid in refused:
            raise MqttError(f"broker refused the message to {topic}: {refused[info.mid]}")
    return len(sent)
