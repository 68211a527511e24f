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

The plugin reads its file only at start (a reload does not re-read it), so the dynamic-security config also gives
the cloud's login the role :data:`LOGINS_ROLE`: it may send commands on the plugin's control topic
(:data:`CONTROL_TOPIC`) and read their answers. The dashboard uses it to create a new device's login (its role
exactly as ``broker-config`` writes it), to revoke a removed device's login and to replace a device's password
**at once** (:func:`create_device_login`, :func:`revoke_device_login`, :func:`replace_device_password`); for the
last two the broker then also closes the device's open connection, without its last will (so the cloud clears the
device's retained status, and a removed device's events too). A broker that refuses (a config written before this
role existed, or the classic files) or does not answer raises :class:`BrokerLoginError`, and the dashboard says to
run ``broker-config`` and *restart* Mosquitto.

The plugin saves each such change into its file, as the ``mosquitto`` user: :func:`seed_dynsec_file` puts the file
in a folder that user owns (``broker-config --state-dir``), else a restart would bring the old logins back. Each
device login carries the :func:`password_mark` of its password, so :mod:`dangol_cloud.broker_logins` can find and
disable one whose password is older than the database's (and delete a removed device's) when the cloud connects.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import threading
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.models import Device
from dangol_cloud.security import mosquitto_hash

__all__ = ["CONTROL_RESPONSE_TOPIC", "CONTROL_TOPIC", "LOGINS_ROLE", "PLUGIN_GLOBS", "QUEUE_LIMITS",
           "BrokerLoginError", "acl_text", "create_device_login", "device_client", "device_role", "dynsec_config",
           "find_dynsec_plugin", "password_lines", "password_mark", "plugin_conf", "replace_device_password",
           "revoke_device_login", "seed_dynsec_file"]

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
"""Where the dynamic-security plugin takes commands (Mosquitto 2.0); it answers on :data:`CONTROL_RESPONSE_TOPIC`."""
CONTROL_RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
LOGINS_ROLE = "dangol-cloud-logins"
"""The cloud's role that may send commands to the plugin (and so change any login of this broker)."""

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


def device_role(device_id: str, store_id: str) -> dict:
    """The dynamic-security role ``device-<device_id>`` of a device of store ``store_id`` (both UUID strings): it may
    subscribe to (and unsubscribe from) its store's catalogue, menus and erasures
    (:func:`dangol_protocol.store_subscriptions`), publish its own events and status, and read its status back —
    nothing else. The one definition :func:`dynsec_config` writes and :func:`create_device_login` creates live.

    Raises:
        ValueError: an id is not a UUID (from :mod:`dangol_protocol.topics`).
    """
    subscriptions = [topic for topic, _ in proto.store_subscriptions(store_id)]
    status = proto.status_topic(device_id)
    acls = [_acl("subscribeLiteral", t) for t in subscriptions]
    acls += [_acl("unsubscribeLiteral", t) for t in subscriptions]
    acls += [_acl("publishClientSend", proto.events_topic(device_id)), _acl("publishClientSend", status),
             _acl("subscribeLiteral", status)]
    return {"rolename": f"device-{device_id}", "acls": acls}


MARK_PREFIX = "dangol password "
"""Start of a device client's ``textdescription``: the rest is :func:`password_mark` of the password it was given."""


def password_mark(stored_hash: str) -> str:
    """16 hex digits naming one password of a device: the start of the SHA-256 of its stored ``$7$`` hash (salted,
    so neither the password nor the hash can be read back from it). The broker keeps it in the client's
    ``textdescription`` (:data:`MARK_PREFIX`), so the cloud can tell a login whose password is not the database's
    current one (:mod:`dangol_cloud.broker_logins`); the plugin never shows its own hash."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:16]


def device_client(device_id: str, username: str, name: str, stored_hash: str | None = None) -> dict:
    """The dynamic-security client of a device, without its password: login ``username`` pinned to client id
    :func:`dangol_protocol.device_client_id`, named ``name``, with the role of :func:`device_role` only; given the
    password's ``stored_hash``, its :func:`password_mark` in ``textdescription``."""
    client = {"username": username, "clientid": proto.device_client_id(device_id), "textname": name,
              "roles": [{"rolename": f"device-{device_id}"}]}
    if stored_hash is not None:
        client["textdescription"] = MARK_PREFIX + password_mark(stored_hash)
    return client


