"""Mosquitto authentication and authorisation for the cloud and every device.

Two forms, both written by ``dangol-cloud broker-config``:

* :func:`dynsec_config` — the **recommended** one: a configuration file of Mosquitto's dynamic-security
  plugin (Mosquitto ≥ 2.0) in which every device login is pinned to its own client id
  (:func:`dangol_protocol.device_client_id`) and to its store's topics, and the cloud's login is the only one
  that may use any other id (its listener's persistent session ``<MQTT_CLIENT_ID>-listener`` among them).
  So a stolen device login can neither read another store nor connect as the cloud and kick it off.
  :func:`plugin_conf` is the ``mosquitto.conf`` fragment that loads it.
* :func:`password_lines` + :func:`acl_text` — a classic ``password_file`` and ``acl_file`` (topics only; the
  broker accepts any client id with them), kept for brokers without the plugin.
"""

from __future__ import annotations

import glob
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.models import Device
from dangol_cloud.security import mosquitto_hash

__all__ = ["PLUGIN_GLOBS", "QUEUE_LIMITS", "acl_text", "dynsec_config", "find_dynsec_plugin", "password_lines",
           "plugin_conf"]

PLUGIN_GLOBS = ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                "/usr/local/lib/mosquitto_dynamic_security.so", "/usr/lib/*/mosquitto/mosquitto_dynamic_security.so")
"""Where Debian/Raspberry Pi OS (``/usr/lib/<arch>/``) and source builds install the plugin."""


QUEUE_LIMITS = {"max_queued_messages": 500_000, "max_queued_bytes": 256 * 1024 * 1024}
"""Mosquitto's per-client queue of a disconnected persistent session (``firmware-config/mosquitto/dangol.conf``
sets the same; docs/mqtt.md, "Broker queues"). The cloud listener's session queues only device events (status is
subscribed at QoS 0, :data:`dangol_protocol.topics.STATUS_QOS`, and QoS 0 is not queued): an event is 0.3–0.6 KB,
so this holds two weeks of a 20-box chain at 1,500 events a box a day (420,000) while the cloud is down; beyond
it the broker drops new events that the edge has already deleted after their PUBACK."""


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


def _dynsec_password(stored_hash: str) -> dict:
    """A ``$7$iterations$salt$hash`` (PBKDF2-SHA512) as the plugin's ``password``/``salt``/``iterations``."""
    _, kind, iterations, salt_b64, key_b64 = stored_hash.split("$")
    if kind != "7":
        raise ValueError(f"password hash of kind ${kind}$ is not Mosquitto's PBKDF2-SHA512 ($7$)")
    return {"password": key_b64, "salt": salt_b64, "iterations": int(iterations)}


def _acl(kind: str, topic: str) -> dict:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def dynsec_config(session: Session, *, cloud_user: str, cloud_password: str) -> dict:
    """The dynamic-security plugin's JSON configuration (``plugin_opt_config_file``).

    Default access: nothing may be published or subscribed unless a role allows it. Role ``dangol-cloud``
    (the cloud user, any client id): publish and subscribe ``dangol/v1/#``. One role per device: subscribe to
    its store's catalogue, menus and erasures, publish its own events and status (and read its status back);
    the device's client is pinned to ``clientid`` :func:`dangol_protocol.device_client_id`.

    Raises:
        ValueError: a device's stored password hash is not in Mosquitto's ``$7$`` format, or a device's
            username is the cloud's.
    """
    clients = [{"username": cloud_user, "textname": "Dangol cloud service",
                "roles": [{"rolename": "dangol-cloud"}], **_dynsec_password(mosquitto_hash(cloud_password))}]
    roles = [{"rolename": "dangol-cloud", "acls": [_acl("publishClientSend", "dangol/v1/#"),
                                                   _acl("subscribePattern", "dangol/v1/#"),
                                                   _acl("unsubscribePattern", "dangol/v1/#")]}]
    for device in session.scalars(select(Device).order_by(Device.mqtt_username)):
        if device.mqtt_username == cloud_user:
            raise ValueError(f"device {device.id} has the cloud's MQTT username {cloud_user!r}; give it its own")
        role = f"device-{device.id}"
        subscriptions = [topic for topic, _ in proto.store_subscriptions(device.store_id)]
        status = proto.status_topic(device.id)
        acls = [_acl("subscribeLiteral", t) for t in subscriptions]
        acls += [_acl("unsubscribeLiteral", t) for t in subscriptions]
        acls += [_acl("publishClientSend", proto.events_topic(device.id)), _acl("publishClientSend", status),
                 _acl("subscribeLiteral", status)]
        roles.append({"rolename": role, "acls": acls})
        clients.append({"username": device.mqtt_username, "clientid": proto.device_client_id(device.id),
                        "textname": device.name, "roles": [{"rolename": role}],
                        **_dynsec_password(device.mqtt_password_hash)})
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                                 "unsubscribe": False},
            "clients": clients, "groups": [], "roles": roles}


def find_dynsec_plugin() -> str | None:
    """Path of ``mosquitto_dynamic_security.so`` on this machine (first of :data:`PLUGIN_GLOBS`), or None."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def plugin_conf(config_file: Path, plugin: str) -> str:
    """The ``mosquitto.conf`` lines that load the dynamic-security plugin with ``config_file`` (instead of
    ``password_file``/``acl_file``), and the queue limits of :data:`QUEUE_LIMITS` (QoS 0 not queued), so a broker
    configured from this file alone keeps a long cloud outage of events too (the same values as dangol.conf,
    which Mosquitto accepts twice)."""
    queue = [f"{key} {value}" for key, value in QUEUE_LIMITS.items()]
    return "\n".join(["# Dangol: per-device logins pinned to their own client id (dangol-cloud broker-config)",
                      "allow_anonymous false", f"plugin {plugin}", f"plugin_opt_config_file {config_file}",
                      "# queued events of a disconnected session (the cloud listener during an outage): docs/mqtt.md",
                      *queue, "queue_qos0_messages false", ""])
