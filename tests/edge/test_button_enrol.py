"""Staff enrolment with the GPIO button (gpiozero MockFactory) from a real clip, activated on the staff page
in headless Chromium."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
from gpiozero.pins.mock import MockFactory

from dangol_edge.daemon import Appliance
from tests.edge.test_daemon import config, home  # noqa: F401  (fixture)
from tests.edge.test_sync import wait_for



def press(factory: MockFactory, pin: int, seconds: float = 0.1) -> None:
    p = factory.pin(pin)
    p.drive_low()  # button to ground, internal pull-up
    time.sleep(seconds)
    p.drive_high()


def activate_on_staff_page(page, url: str, customer_id: str, name: str, staff: str) -> None:
    """On the staff page at ``url``: fill in the pending customer's name, tick consent, sign, activate."""
    page.goto(url.rstrip("/") + "/staff")
    form = page.locator(f"form.activate[action$='{customer_id}']")
    form.locator("input[name=display_name]").fill(name)
    form.locator("input[name=consent]").check()
    form.locator("input[name=staff]").fill(staff)
    form.locator("button[value=activate]").click()
    page.wait_for_load_state()


def test_button_enrols_from_the_clip_and_staff_page_activates(home, model_path, clips, browser):  # noqa: F811
    from tests.edge.test_duplicate_signup import without_lin

    without_lin(home, model_path)   # a new face (Lin signing up again would make no second record)
    factory = MockFactory()
    cfg = config(home, model_path, clips, gpio={"enabled": True, "button_pin": 17, "led_pin": 27})
    app = Appliance(cfg.model_copy(update={"camera": cfg.camera.model_copy(update={"realtime": True})}),
                    pin_factory=factory)
    app.start()
    try:
        before = {c.id for c in app.gallery.customers()}
        press(factory, 17)
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "capturing", timeout=5)
        # the screen counts the good snapshots taken so far, out of the pool it gathers
        assert wait_for(lambda: app.screen.snapshot().get("samples", 0) >= 1, timeout=60)
        assert app.screen.snapshot()["wanted"] == 3 * cfg.enrol.templates
        assert wait_for(lambda: app.gallery.customers(status="pending"), timeout=60)
        pending = app.gallery.customers(status="pending")[0]
        assert pending.id not in before and pending.templates == cfg.enrol.templates
        assert pending.consent is None and len(pending.short_code) == 4
        # the enrolment thread stores the customer, then switches the screen: wait for the second step too
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "pending", timeout=5)
        snap = app.screen.snapshot()
        assert snap["screen"] == "enrol" and snap["stage"] == "pending" and snap["code"] == pending.short_code
        led = factory.pin(27)
        assert {s.state for s in led.states} >= {True, False}  # it blinked while capturing …
        assert wait_for(lambda: not app.button.led.is_lit, timeout=5)  # … and is off now
        # a pending customer is never recognised: its templates are not searched without consent
        t = app.gallery.templates(pending.id)[0]["embedding"]
        assert app.gallery.match(t, 0.5, 0.0)[0].customer_id != pending.id

        page = browser.new_page()
        activate_on_staff_page(page, app.web.url, pending.id, "Hana Kim", "Jisoo")
        page.close()
        c = app.gallery.customer(pending.id)
        assert c.status == "active" and c.display_name == "Hana Kim"
        assert c.consent.recorded_by == "Jisoo" and c.consent.text_version
        assert app.gallery.match(t, 0.5, 0.0)[0].customer_id == pending.id  # now searchable
        events = [json.loads(e["payload"]) for e in app.state.pending(1000)]
        kinds = [(e["kind"], e.get("status")) for e in events if e["kind"] == "enrolment"]
        assert kinds == [("enrolment", "pending"), ("enrolment", "active")]
        active = [e for e in events if e["kind"] == "enrolment" and e["status"] == "active"][0]
        assert active["consent"]["recorded_by"] == "Jisoo" and active["display_name"] == "Hana Kim"
    finally:
        app.stop()


def test_holding_the_button_cancels_and_no_face_fails(tmp_path, home, model_path, clips):  # noqa: F811
    wall = tmp_path / "wall"
    wall.mkdir()
    for i in range(20):  # a folder plays at 10 fps: 30 frames take 3 s, longer than the hold
        cv2.imwrite(str(wall / f"empty{i:02d}.png"), np.full((360, 640, 3), 90, np.uint8))
    factory = MockFactory()
    cfg = config(home, model_path, clips, gpio={"enabled": True, "hold_cancel_s": 0.5},
                 camera={"source": str(wall), "loop": True, "realtime": True},
                 enrol={"max_frames": 30})
    app = Appliance(cfg, pin_factory=factory)
    app.start()
    try:
        press(factory, 17, seconds=1.0)  # held past hold_cancel_s
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "cancelled", timeout=5)
        press(factory, 17)  # a short press, but the camera sees only a wall
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "failed", timeout=30)
        assert app.gallery.customers() and not app.gallery.customers(status="pending")
        assert wait_for(lambda: not app.button.led.is_lit, timeout=5)  # the LED goes off right after the screen
    finally:
        app.stop()