def dynsec_config(session: Session, *, cloud_user: str, cloud_password: str) -> dict:
    """The dynamic-security plugin's JSON configuration (``plugin_opt_config_file``).

    Default access: nothing may be published or subscribed unless a role allows it. Role ``dangol-cloud``
    (the cloud user, any client id): publish and subscribe ``dangol/v1/#``; role :data:`LOGINS_ROLE` (the cloud
    user too): send commands to the plugin and read their answers (revoking a device at once). One role per
    device: subscribe to its store's catalogue, menus and erasures, publish its own events and status (and read its
    status back); the device's client is pinned to ``clientid`` :func:`dangol_protocol.device_client_id`.
    The plugin's ACL types grant a topic, not the retain flag (nor does ``acl_file``; ``retain_available`` is
    global), so a device may publish a *retained* event: the cloud listener never applies one, dead-letters it once
    and clears it (:mod:`dangol_cloud.events`).

    Raises:
        ValueError: a device's stored password hash is not in Mosquitto's ``$7$`` format, or a device's
            username is the cloud's.
    """
    clients = [{"username": cloud_user, "textname": "Dangol cloud service",
                "roles": [{"rolename": "dangol-cloud"}, {"rolename": LOGINS_ROLE}],
                **_dynsec_password(mosquitto_hash(cloud_password))}]
    roles = [{"rolename": "dangol-cloud", "acls": [_acl("publishClientSend", "dangol/v1/#"),
                                                   _acl("subscribePattern", "dangol/v1/#"),
                                                   _acl("unsubscribePattern", "dangol/v1/#")]},
             {"rolename": LOGINS_ROLE, "acls": [_acl("publishClientSend", CONTROL_TOPIC),
                                                _acl("publishClientReceive", CONTROL_RESPONSE_TOPIC),
                                                _acl("subscribeLiteral", CONTROL_RESPONSE_TOPIC),
                                                _acl("unsubscribeLiteral", CONTROL_RESPONSE_TOPIC)]}]
    for device in session.scalars(select(Device).order_by(Device.mqtt_username)):
        if device.mqtt_username == cloud_user:
            raise ValueError(f"device {device.id} has the cloud's MQTT username {cloud_user!r}; give it its own")
        roles.append(device_role(device.id, device.store_id))
        clients.append({**device_client(device.id, device.mqtt_username, device.name, device.mqtt_password_hash),
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


def seed_dynsec_file(path: Path, config: dict) -> None:
    """Write the plugin's ``config`` (:func:`dynsec_config`) to ``path`` for Mosquitto to *own*: the plugin saves
    every login change (dashboard, :func:`revoke_device_login` ...) by writing ``<path>.new`` and renaming it over
    ``path`` as the ``mosquitto`` user, and reads it at start after dropping root. So the file goes into a folder
    that user owns (``/var/lib/mosquitto/dangol``, mode 0700), owned by the folder's owner, mode 0600; written to a
    temporary file and renamed, so a running broker never reads half of it. A folder Mosquitto cannot write (the
    old ``/etc/mosquitto/dangol``) loses every live change at the next restart: a removed device's login works again.

    Raises:
        OSError: the folder is missing or not writable here (run as root).
    """
    folder = path.parent
    owner = folder.stat()
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(config, indent=1))
        if os.geteuid() == 0:
            os.chown(tmp, owner.st_uid, owner.st_gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- changing a login on the running broker ---------------------------------------------------------------------
class BrokerLoginError(RuntimeError):
    """The broker did not apply a change of a device's login (unreachable, refused, no answer, or the plugin's own
    error); the message says which."""


def _answers(mqtt_url: str, commands: list[dict], *, client_id: str, timeout: float) -> list[dict]:
    """Send ``commands`` to the dynamic-security plugin as the cloud's login and return its answers, in order.

    Raises:
        BrokerLoginError: naming the broker and what failed: connection, the response topic refused (the login
            lacks :data:`LOGINS_ROLE`), the command refused, or no answer within ``timeout`` seconds (no plugin).
    """
    from dangol_cloud.mqtt import MqttError, connect, publish_all
    from dangol_protocol.client import is_refusal

    tag = uuid.uuid4().hex
    commands = [{**command, "correlationData": f"{tag}-{n}"} for n, command in enumerate(commands)]
    subscribed, answered = threading.Event(), threading.Event()
    result: dict = {}

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        result["granted"] = not any(is_refusal(code) for code in reason_codes)
        subscribed.set()

    def on_message(client, userdata, message):
        try:
            responses = json.loads(message.payload)["responses"]
            mine = [r for r in responses if str(r.get("correlationData", "")).startswith(tag)]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not the plugin's answer: say so
            log.warning("unexpected message on %s ignored (%s: %s)", message.topic, type(exc).__name__, exc)
            return
        if mine:
            result["responses"] = mine
            answered.set()

    try:
        client = connect(mqtt_url, client_id, timeout=timeout, on_message=on_message, on_subscribe=on_subscribe)
    except MqttError as exc:
        raise BrokerLoginError(str(exc)) from exc
    try:
        client.subscribe(CONTROL_RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(timeout):
            raise BrokerLoginError(f"no SUBACK for {CONTROL_RESPONSE_TOPIC} within {timeout:.0f} s")
        if not result["granted"]:
            raise BrokerLoginError("the broker does not let the cloud's login (DANGOL_MQTT_URL) change logins: its "
                                   "dynamic-security config predates that role, or it runs without the plugin")
        try:
            publish_all(client, [(CONTROL_TOPIC, json.dumps({"commands": commands}).encode(), False)],
                        timeout=timeout)
        except MqttError as exc:
            raise BrokerLoginError(str(exc)) from exc
        if not answered.wait(timeout):
            raise BrokerLoginError(f"no answer from the broker's dynamic-security plugin within {timeout:.0f} s "
                                   "(is it loaded?)")
    finally:
        client.disconnect()
        client.loop_stop()
    by_tag = {r["correlationData"]: r for r in result["responses"]}
    return [by_tag.get(c["correlationData"], {"error": "no answer"}) for c in commands]


def revoke_device_login(mqtt_url: str, device_id: str, username: str, *, client_id: str,
                        timeout: float = 5.0) -> None:
    """Delete the removed device's login and role on the running broker: it cannot log in again, and the broker
    closes a connection it has open. A login or role the broker does not have (the device was added after its last
    ``broker-config``) is nothing left to revoke. The plugin closes that connection *without* the box's last will, so
    its ``online`` stays retained: the Stores page clears the removed device's retained topics next
    (:func:`dangol_cloud.device_status.clear_retained_topics`).

    Raises:
        BrokerLoginError: the broker could not be told or refused (the login may still work until ``broker-config``
            and a restart).
    """
    answers = _answers(mqtt_url, [{"command": "deleteClient", "username": username},
                                  {"command": "deleteRole", "rolename": f"device-{device_id}"}],
                       client_id=client_id, timeout=timeout)
    for what, answer in zip(("deleteClient", "deleteRole"), answers):
        if answer.get("error") not in (None, "Client not found", "Role not found"):
            raise BrokerLoginError(f"the broker refused {what} for {username}: {answer['error']}")
    log.info("broker login of removed device %s (%s) revoked", device_id, username)


def create_device_login(mqtt_url: str, device: Device, password: str, *, client_id: str,
                        timeout: float = 5.0) -> None:
    """Create the new ``device``'s login on the running broker, so that it can connect at once without a restart:
    its role (:func:`device_role`: only its own store's topics and its own events and status) and its client
    (:func:`device_client`: pinned to its own client id) with ``password`` (plain text; the plugin hashes it) —
    exactly what :func:`dynsec_config` writes for it at the next ``broker-config``. If the broker takes the role but
    refuses the client, the role is deleted again, so nothing is left half-created.

    Raises:
        BrokerLoginError: the broker could not be told or refused (e.g. it already has that login): the device
            cannot log in until ``broker-config`` and a restart.
    """
    role = device_role(device.id, device.store_id)
    client = {**device_client(device.id, device.mqtt_username, device.name, device.mqtt_password_hash),
              "password": password}
    steps = (("createRole", {"command": "deleteRole", "rolename": role["rolename"]}),
             ("createClient", {"command": "deleteClient", "username": device.mqtt_username}))
    answers = _answers(mqtt_url, [{"command": "createRole", **role}, {"command": "createClient", **client}],
                       client_id=client_id, timeout=timeout)
    refused = [f"{what}: {answer['error']}" for (what, _), answer in zip(steps, answers) if answer.get("error")]
    if not refused:
        log.info("broker login of new device %s (%s) created", device.id, device.mqtt_username)
        return
    problem = f"the broker refused the login of new device {device.mqtt_username} ({'; '.join(refused)})"
    undo = [command for (_, command), answer in zip(steps, answers) if not answer.get("error")]
    if undo:  # what it did take, it gives back
        try:
            undone = _answers(mqtt_url, undo, client_id=client_id, timeout=timeout)
            left = [answer["error"] for answer in undone if answer.get("error")]
        except BrokerLoginError as exc:
            left = [str(exc)]
        if left:
            problem += f"; undoing what it took failed too ({'; '.join(left)})"
    raise BrokerLoginError(problem)


def replace_device_password(mqtt_url: str, username: str, password: str, *, client_id: str, device_id: str,
                            stored_hash: str | None = None, timeout: float = 5.0) -> None:
    """Give the login ``username`` of device ``device_id`` on the running broker its new password: the old one stops
    working and the broker closes a connection made with it — without publishing the box's last will (the plugin's
    kick), so the broker would go on retaining its ``online``. The cloud then clears that retained status
    (:func:`dangol_cloud.device_status.clear_retained_status`; the caller records the device offline itself,
    :func:`dangol_cloud.device_status.record_dropped`); the box reports ``online`` again once it connects with the new
    password. That clear failing is only logged (the password was replaced; a retained ``online`` never dates the
    box, so it would show as not heard from after the listener's next subscription).

    Given ``stored_hash`` (the new password's hash as the database keeps it), the login's ``textdescription`` gets
    its :func:`password_mark` and the login is enabled again (one the cloud disabled for an old password,
    :mod:`dangol_cloud.broker_logins`).

    Raises:
        BrokerLoginError: the broker could not be told, refused, or has no login ``username`` yet (run
            ``broker-config`` and restart Mosquitto).
    """
    from dangol_cloud.device_status import clear_retained_status
    from dangol_cloud.mqtt import MqttError

    commands = [{"command": "setClientPassword", "username": username, "password": password}]
    if stored_hash is not None:
        commands += [{"command": "modifyClient", "username": username,
                      "textdescription": MARK_PREFIX + password_mark(stored_hash)},
                     {"command": "enableClient", "username": username}]
    answer, *more = _answers(mqtt_url, commands, client_id=client_id, timeout=timeout)
    refused = [f"{c['command']}: {a['error']}" for c, a in zip(commands[1:], more) if a.get("error")]
    if refused and not answer.get("error"):
        raise BrokerLoginError(f"the broker took the new password of {username} but refused {'; '.join(refused)}")
    if answer.get("error") == "Client not found":
        raise BrokerLoginError(f"the broker has no login {username} yet (broker-config was not run since the device "
                               "was added)")
    if answer.get("error"):
        raise BrokerLoginError(f"the broker refused the new password of {username}: {answer['error']}")
    log.info("broker password of %s replaced", username)
    try:
        clear_retained_status(mqtt_url, device_id, client_id=client_id, timeout=timeout)
    except MqttError as exc:
        log.warning("device %s was dropped by the broker but its retained status was not cleared: %s", device_id, exc)
