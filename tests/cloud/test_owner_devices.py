"""Issue 11, finding 6 / build 5 — device onboarding in headless Chromium with a real Mosquitto (password file)
and the cloud's real listener: "Add device" shows the exact edge.toml and edge.env lines and the broker-host
steps; the login shown works once the broker's password file is regenerated from the cloud database (the
"reload" step, here a restart on the same port); the device's status on the page turns online when the device
says so and offline when its connection drops (Mosquitto publishes its last will), without reloading the
page; the broker badge follows a real connection check (connected, then unreachable once the broker stops).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select
from werkzeug.serving import make_server

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.broker_auth import password_lines
from dangol_cloud.db import Database
from dangol_cloud.events import Listener
from dangol_cloud.models import Device, Store
from dangol_cloud.settings import Settings
from tests.broker import MosquittoBroker, free_port

from .conftest import DEV_KEY_BYTES, add_owner, screenshot_page, sign_in_owner

pytestmark = pytest.mark.slow
CLOUD_USER, CLOUD_PASSWORD = "cloud", "cloud-broker-pw"


@pytest.fixture
def site(tmp_path, monkeypatch):
    from dangol_cloud.web import devices

    monkeypatch.setattr(devices, "BROKER_CHECK_TTL_S", 0.5)
    broker = MosquittoBroker(tmp_path / "mosquitto", users={CLOUD_USER: CLOUD_PASSWORD}).start()
    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    with db.transaction() as s:
        store = Store(name="Main Street", ref="main")
        s.add(store)
        s.flush()
        store_id = store.id
    cloud_url = broker.url_for(CLOUD_USER)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, mqtt_url=cloud_url, secret_key="devices",
                        _env_file=None)
    server = make_server("127.0.0.1", free_port(), create_app(settings, db=db), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    listener = Listener(db, cloud_url, client_id="dangol-cloud-listener-test").start()
    state = {"base": f"http://127.0.0.1:{server.server_port}", "db": db, "broker": broker, "store": store_id}
    yield state
    listener.stop()
    server.shutdown()
    thread.join(5)
    db.dispose()
    state["broker"].stop()


def _device_session(url: str, port: int, device_id: str) -> mqtt.Client:
    """Connect as the device with the login from the page (MQTT 5, its pinned client id, its last will) and
    publish a retained ``online`` status; the network loop is driven by hand so nothing reconnects later."""
    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=proto.device_client_id(device_id),
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(unquote(parts.username), unquote(parts.password))
    topic, will = proto.last_will(device_id)
    client.will_set(topic, will, qos=1, retain=True)
    connected = []
    client.on_connect = lambda c, u, f, rc, p: connected.append(rc)
    client.connect("127.0.0.1", port, keepalive=30)
    deadline = time.monotonic() + 10
    while not connected and time.monotonic() < deadline:
        client.loop(0.1)
    assert connected and not connected[0].is_failure, f"the device's login was refused: {connected}"
    status = proto.Status(device_id=device_id, state="online", ts=datetime.now(timezone.utc))
    info = client.publish(proto.status_topic(device_id), proto.dump_payload(status), qos=1, retain=True)
    while not info.is_published() and time.monotonic() < deadline:
        client.loop(0.1)
    assert info.is_published()
    return client


def _wait_state(locator, want: str, timeout: float = 20.0) -> None:
    """Until ``data-state`` of ``locator`` is ``want`` (polled from Python: the dashboard's CSP forbids the
    string evaluation of ``page.wait_for_function``)."""
    deadline = time.monotonic() + timeout
    while (got := locator.get_attribute("data-state")) != want:
        assert time.monotonic() < deadline, f"data-state stayed {got!r}, expected {want!r}"
        time.sleep(0.2)


def _report_until_online(client: mqtt.Client, device_id: str, locator, timeout: float = 20.0) -> None:
    """Publish ``online`` again each second, as the edge does every ``mqtt.status_interval_s``, until ``data-state``
    of ``locator`` is ``online``: the listener, reconnecting after the broker's restart, may receive the first report
    as the broker's retained copy, which does not date the device (``dangol_cloud.device_status``)."""
    deadline = time.monotonic() + timeout
    while (got := locator.get_attribute("data-state")) != "online":
        assert time.monotonic() < deadline, f"data-state stayed {got!r}, expected 'online'"
        status = proto.Status(device_id=device_id, state="online", ts=datetime.now(timezone.utc))
        client.publish(proto.status_topic(device_id), proto.dump_payload(status), qos=1, retain=True)
        for _ in range(10):
            client.loop(0.1)


def test_add_device_shows_setup_lines_and_live_status(browser, site, tmp_path):
    folder, page = screenshot_page(browser, tmp_path, "devices", 20_000)
    csp = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    base = site["base"]
    sign_in_owner(page, base)
    badge = page.locator("[data-broker]")
    assert badge.get_attribute("data-state") == "ok" and badge.inner_text() == "connected"

    page.goto(base + "/stores/")
    page.fill("#device-name-1", "Front door")
    page.click("form:has(#device-name-1) button[type=submit]")
    page.wait_for_selector("#edge-env")
    with site["db"].sessions() as s:
        device = s.scalar(select(Device))
    toml = page.inner_text("#edge-toml")
    assert f'id = "{device.id}"' in toml and f'store_id = "{site["store"]}"' in toml and "[device]" in toml
    env = page.inner_text("#edge-env").strip()
    assert env.startswith("DANGOL_MQTT_URL=")
    url = urlsplit(env.split("=", 1)[1])
    password = page.inner_text("#mqtt-password").strip()
    assert (url.scheme, url.hostname, url.port) == ("mqtts", "127.0.0.1", 8883)
    assert (unquote(url.username), unquote(url.password)) == (device.mqtt_username, password)
    steps = page.inner_text("#broker-steps")
    assert "dangol-cloud)\" broker-config --out /etc/mosquitto/dangol" in steps and "systemctl restart mosquitto" in steps
    assert "DANGOL_DATA_KEY" in steps and steps.count("sudo ") >= 3  # the key every command needs; root-owned folder
    status = page.locator(f'[data-presence="{device.id}"]')
    assert status.get_attribute("data-state") == "never" and "never connected" in status.inner_text()
    page.screenshot(path=str(folder / "01-device-added.png"), full_page=True)

    # the broker host's step: regenerate the password file from the cloud database and restart Mosquitto
    port = site["broker"].port
    site["broker"].stop()
    with site["db"].sessions() as s:
        lines = password_lines(s, cloud_user=CLOUD_USER, cloud_password=CLOUD_PASSWORD)
    site["broker"] = MosquittoBroker(tmp_path / "mosquitto-2", password_lines=lines).start(port=port)

    client = _device_session(env.split("=", 1)[1], port, device.id)
    _report_until_online(client, device.id, status)
    assert "last seen just now" in status.inner_text()
    page.screenshot(path=str(folder / "02-device-online.png"), full_page=True)

    client.socket().close()  # the connection drops without DISCONNECT: Mosquitto publishes the last will
    _wait_state(status, "offline")
    page.goto(base + "/stores/")
    assert page.locator(f'[data-presence="{device.id}"]').get_attribute("data-state") == "offline"

    page.goto(base + "/")
    assert page.locator("[data-broker]").get_attribute("data-state") == "ok"
    site["broker"].stop()
    _wait_state(page.locator("[data-broker]"), "down")
    assert page.inner_text("[data-broker]") == "unreachable"
    page.screenshot(path=str(folder / "03-broker-down.png"), full_page=True)
    assert not csp, csp
    page.context.close()
