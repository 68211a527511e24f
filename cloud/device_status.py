"""Device status (``status/1``) on the cloud: apply a report to its device's row, tell whether the device just
came online, record a box the cloud had the broker drop (a new password), and clear a device's retained status (and a
removed device's events).

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
So after a new password the cloud clears the box's retained status (:func:`clear_retained_status`, called by
:func:`dangol_cloud.broker_auth.replace_device_password`) and records it offline itself, in the request, keeping
when it was last seen (:func:`record_dropped`: the cloud's own act is no sighting; a device that never connected
stays "never connected"); the box publishes ``online`` right after it connects with the new password. A removed
device's retained status and events are cleared (:func:`clear_retained_topics`). A connected box reports ``online``
every ``mqtt.status_interval_s`` and after each connection, live, which dates it.

The listener (:mod:`dangol_cloud.events`) takes status at QoS 0 (:data:`dangol_protocol.topics.STATUS_QOS`): the
retained latest report is all the cloud needs. Unconfirmed erasures are re-sent to a device only when it *comes
online* (:func:`came_online`), not on each of its health reports (every 30 s). Every offline → online flip counts as
coming online; a box flipping on purpose is held off by the listener's
:class:`~dangol_cloud.background.ErasureResender` (at most one re-send per device per ``erasure_republish_minutes``,
off the listener's worker).
"""

from __future__ import annotations

import logging
from datetime import datetime

import dangol_protocol as proto
from dangol_cloud.models import Device, utcnow

__all__ = ["apply_status", "came_online", "clear_retained_status", "clear_retained_topics", "record_dropped"]

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
    """Publish the empty retained payload on ``device_id``'s status topic (QoS 1): the broker forgets the device's
    last status, which the listener would otherwise receive on every (re)subscription — for a box the broker dropped
    without its last will (a new password), whose retained ``online`` would outlive its connection. The listener
    ignores the empty payload; the box's own ``online`` sets it again once it connects.

    Raises:
        MqttError: the broker is unreachable, refuses or does not acknowledge.
    """
    from dangol_cloud.mqtt import clear_retained

    clear_retained(mqtt_url, [proto.status_topic(device_id)], client_id=client_id, timeout=timeout)
    log.info("retained status of device %s cleared", device_id)


def clear_retained_topics(mqtt_url: str, device_id: str, *, client_id: str = "dangol-cloud-publisher",
                          timeout: float = 10.0) -> None:
    """Publish the empty retained payload on ``device_id``'s status **and events** topics (QoS 1), for a removed
    device: a retained event (which the listener never applies, :mod:`dangol_cloud.events`) would otherwise stay on
    the broker. The listener counts the events topic's clear as ``forgotten-device`` (the device is gone).

    Raises:
        MqttError: the broker is unreachable, refuses or does not acknowledge.
    """
    from dangol_cloud.mqtt import clear_retained

    clear_retained(mqtt_url, [proto.status_topic(device_id), proto.events_topic(device_id)], client_id=client_id,
                   timeout=timeout)
    log.info("retained status and events of removed device %s cleared", device_id)


def record_dropped(device: Device) -> None:
    """Record that the cloud itself had the broker drop ``device`` (a new password, :mod:`dangol_cloud.broker_auth`):
    ``offline`` if it ever reported a state, ``status_at`` (when it was last heard) left as it was — the cloud's own
    act is no sighting of the box. A device that never reported stays unknown ("never connected"). The caller
    commits; the broker's retained status was cleared (:func:`clear_retained_status`), so no retained ``online``
    comes back on the listener's next subscription."""
    if device.state is not None:
        device.state = "offline"
