"""Mosquitto password file and ACL for the cloud and every device (each device only its own store's topics)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from dangol_cloud.models import Device
from dangol_cloud.security import mosquitto_hash

__all__ = ["acl_text", "password_lines"]


def password_lines(session: Session, *, cloud_user: str | None = None, cloud_password: str | None = None) -> list[str]:
    """Lines ``username:$7$...`` for a Mosquitto ``password_file``: every device (its stored hash) and,
    if given, the cloud service's own user."""
    lines = [f"{u}:{h}" for u, h in session.execute(select(Device.mqtt_username, Device.mqtt_password_hash)
                                                    .order_by(Device.mqtt_username))]
    if cloud_user:
        lines.insert(0, f"{cloud_user}:{mosquitto_hash(cloud_password or '')}")
    return lines


def acl_text(session: Session, *, cloud_user: str) -> str:
    """A Mosquitto ``acl_file``: the cloud user may read/write ``dangol/v1/#``; each device may read its
    store's catalogue, menus and erasures, and write its own events and status."""
    out = [f"user {cloud_user}", "topic readwrite dangol/v1/#", ""]
    for device in session.scalars(select(Device).order_by(Device.mqtt_username)):
        root = f"dangol/v1/stores/{device.store_id}"
        out += [f"user {device.mqtt_username}", f"topic read {root}/catalogue", f"topic read {root}/menus/+",
                f"topic read {root}/erasures", f"topic write dangol/v1/devices/{device.id}/events",
                f"topic readwrite dangol/v1/devices/{device.id}/status", ""]
    return "\n".join(out)
