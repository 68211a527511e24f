"""One MQTT 5 client helper for the edge (:mod:`dangol_edge.sync`) and the cloud (:mod:`dangol_cloud.mqtt`).

paho-mqtt 2.x, callback API version 2, protocol MQTT 5 only: under MQTT 5 a broker that refuses a publish
or a subscription (its ACL) says so in the PUBACK/SUBACK reason code (0x87 Not authorized), where MQTT
3.1.1 acknowledges a refused publish like any other and the sender never learns that it was dropped.

- :func:`parse_url` — ``mqtt[s]://[user:password@]host[:port]`` → :class:`BrokerAddress` (the host IDNA-encoded;
  a host name no resolver takes, e.g. ``broker..lan``, refused; errors never repeat the password).
- :func:`new_client` — a configured, unconnected client from a URL: credentials, TLS (system CAs or a given
  CA file, certificate and host name checked), optional retained last will, manual acknowledgement.
- :func:`connect_kwargs` — the keyword arguments of ``connect``/``connect_async`` for a clean or persistent
  session (session expiry interval, receive maximum).
- :func:`is_refusal`, :func:`refusals` — the reason-code checks of a CONNACK/PUBACK/SUBACK.

Importing this module needs ``paho-mqtt`` (the ``edge`` and ``cloud`` extras); the rest of
:mod:`dangol_protocol` needs only pydantic and babel.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["NO_MATCHING_SUBSCRIBERS", "SESSION_NEVER_EXPIRES", "BrokerAddress", "MqttUrlError", "connect_kwargs",
           "is_refusal", "new_client", "parse_url", "reached_nobody", "refusals"]

SESSION_NEVER_EXPIRES = 0xFFFFFFFF
"""MQTT 5 session expiry interval (s) meaning "never" (the broker's ``persistent_client_expiration`` still
applies)."""

SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}
"""URL scheme → TLS on?"""


class MqttUrlError(ValueError):
    """The broker URL is malformed; the message shows scheme, host and port, never the password."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where and as whom to connect: ``host``, ``port`` (1883, or 8883 with TLS, if the URL names none),
    ``username``/``password`` (percent-decoded; None if absent) and ``tls``."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    def __repr__(self) -> str:  # never print the password
        return f"BrokerAddress(host={self.host!r}, port={self.port}, username={self.username!r}, tls={self.tls})"


