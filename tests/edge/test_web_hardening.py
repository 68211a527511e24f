"""Issue 9, edge rows: the kiosk page and its streams for the Pi's own screen only, the staff page on the
network only behind a PIN of 6+ digits with a per-client back-off, and a cap on open event streams.

The app is served by :class:`DisplayServer` on ``0.0.0.0`` and reached both over loopback (the kiosk, the
staff phone via the Pi) and over this machine's own network address (someone on the shop's Wi-Fi), in
headless Chromium and with raw HTTP; a real StateStore, Gallery and Screen in tmp_path.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time

import pytest

from dangol_edge.config import ConfigError, DisplayConfig, EdgeConfig, load_config
from dangol_edge.gallery import Gallery
from dangol_edge.screen import Screen
from dangol_edge.state import StateStore
from dangol_edge.web import DisplayServer, create_app
from tests.browser import chromium_missing

from .test_web import catalogue

PIN = "246813"
LAN_CLIENT = "192.168.1.50"  # a phone on the shop's network, as the app sees it


def lan_address() -> str | None:
    """This machine's own non-loopback IPv4 address (how a LAN client reaches it), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


class FakeClock:
    """Monotonic seconds that tests move forward."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("DANGOL_")]:
            mp.delenv(k)
        config = EdgeConfig(home=tmp_path / "home", display=DisplayConfig(host="0.0.0.0", staff_pin=PIN))
    state = StateStore(config.state_path).open()
    state.put_catalogue(catalogue(1))
    gallery = Gallery(config.gallery_path, "0" * 64).open()
    yield {"config": config, "state": state, "gallery": gallery, "tmp": tmp_path}
    gallery.close()
    state.close()


def make_app(parts, **kwargs):
    return create_app(screen=Screen(), state=parts["state"], gallery=parts["gallery"], config=parts["config"],
                      **kwargs)


@pytest.fixture
def served(parts):
    """The app (stream cap 2) served on 0.0.0.0 like a Pi with the staff page opened to the LAN."""
    app = make_app(parts, max_streams=2)
    server = DisplayServer(app, "0.0.0.0", 0)
    server.start()
    yield {"app": app, "server": server, "port": server.port}
    server.stop()


# --- loopback only for the kiosk ---------------------------------------------------------------------------
def test_kiosk_routes_refuse_clients_that_are_not_loopback(parts):
    client = make_app(parts).test_client()
    for path in ("/", "/events", "/api/state", "/api/catalogue"):
        response = client.get(path, environ_base={"REMOTE_ADDR": LAN_CLIENT})
        assert response.status_code == 403, path
        assert "Flat white" not in response.get_data(as_text=True)
    for addr in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert client.get("/api/state", environ_base={"REMOTE_ADDR": addr}).status_code == 200, addr
    page = client.get("/", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert page.status_code == 200
    for path in ("/", "/staff/login"):
        headers = client.get(path, environ_base={"REMOTE_ADDR": "127.0.0.1"}).headers
        assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]


@pytest.mark.slow
def test_over_the_network_the_kiosk_is_refused_and_the_staff_page_asks_for_the_pin(served, browser):
    if (msg := chromium_missing()):
        pytest.fail(msg, pytrace=False)
    address = lan_address()
    if address is None:
        pytest.fail("this machine has no non-loopback IPv4 address to play the LAN client from", pytrace=False)
    lan = f"http://{address}:{served['port']}"
    context = browser.new_context()
    try:
        page = context.new_page()
        for path in ("/", "/api/state", "/api/catalogue"):
            response = page.goto(lan + path)
            assert response.status == 403, path
            assert "Flat white" not in page.content()
        response = page.goto(lan + "/staff")
        assert response.status == 200 and page.url.startswith(lan + "/staff/login")  # PIN first
        kiosk = context.new_page()
        kiosk.goto(f"http://127.0.0.1:{served['port']}/")  # the Pi's own screen still gets its menu
        assert "Flat white" in kiosk.inner_text("body")
    finally:
        context.close()
    conn = http.client.HTTPConnection(address, served["port"], timeout=5)
    conn.request("GET", "/events")
    assert conn.getresponse().status == 403
    conn.close()


def test_a_staff_page_without_a_pin_is_refused_to_the_network(parts):
    open_config = parts["config"].model_copy(update={"display": DisplayConfig()})  # as if validation were bypassed
    app = create_app(screen=Screen(), state=parts["state"], gallery=parts["gallery"], config=open_config)
    client = app.test_client()
    assert client.get("/staff", environ_base={"REMOTE_ADDR": LAN_CLIENT}).status_code == 403
    assert client.post("/staff/erase/x", environ_base={"REMOTE_ADDR": LAN_CLIENT}).status_code == 403
    assert client.get("/staff", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200


@pytest.mark.parametrize("display,message", [
    ({"staff_pin": "2468"}, "display.staff_pin: Value error, the staff PIN must have at least 6 digits"),
    ({"staff_pin": "12 34 56"}, "display.staff_pin: Value error, the staff PIN must be digits only"),
    ({"host": "0.0.0.0"}, "display.staff_pin is required when display.host is '0.0.0.0'"),
    ({"host": "::", "staff_pin": ""}, "display.staff_pin is required"),
])
def test_config_refuses_a_short_pin_or_an_open_lan_page(display, message, monkeypatch):
    for k in [k for k in os.environ if k.startswith("DANGOL_")]:
        monkeypatch.delenv(k)
    with pytest.raises(ConfigError) as err:
        load_config(display=display)
    assert message in str(err.value)


def test_config_accepts_six_digits_and_never_shows_the_pin(monkeypatch):
    for k in [k for k in os.environ if k.startswith("DANGOL_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("DANGOL_DISPLAY__STAFF_PIN", PIN)
    config = load_config(display={"host": "0.0.0.0"})
    assert config.display.staff_pin == PIN and PIN not in repr(config)
    assert load_config().display.host == "127.0.0.1"


# --- PIN back-off ------------------------------------------------------------------------------------------
def test_wrong_pins_slow_down_that_client_only_and_the_right_pin_works_after_the_wait(parts):
    clock = FakeClock()
    app = make_app(parts, clock=clock)
    app.config["WTF_CSRF_ENABLED"] = False  # CSRF itself is covered in test_web.py's browser tests
    attacker, staff = app.test_client(), app.test_client()

    def try_pin(client, pin, addr):
        return client.post("/staff/login", data={"pin": pin}, environ_base={"REMOTE_ADDR": addr})

    for n in range(3):
        assert try_pin(attacker, f"00000{n}", LAN_CLIENT).status_code == 401
    held = try_pin(attacker, PIN, LAN_CLIENT)  # even the right PIN waits: it is not checked now
    assert held.status_code == 429 and held.headers["Retry-After"] == "5"
    assert try_pin(staff, PIN, "192.168.1.51").status_code == 302  # the staff phone is not locked out
    assert try_pin(app.test_client(), PIN, "127.0.0.1").status_code == 302
    clock.now += 5.1
    assert try_pin(attacker, "111111", LAN_CLIENT).status_code == 401  # the 4th wrong PIN: now 10 s
    assert try_pin(attacker, PIN, LAN_CLIENT).headers["Retry-After"] == "10"
    clock.now += 10.1
    assert try_pin(attacker, PIN, LAN_CLIENT).status_code == 302  # the right PIN, once the wait is over


def test_pin_back_off_remembers_a_bounded_number_of_clients(parts):
    app = make_app(parts)
    pins = app.extensions["dangol_pins"]
    for n in range(pins.max_clients + 500):
        pins.failure(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(pins._fails) == pins.max_clients


@pytest.mark.slow
def test_lan_guesser_gets_429_in_the_browser_while_staff_sign_in(served, browser):
    address = lan_address()
    if address is None:
        pytest.fail("this machine has no non-loopback IPv4 address to play the LAN client from", pytrace=False)
    context = browser.new_context()
    try:
        guesser, staff = context.new_page(), browser.new_context().new_page()
        guesser.goto(f"http://{address}:{served['port']}/staff/login")
        statuses = []
        for n in range(4):
            guesser.fill("#pin", f"99999{n}")
            with guesser.expect_response(lambda r: r.request.method == "POST") as info:
                guesser.click("button[type=submit]")
            statuses.append(info.value.status)
        assert statuses == [401, 401, 401, 429] and "Too many wrong PINs" in guesser.inner_text("#error")
        staff.goto(f"http://127.0.0.1:{served['port']}/staff/login")
        staff.fill("#pin", PIN)
        staff.click("button[type=submit]")
        staff.wait_for_url(f"http://127.0.0.1:{served['port']}/staff")
        staff.context.close()
    finally:
        context.close()


# --- event stream cap --------------------------------------------------------------------------------------
def _open_stream(port: int):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/events")
    response = conn.getresponse()
    if response.status == 200:
        assert response.read(6) == b"retry:"  # the stream really started
    return conn, response


def test_event_streams_are_capped_and_an_ended_one_frees_its_slot(served):
    port, streams = served["port"], served["app"].extensions["dangol_streams"]
    threads_before = threading.active_count()
    held = [_open_stream(port) for _ in range(2)]
    assert [r.status for _, r in held] == [200, 200] and streams.open == 2
    refused = [_open_stream(port) for _ in range(20)]
    assert {r.status for _, r in refused} == {503}
    assert all(r.getheader("Retry-After") == "5" for _, r in refused)
    for conn, _ in refused:
        conn.close()
    time.sleep(0.3)
    assert threading.active_count() - threads_before <= 4  # the 2 streams (+ slack), not one per refused client
    streams.stopping.set()  # the open streams end (as DisplayServer.stop() does): their slots come back
    deadline = time.monotonic() + 3
    while streams.open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert streams.open == 0
    streams.stopping.clear()
    for conn, _ in held:
        conn.close()
    again, response = _open_stream(port)
    assert response.status == 200
    again.close()
