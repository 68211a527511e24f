"""Topic builders and the topic parser for ``dangol/v1/...`` (lower case, no leading slash, UUID ids)."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

__all__ = [
    "ALL_DEVICE_EVENTS",
    "ALL_DEVICE_STATUS",
    "QOS",
    "RETAINED",
    "ROOT",
    "STATUS_QOS",
    "Topic",
    "TopicError",
    "TopicKind",
    "catalogue_topic",
    "device_client_id",
    "device_subscriptions",
    "erasures_topic",
    "events_topic",
    "menu_topic",
    "menus_wildcard",
    "parse_topic",
    "status_topic",
    "store_subscriptions",
]

ROOT = "dangol/v1"
QOS = 1
"""Every Dangol topic is published and subscribed with QoS 1 (at least once; events carry an id), except the
cloud's subscription to device status (:data:`STATUS_QOS`)."""
STATUS_QOS = 0
"""The cloud subscribes to ``.../status`` with QoS 0: the retained latest status is all it needs (it arrives on
every (re)subscription), and a QoS 0 subscription is never queued in the cloud's persistent session, so a cloud
outage cannot fill that queue with health reports and make the broker drop the events queued behind them."""


class TopicKind(str, enum.Enum):
    """What a topic carries; the value is the payload schema name."""

    CATALOGUE = "catalogue"
    MENU = "menu"
    ERASURES = "erasures"
    EVENTS = "event"
    STATUS = "status"


RETAINED: dict[TopicKind, bool] = {
    TopicKind.CATALOGUE: True,
    TopicKind.MENU: True,
    TopicKind.ERASURES: False,
    TopicKind.EVENTS: False,
    TopicKind.STATUS: True,
}
"""Whether messages of each kind are published with the retained flag."""

ALL_DEVICE_EVENTS = f"{ROOT}/devices/+/events"
ALL_DEVICE_STATUS = f"{ROOT}/devices/+/status"


class TopicError(ValueError):
    """A topic string is not a Dangol topic (message names the topic)."""


def _uuid(value: uuid.UUID | str, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise TopicError(f"{what} {value!r} is not a UUID") from exc


def catalogue_topic(store_id: uuid.UUID | str) -> str:
    """``dangol/v1/stores/{store}/catalogue`` (retained). Raises TopicError if ``store_id`` is not a UUID."""
    return f"{ROOT}/stores/{_uuid(store_id, 'store id')}/catalogue"


def menu_topic(store_id: uuid.UUID | str, customer_id: uuid.UUID | str) -> str:
    """``dangol/v1/stores/{store}/menus/{customer}`` (retained). Raises TopicError on a non-UUID id."""
    return f"{ROOT}/stores/{_uuid(store_id, 'store id')}/menus/{_uuid(customer_id, 'customer id')}"


def menus_wildcard(store_id: uuid.UUID | str) -> str:
    """``dangol/v1/stores/{store}/menus/+``: subscribe to every customer's menu of one store."""
    return f"{ROOT}/stores/{_uuid(store_id, 'store id')}/menus/+"


def erasures_topic(store_id: uuid.UUID | str) -> str:
    """``dangol/v1/stores/{store}/erasures`` (not retained)."""
    return f"{ROOT}/stores/{_uuid(store_id, 'store id')}/erasures"


def events_topic(device_id: uuid.UUID | str) -> str:
    """``dangol/v1/devices/{device}/events`` (edge → cloud, not retained)."""
    return f"{ROOT}/devices/{_uuid(device_id, 'device id')}/events"


def status_topic(device_id: uuid.UUID | str) -> str:
    """``dangol/v1/devices/{device}/status`` (edge → cloud, retained; also the last-will topic)."""
    return f"{ROOT}/devices/{_uuid(device_id, 'device id')}/status"


def device_client_id(device_id: uuid.UUID | str) -> str:
    """``dangol-edge-{device}``: the only MQTT client id a device's login may connect with (the broker
    configuration from ``dangol-cloud broker-config`` pins it), so a device cannot take over another
    client's session. Raises TopicError if ``device_id`` is not a UUID."""
    return f"dangol-edge-{_uuid(device_id, 'device id')}"


def store_subscriptions(store_id: uuid.UUID | str) -> list[tuple[str, int]]:
    """``[(topic filter, QoS)]`` an edge device of ``store_id`` subscribes to: catalogue, menus, erasures."""
    return [(catalogue_topic(store_id), QOS), (menus_wildcard(store_id), QOS), (erasures_topic(store_id), QOS)]


def device_subscriptions() -> list[tuple[str, int]]:
    """``[(topic filter, QoS)]`` the cloud subscribes to: every device's events (QoS 1, queued while the cloud is
    down) and status (:data:`STATUS_QOS`: the retained latest only)."""
    return [(ALL_DEVICE_EVENTS, QOS), (ALL_DEVICE_STATUS, STATUS_QOS)]


@dataclass(frozen=True)
class Topic:
    """A parsed topic: its kind and the ids it names (canonical lower-case UUID strings or None)."""

    kind: TopicKind
    store_id: str | None = None
    device_id: str | None = None
    customer_id: str | None = None

    @property
    def retained(self) -> bool:
        """Whether messages on this topic are published retained."""
        return RETAINED[self.kind]


def parse_topic(topic: str) -> Topic:
    """Parse a concrete (wildcard-free) Dangol topic.

    Raises:
        TopicError: the topic is outside ``dangol/v1/``, has an unknown shape or a non-UUID id.
    """
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != ROOT:
        raise TopicError(f"topic {topic!r} is not under {ROOT}/")
    scope, ident, rest = parts[2], parts[3], parts[4:]
    if scope == "stores":
        store = _uuid(ident, f"topic {topic!r}: store id")
        if rest == ["catalogue"]:
            return Topic(TopicKind.CATALOGUE, store_id=store)
        if rest == ["erasures"]:
            return Topic(TopicKind.ERASURES, store_id=store)
        if len(rest) == 2 and rest[0] == "menus":
            return Topic(TopicKind.MENU, store_id=store, customer_id=_uuid(rest[1], f"topic {topic!r}: customer id"))
    elif scope == "devices":
        device = _uuid(ident, f"topic {topic!r}: device id")
        if rest == ["events"]:
            return Topic(TopicKind.EVENTS, device_id=device)
        if rest == ["status"]:
            return Topic(TopicKind.STATUS, device_id=device)
    raise TopicError(f"topic {topic!r} is not a Dangol topic")