def parse_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://[user:password@]host[:port]`` (also ``tcp://``; ``mqtts://`` or ``ssl://`` for TLS).

    The host is IDNA-encoded as the resolver will encode it (``café.lan`` → ``xn--caf-dma.lan``; an IP address stays
    as it is): a name it cannot encode — an empty label as in ``broker..lan``, a label over 63 characters — or one
    with white space or control characters is refused here, where paho's network thread would die on it
    (``UnicodeError`` is not the ``OSError`` it retries) and never connect.

    Raises:
        MqttUrlError: (a ``ValueError``) empty URL, unknown scheme, no host, a host name that cannot be looked up,
            or a port outside 1–65535. The message shows scheme, host and port, never the user's password.
    """
    parts = urlsplit(url or "")
    try:
        port = parts.port
    except ValueError:
        port = -1
    safe = f"{parts.scheme}://{parts.hostname or ''}" + (f":{port}" if port and port > 0 else "")
    if parts.scheme not in SCHEMES or not parts.hostname or port == -1:
        raise MqttUrlError(f"broker URL {safe!r}: expected mqtt://[user:password@]host[:port] or mqtts://…")
    host = _lookup_name(parts.hostname, safe)
    tls = SCHEMES[parts.scheme]
    return BrokerAddress(host=host, port=port or (8883 if tls else 1883),
                         username=unquote(parts.username) if parts.username else None,
                         password=unquote(parts.password) if parts.password is not None else None, tls=tls)


def _lookup_name(host: str, safe_url: str) -> str:
    """``host`` as the resolver takes it (IDNA, ASCII), or :class:`MqttUrlError` naming ``safe_url``."""
    bad = next((c for c in host if c.isspace() or not c.isprintable()), None)
    try:
        if bad is not None:
            raise UnicodeError(f"character {bad!r} in a host name")
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        reason = str(exc.__cause__ or exc).removeprefix("encoding with 'idna' codec failed ")
        raise MqttUrlError(f"broker URL {safe_url!r}: host {host!r} is not a valid host name ({reason}); expected "
                           "mqtt://[user:password@]host[:port] or mqtts://…") from None


def new_client(url: str, client_id: str, *, tls_ca: str | Path | None = None,
               will: tuple[str, bytes] | None = None, manual_ack: bool = False) -> tuple[mqtt.Client, BrokerAddress]:
    """A configured, not yet connected paho v2 MQTT 5 client for ``url``.

    Args:
        client_id: the MQTT client id (a broker with dynamic security may pin a login to it).
        tls_ca: CA certificate file for ``mqtts://`` (default: the system's CAs). The broker's certificate
            and host name are always checked.
        will: ``(topic, payload)`` published retained with QoS 1 by the broker if the connection drops
            without a DISCONNECT (e.g. :func:`dangol_protocol.last_will`).
        manual_ack: received QoS 1 messages are acknowledged only by ``client.ack(mid, qos)``.

    Returns:
        (client, address). Connect it with ``client.connect(address.host, address.port, **connect_kwargs(...))``.

    Raises:
        MqttUrlError: malformed URL.
    """
    address = parse_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(ca_certs=str(tls_ca) if tls_ca else None, cert_reqs=ssl.CERT_REQUIRED,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client, address


def connect_kwargs(*, clean_start: bool, session_expiry_s: int | None = None,
                   receive_maximum: int | None = None) -> dict:
    """Keyword arguments of paho's ``connect``/``connect_async`` for an MQTT 5 session.

    Args:
        clean_start: True starts a fresh session, False resumes the broker's stored one.
        session_expiry_s: how long (s) the broker keeps the session (subscriptions, queued QoS 1 messages)
            after the connection ends; default 0 for a clean start, :data:`SESSION_NEVER_EXPIRES` otherwise.
        receive_maximum: at most this many unacknowledged QoS 1 messages in flight to us (1–65535).
    """
    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s is None:
        session_expiry_s = 0 if clean_start else SESSION_NEVER_EXPIRES
    props.SessionExpiryInterval = int(session_expiry_s)
    if receive_maximum is not None:
        props.ReceiveMaximum = int(receive_maximum)
    return {"clean_start": clean_start, "properties": props}


def is_refusal(reason_code) -> bool:
    """True if a CONNACK/PUBACK/SUBACK reason code (paho ``ReasonCode``, or an int) is a failure (≥ 0x80),
    e.g. 0x87 Not authorized from the broker's ACL."""
    if hasattr(reason_code, "is_failure"):
        return bool(reason_code.is_failure)
    return int(reason_code) >= 0x80


#: PUBACK reason code 0x10 *No matching subscribers* (MQTT 5.0, section 3.4.2.1): the broker accepted the message but
#: no subscription matched it, so nobody received it. A success code (< 0x80): :func:`is_refusal` is False for it.
NO_MATCHING_SUBSCRIBERS = 0x10


def reached_nobody(reason_code) -> bool:
    """True if a PUBACK reason code (paho ``ReasonCode``, or an int) is :data:`NO_MATCHING_SUBSCRIBERS`: accepted,
    delivered to no subscriber (kept only if retained). Whether that is a failure is the publisher's call: an event
    meant for the cloud's listener was not delivered; a retained message is still kept for later subscribers."""
    return int(getattr(reason_code, "value", reason_code)) == NO_MATCHING_SUBSCRIBERS


def refusals(reason_codes: Iterable) -> list[str]:
    """The refused entries of a SUBACK's reason codes (one per requested topic filter), as text; empty if
    every subscription was granted."""
    return [str(rc) for rc in reason_codes if is_refusal(rc)]
