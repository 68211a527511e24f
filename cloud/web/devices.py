"""Device onboarding and presence (issue 11, build 5): what to put on a new device and on the broker host,
whether each device is online (from the ``status/1`` messages and events the cloud listener stores) and
whether the broker answers (a real MQTT connection, not "configured").

Routes on the ``stores`` blueprint: ``GET /stores/devices/status.json`` (polled by ``static/devices.js``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from ipaddress import ip_address
from urllib.parse import quote, urlsplit

from flask import jsonify, request
from flask_login import login_required
from sqlalchemy import func, select

from dangol_cloud.app import get_session, get_settings
from dangol_cloud.models import Device, DeviceEvent
from dangol_cloud.web.scope import store_filter
from dangol_cloud.web.stores import bp

__all__ = ["BROKER_CHECK_TIMEOUT_S", "BROKER_CHECK_TTL_S", "ONLINE_WITHIN_S", "BrokerCheck", "broker_check",
           "device_mqtt_url", "health_warnings", "presence"]

log = logging.getLogger(__name__)

#: A device that said ``online`` is shown online while it was last heard within this many seconds (it sends
#: health every ``mqtt.status_interval_s``, 30 s by default); after that "not heard from".
ONLINE_WITHIN_S = 120
#: Longest wait for the broker's CONNACK in the dashboard's check, seconds.
BROKER_CHECK_TIMEOUT_S = 2.0
#: A broker check result is reused for this many seconds (pages do not each open a connection).
BROKER_CHECK_TTL_S = 10.0
#: Port and scheme of the devices' listener in firmware-config/mosquitto/dangol.conf (MQTT over TLS).
DEVICE_PORT = 8883


def _aware(ts: datetime | None) -> datetime | None:
    return None if ts is None else ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def presence(state: str | None, status_at: datetime | None, last_event_at: datetime | None,
             now: datetime | None = None) -> dict:
    """A device's presence for the dashboard.

    Args:
        state: the last ``status/1`` state stored (``online``/``offline``, the last will is ``offline``), or None.
        status_at: that message's time; last_event_at: when its newest event was received (UTC).
    Returns:
        ``{"state": "online"|"silent"|"offline"|"never", "label": str, "last_seen": ISO str or None,
        "seconds": float or None}`` — "silent": said online but nothing heard for :data:`ONLINE_WITHIN_S`.
    """
    now = now or datetime.now(timezone.utc)
    seen = max((t for t in (_aware(status_at), _aware(last_event_at)) if t is not None), default=None)
    ago = None if seen is None else max((now - seen).total_seconds(), 0.0)
    if state is None and seen is None:
        return {"state": "never", "label": "never connected", "last_seen": None, "seconds": None}
    if state == "offline":
        kind, label = "offline", "offline"
    elif ago is not None and ago <= ONLINE_WITHIN_S:
        kind, label = "online", "online"
    else:
        kind, label = "silent", "not heard from"
    return {"state": kind, "label": label, "last_seen": seen.isoformat() if seen else None, "seconds": ago}


#: A device with a working camera that recognises fewer frames per second than this (once it has captured
#: :data:`SLOW_MIN_FRAMES`) is flagged: the tracker needs several frames of a face to decide, so people walking
#: in may be missed. Dropped frames alone are not: the capture keeps only the newest frame by design, so a
#: 30 fps camera beside a 10 fps recogniser drops two thirds of its frames while working well.
SLOW_FPS = 2.0
SLOW_MIN_FRAMES = 100
#: More events than this waiting on a device means it has not reached the broker for a while.
QUEUE_WARN = 100


@bp.app_template_filter("health_warnings")
def health_warnings(health: dict | None) -> list[tuple[str, str]]:
    """What an owner should act on in a device's last health report (a stored :class:`dangol_protocol.Health`
    dict; keys an older device did not send are skipped), as ``[(level, text), ...]`` with level ``"bad"``
    (the door is not working as it should) or ``"warn"``; empty when all is well or there is no report."""
    if not health:
        return []
    out: list[tuple[str, str]] = []
    camera = health.get("camera")
    if camera in ("missing", "error"):
        out.append(("bad", f"camera {camera}"))
    if health.get("storage") == "full":
        out.append(("bad", "storage full — events are held on the device"))
    elif health.get("storage") == "error":
        out.append(("bad", "cannot write its storage"))
    if health.get("recognition") == "failing":
        out.append(("bad", "recognition failing"))
    if health.get("arrivals") == "failing":
        out.append(("bad", "arrivals failing — the door greets nobody"))
    if health.get("housekeeping") == "failing":
        out.append(("bad", "housekeeping failing — retention may keep faces past their time"))
    if health.get("catalogue") == "unreadable":
        out.append(("warn", "cached menu unreadable — publish the menu again"))
    fps = health.get("fps") or 0.0
    if (camera == "ok" and health.get("recognition") != "failing" and fps < SLOW_FPS
            and (health.get("frames_captured") or 0) >= SLOW_MIN_FRAMES):
        out.append(("warn", f"recognises only {fps:g} frames/s — faces may be missed"))
    if (health.get("queue_depth") or 0) > QUEUE_WARN:
        out.append(("warn", f"{health['queue_depth']} events waiting to be sent"))
    if (health.get("refused_events") or 0) > 0:
        out.append(("warn", f"{health['refused_events']} events refused by the broker — check the device's login and "
                            "the broker's ACL"))
    if (health.get("undelivered_events") or 0) > 0:
        out.append(("warn", f"{health['undelivered_events']} events reached no subscriber on the broker — the cloud's "
                            "listener is not subscribed; they are kept and sent again"))
    return out


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return ""
    m = int(seconds // 60)
    return ("just now" if seconds < 60 else f"{m} min ago" if m < 60 else f"{m // 60} h {m % 60} min ago"
            if m < 1440 else f"{m // 1440} d ago")


@dataclass(frozen=True)
class BrokerCheck:
    """Result of :func:`broker_check`: ``state`` is ``ok``, ``down`` or ``unconfigured``; ``detail`` says why."""

    state: str
    detail: str
    checked_at: float


_checks: dict[str, BrokerCheck] = {}
_lock = threading.Lock()


def broker_check(url: str | None, *, timeout: float | None = None, ttl: float | None = None) -> BrokerCheck:
    """Connect to the broker with the cloud's credentials (MQTT 5, clean session, a throw-away client id) and
    disconnect; the result is cached for ``ttl`` seconds (default :data:`BROKER_CHECK_TTL_S`).

    Never raises: an unreachable broker, refused credentials or no CONNACK within ``timeout`` seconds
    (default :data:`BROKER_CHECK_TIMEOUT_S`) is ``state="down"`` with the reason, logged.
    """
    from dangol_cloud.mqtt import MqttError, connect

    if not url:
        return BrokerCheck("unconfigured", "no broker configured (DANGOL_MQTT_URL)", time.monotonic())
    ttl = BROKER_CHECK_TTL_S if ttl is None else ttl
    with _lock:
        cached = _checks.get(url)
    if cached is not None and time.monotonic() - cached.checked_at < ttl:
        return cached
    try:
        client = connect(url, f"dangol-cloud-check-{uuid.uuid4().hex[:12]}",
                         timeout=BROKER_CHECK_TIMEOUT_S if timeout is None else timeout)
        client.disconnect()
        client.loop_stop()
        result = BrokerCheck("ok", "connected", time.monotonic())
    except MqttError as exc:
        log.warning("broker check failed: %s", exc)
        result = BrokerCheck("down", str(exc), time.monotonic())
    with _lock:
        _checks[url] = result
    return result


def _loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def device_mqtt_url(username: str, password: str) -> str:
    """The device's ``DANGOL_MQTT_URL``: its own login at the broker as the devices reach it. The broker's host
    is the cloud's ``mqtt_url`` host (scheme and port as configured) unless that is loopback; then the host of
    ``public_url``, else of this dashboard request, on the devices' TLS listener (``mqtts://…:8883``)."""
    settings = get_settings()
    cloud = urlsplit(settings.mqtt_url or "")
    if cloud.hostname and not _loopback(cloud.hostname):
        host, scheme, port = cloud.hostname, cloud.scheme, cloud.port or (8883 if cloud.scheme == "mqtts" else 1883)
    else:
        host = urlsplit(settings.public_url or "").hostname or request.host.rsplit(":", 1)[0].strip("[]")
        scheme, port = "mqtts", DEVICE_PORT
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}"


def device_presence(session, devices) -> dict[str, dict]:
    """``{device id: presence(...)}`` for ``devices`` (one query for their newest events)."""
    ids = [d.id for d in devices]
    last = dict(session.execute(select(DeviceEvent.device_id, func.max(DeviceEvent.received_at))
                                .where(DeviceEvent.device_id.in_(ids))
                                .group_by(DeviceEvent.device_id)).all()) if ids else {}
    out = {}
    for d in devices:
        p = presence(d.state, d.status_at, last.get(d.id))
        p["ago"] = _ago(p["seconds"])
        out[d.id] = p
    return out


@bp.route("/devices/status.json")
@login_required
def device_status():
    """GET /stores/devices/status.json: ``{"devices": {id: presence}, "broker": {"state", "detail"}}`` for the
    devices the user may see (staff: their stores)."""
    s = get_session()
    scope = store_filter(Device.store_id)
    devices = s.scalars(select(Device).where(*([] if scope is None else [scope]))).all()
    check = broker_check(get_settings().mqtt_url)
    return jsonify({"devices": device_presence(s, devices), "broker": {"state": check.state, "detail": check.detail}})
