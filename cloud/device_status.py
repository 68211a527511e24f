"""Device status (``status/1``) on the cloud: apply a report to its device's row, tell whether the device just
came online, and clear a removed device's retained status and events.

The door's clock is not trusted (a Pi without a real-time clock boots on ``fake-hwclock``'s last saved time and
steps when NTP answers): ``status_at`` is the time the cloud *received* the report, and reports are applied in the
order they arrive — the listener applies one topic's messages in order (paho's network thread queues them as the
broker sends them, one worker applies them first in, first out), and the broker keeps the order of one publisher's
messages on one topic. The door's own ``ts`` is kept for information only, as ``clock_offset_s`` in the stored
health (its ``ts`` minus the time received; negative: the door's clock is behind). A *retained* report, delivered on
the listener's (re)subscription, is the broker's last stored one, sent at a time nobody knows: it sets the state but
leaves ``status_at`` as it was, ``offline`` (when the device went offline is not known) and ``online`` alike. A
retained ``online`` does not prove the box is connected: the dynamic-security plugin drops a box whose password was
replaced or whose login was deleted *without* publishing its last will, and a box may die while the broker is down.
So after a new password the cloud publishes the last will's ``offline`` itself (:func:`publish_offline`, called by
:func:`dangol_cloud.broker_auth.replace_device_password`); a removed device's retained topics are cleared instead
(:func:`clear_retained_topics`). A connected box reports ``online`` every ``mqtt.status_interval_s`` and after each
connection, live, which dates it.

The listener (:mod:`dangol_cloud.events`) takes status at QoS 0 (:data:`dangol_protocol.topics.STATUS_QOS`): the
retained latest report is all the cloud needs. Unconfirmed erasures are re-sent to a device only when it *comes
online* (:func:`came_online`), not on each of its health reports (every 30 s). Every offline → online flip counts as
coming online; a box flipping on purpose is held off by the listener's
:class:`~dangol_cloud.background.ErasureResender` (at most one re-send per device per ``erasure_republish_minutes``,
off the listener's worker).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

import dangol_protocol as proto
from dangol_cloud.models import Device, utcnow

__all__ = ["apply_status", "came_online", "clear_retained_status", "clear_retained_topics", "publish_offline"]

log = logging.getLogger(__name__)


def came_online(device: Device, status: proto.Status) -> bool:
    """Whether ``status`` shows ``device`` coming online: its stored state is ``offline`` or unknown (never
    reported), or it was online and the report says it restarted since: its frame counter (``frames_captured``,
    counted from the daemon's start) went back."""
    if status.state != "online":
        return False
    if device.state != "online":
        return True
    before = (device.health or {}).get("frames_captured")
    now = status.health.frames_captured if status.health is not None else None
    return before is not None and now is not None and now < before


def apply_status(device: Device, status: proto.Status, *, retained: bool = False,
                 received_at: datetime | None = None) -> bool:
    """Record ``status`` on ``device``: its state and health, and ``status_at`` = ``received_at`` (default now),
    whatever time the door's clock gave it — except a ``retained`` report (the broker's stored copy, handed over on
    subscription, ``online`` or ``offline``), which leaves ``status_at`` as it was (module docstring): the dashboard
    then shows a retained ``online`` as not heard from since, until the box's next live report. The caller commits,
    in arrival order.

    Returns:
        Whether the device came online with it (:func:`came_online`).
    """
    received_at = received_at or utcnow()
    woke = came_online(device, status)
    device.state = status.state
    if not retained:
        device.status_at = received_at
    if status.health is not None:
        health = status.health.model_dump(mode="json")
        if status.ts is not None and not retained:  # for information only: never used to order or date reports
            health["clock_offset_s"] = round((status.ts - received_at).total_seconds())
        device.health = health
    return woke


def clear_retained_status(mqtt_url: str, device_id: str, *, client_id: str = "dangol-cloud-publisher",
                          timeout: float = 10.0) -> None:
    """Publish the empty retained payload on ``device_id``'s status topic (QoS 1): the broker forgets the removed
    device's last status, which the listener would otherwise receive on every (re)subscription.

    Raises:
        MqttError: the broker is unreachable, refuses or does not acknowledge (the listener then counts the stale
            status as ``forgotten-device`` on each reconnection; nothing else is affected).
    """
    _clear(mqtt_url, [proto.status_topic(device_id)], client_id=client_id, timeout=timeout)
    log.info("retained status of removed device %s cleared", device_id)


def clear_retained_topics(mqtt_url: str, device_id: str, *, client_id: str = "dangol-cloud-publisher",
                          timeout: float = 10.0) -> None:
    """Publish the empty retained payload on ``device_id``'s status **and events** topics (QoS 1), for a removed
    device: a retained event (which the listener never applies, :mod:`dangol_cloud.events`) would otherwise stay on
    the broker. The listener counts the events topic's clear as ``forgotten-device`` (the device is gone).

    Raises:
        MqttError: the broker is unreachable, refuses or does not acknowledge.
    """
    _clear(mqtt_url, [proto.status_topic(device_id), proto.events_topic(device_id)], client_id=client_id,
           timeout=timeout)
    log.info("retained status and events of removed device %s cleared", device_id)


def publish_offline(mqtt_url: str, device_id: str, *, client_id: str = "dangol-cloud-publisher",
                    timeout: float = 10.0) -> None:
    """Publish ``device_id``'s last will on its behalf: the retained ``status/1`` ``offline``
    (:func:`dangol_protocol.last_will`, QoS 1), for a box the broker dropped without publishing it (module
    docstring). The broker retains it and the listener records the device offline, dated when it receives it; the
    box's own ``online``, once it connects again, replaces it.

    Raises:
        MqttError: the broker is unreachable, refuses or does not acknowledge.
    """
    topic, payload = proto.last_will(device_id)
    _publish(mqtt_url, [(topic, payload)], client_id=client_id, timeout=timeout)
    log.info("retained status of device %s set offline (dropped by the broker without its last will)", device_id)


def _clear(mqtt_url: str, topics: list[str], *, client_id: str, timeout: float) -> None:
    _publish(mqtt_url, [(topic, b"") for topic in topics], client_id=client_id, timeout=timeout)


def _publish(mqtt_url: str, messages: list[tuple[str, bytes]], *, client_id: str, timeout: float) -> None:
    from dangol_cloud.mqtt import connect, publish_all

    client = connect(mqtt_url, f"{client_id}-{uuid.uuid4().hex[:8]}", timeout=timeout)
    try:
        publish_all(client, [(topic, payload, True) for topic, payload in messages], timeout=timeout)
    finally:
        client.disconnect()
        client.loop_stop()
