"""A sign-up started from the staff page, without the GPIO button (issue 11 item 9): headless Chromium on the
daemon's staff page, the real Hamilton clip as the camera; cancelled from the page too."""

from __future__ import annotations

import json

import cv2
import numpy as np

from dangol_edge.daemon import Appliance
from tests.edge.test_button_enrol import activate_on_staff_page
from tests.edge.test_daemon import config, home  # noqa: F401  (fixture)
from tests.edge.test_duplicate_signup import without_lin
from tests.edge.test_sync import wait_for
from tests.edge.conftest import start_signup_on_staff_page


def test_staff_page_starts_a_sign_up_and_activates_it(home, model_path, clips, browser):  # noqa: F811
    without_lin(home, model_path)   # a new face (Lin signing up again would make no second record)
    cfg = config(home, model_path, clips)   # gpio disabled: no button at all
    app = Appliance(cfg.model_copy(update={"camera": cfg.camera.model_copy(update={"realtime": True})}))
    app.start()
    try:
        assert app.button is None
        before = {c.id for c in app.gallery.customers()}
        page = start_signup_on_staff_page(browser, app)
        page.wait_for_load_state()
        assert "Sign-up started" in page.inner_text(".flash")
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "capturing", timeout=5)
        assert wait_for(lambda: app.gallery.customers(status="pending"), timeout=90)
        pending = app.gallery.customers(status="pending")[0]
        assert pending.id not in before and pending.templates == cfg.enrol.templates
        # the door screen shows the code (set just after the gallery stored the sign-up: wait for it under load)
        assert wait_for(lambda: app.screen.snapshot().get("code") == pending.short_code, timeout=10)
        activate_on_staff_page(page, app.web.url, pending.id, "Hana Kim", "Jisoo")
        page.close()
        c = app.gallery.customer(pending.id)
        assert c.status == "active" and c.display_name == "Hana Kim" and c.consent.recorded_by == "Jisoo"
        events = [json.loads(e["payload"]) for e in app.state.pending(1000)]
        assert [e["status"] for e in events if e["kind"] == "enrolment"] == ["pending", "active"]
    finally:
        app.stop()


def test_staff_page_cancels_a_sign_up_it_started(tmp_path, home, model_path, clips, browser):  # noqa: F811
    wall = tmp_path / "wall"
    wall.mkdir()
    for i in range(30):   # no face: the capture would run until enrol.max_frames
        cv2.imwrite(str(wall / f"wall{i:02d}.png"), np.full((360, 640, 3), 90, np.uint8))
    cfg = config(home, model_path, clips, camera={"source": str(wall), "loop": True, "realtime": True},
                 enrol={"max_frames": 100_000})
    app = Appliance(cfg)
    app.start()
    try:
        page = start_signup_on_staff_page(browser, app)
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "capturing", timeout=5)
        page.goto(app.web.url.rstrip("/") + "/staff")
        assert "Capturing a sign-up at the door" in page.inner_text("#signup")
        page.click("#signup-cancel")
        page.wait_for_load_state()
        assert "Sign-up cancelled" in page.inner_text(".flash")
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "cancelled", timeout=5)
        assert app.gallery.customers(status="pending") == []
        page.goto(app.web.url.rstrip("/") + "/staff")   # the card still says so once the door screen moved on
        assert "The last sign-up was cancelled just now; nothing was stored." in page.inner_text("#signup")
        page.close()
    finally:
        app.stop()


def test_the_staff_page_follows_a_sign_up_without_refresh(home, model_path, clips, browser):  # noqa: F811
    """After "Start a sign-up" the card counts the snapshots and then shows the new sign-up by itself: staff no
    longer press Refresh to learn how it went."""
    without_lin(home, model_path)
    cfg = config(home, model_path, clips)
    app = Appliance(cfg.model_copy(update={"camera": cfg.camera.model_copy(update={"realtime": True})}))
    app.start()
    try:
        page = start_signup_on_staff_page(browser, app)
        page.wait_for_load_state()
        page.wait_for_selector("#signup-samples", timeout=20_000)     # the card switched to the capture by itself
        assert "good snapshots so far" in page.inner_text("#signup")
        page.wait_for_selector("div.card[id^=pending-]", timeout=90_000)   # ... and to its outcome: the new sign-up
        (pending,) = app.gallery.customers(status="pending")
        assert page.get_attribute(f"#pending-{pending.id}", "data-code") == pending.short_code
        assert page.locator("#signup-samples").count() == 0
        page.close()
    finally:
        app.stop()
