"""Device status (``status/1``) on the cloud: apply a report to its device's row, tell whether the device just
came online, and clear a removed device's retained status.

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

import dangol_protocol as proto
from dangol_cloud.models import Device, utcnow

__all__ = ["apply_status", "came_online", "clear_retained_status"]

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


def apply_status(device: Device, status: proto.Status) -> tuple[bool, bool]:
    """Record ``status`` on ``device`` (state, time, health) unless it is older than the stored one (a time ahead
    of the cloud's clock counts as now). The caller commits.

    Returns:
        ``(applied, came_online)``: whether it was recorded, and whether the device came online with it
        (:func:`came_online`).
    """
    ts = None if status.ts is None else min(status.ts, utcnow())
    if ts is not None and device.status_at is not None and ts < device.status_at:
        return False, False
    woke = came_online(device, status)
    device.state = status.state
    device.status_at = ts or device.status_at
    if status.health is not None:
        device.health = status.health.model_dump(mode="json")
    return True, woke


def clear_retained_status(mqtt_url: str, device_id: str, *, client_id: str = "dangol-cloud-publisher",
                          timeout: float = 10.0) -> None:
    """Publish the empty retained payload on ``device_id``'s status topic (QoS 1): the broker forgets the removed
    device's last status, which the listener would otherwise receive on every (re)subscription.

    Raises:
        MqttError: the broker is unreachable, refuses or does not acknowledge (the listener then counts the stale
            status as ``forgotten-device`` on each reconnection; nothing else is affected).
    """
    from dangol_cloud.mqtt import connect, publish_all

    client = connect(mqtt_url, f"{client_id}-{uuid.uuid4().hex[:8]}", timeout=timeout)
    try:
        publish_all(client, [(proto.status_topic(device_id), b"", True)], timeout=timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    log.info("retained status of removed device %s cleared", device_id)
