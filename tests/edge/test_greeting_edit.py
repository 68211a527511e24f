"""Staff correct what the door says to a regular after activation ("Welcome back, Dr" where it should say "Dr. Lee",
a nickname the customer asked for): a "Greet as" edit on each row of the staff page's regulars, behind the sign-in
and the CSRF token as the other staff actions, cleaned and bounded as at activation
(:func:`dangol_edge.gallery_names.clean_greeting`), stored sealed (:meth:`Gallery.set_greeting`), logged by customer
id only; the door greets with it from the customer's next arrival.

The cloud is not told: it keeps no greeting (the enrolment event carries the name and the consent, not the
greeting), and the door greets with the gallery's greeting, never with the name a menu carries.

Real Chromium on the staff page; the last test on the running daemon, a real arrival at its camera.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3

import cv2
import numpy as np
import pytest

from dangol_edge.gallery import Gallery, UnknownCustomer
from tests.edge.test_daemon import LIN, config, home  # noqa: F401  (fixture)
from tests.edge.test_staff_review_fixes import CONSENT, PIN, site, staff, unit  # noqa: F401  (fixtures)
from tests.edge.test_sync import wait_for


def active(g: Gallery, seed: int, name: str, greet: str | None) -> str:
    """A regular activated on the staff page with ``greet`` typed in "Greet as"; their id."""
    cid = g.enroll("", unit(seed), status="pending", pending_ttl_s=600).id
    g.activate(cid, name, CONSENT, greet_name=greet)
    return cid


# --- the gallery ---------------------------------------------------------------------------------------------
def test_set_greeting_is_cleaned_bounded_and_sealed(tmp_path):
    path = tmp_path / "gallery.sqlite"
    with Gallery(path, "0" * 64) as g:
        cid = active(g, 1, "Lee Min-ho", "Dr")
        since = g.customer(cid).updated_at
        got = g.set_greeting(cid, "  Dr.   Lee ")
        assert got.greet_name == "Dr. Lee" and got.first_name == "Dr. Lee"   # whitespace collapsed, as at activation
        assert g.customer(cid).updated_at == since   # still "active since" the activation, for staff and retention
        assert g.wipe_due   # the old sealed greeting leaves the -wal file at the next housekeeping pass
        with pytest.raises(ValueError, match="at most 40"):
            g.set_greeting(cid, "x" * 41)
        assert g.customer(cid).first_name == "Dr. Lee"   # nothing changed
        assert g.set_greeting(cid, "Doc").first_name == "Doc"
    raw = sqlite3.connect(path).execute("SELECT greet_name FROM customers WHERE id = ?", [cid]).fetchone()[0]
    assert isinstance(raw, bytes) and b"Doc" not in raw   # sealed, as the name
    with Gallery(path, "0" * 64) as g:
        assert g.customer(cid).first_name == "Doc"
        assert g.set_greeting(cid, "   ").greet_name is None   # blank: the rule on the name again
        assert g.customer(cid).first_name == "Lee"


def test_set_greeting_only_for_active_customers(tmp_path):
    with Gallery(tmp_path / "gallery.sqlite", "0" * 64) as g:
        pending = g.enroll("", unit(2), status="pending", pending_ttl_s=600).id
        with pytest.raises(UnknownCustomer):
            g.set_greeting(pending, "Mina")   # a sign-up gets its greeting at activation
        with pytest.raises(UnknownCustomer):
            g.set_greeting("no-such-id", "Mina")
        assert g.customer(pending).greet_name is None


# --- the staff page ------------------------------------------------------------------------------------------
def test_staff_change_a_regulars_greeting_on_the_staff_page(site, staff, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="dangol_edge")
    g = site["gallery"]
    cid = active(g, 11, "Lee Min-ho", "Dr")
    staff.goto(site["url"] + "/staff")
    row = staff.locator(f"#active-{cid}")
    assert "greeted as Dr ·" in row.inner_text()
    field = row.locator("input[name=greet_as]")
    assert field.input_value() == "Dr"
    field.fill("Dr.  Lee")
    row.locator("button:has-text('Save')").click()
    staff.wait_for_selector(".flash.success")
    assert "The door now greets Lee Min-ho: Welcome back, Dr. Lee" in staff.inner_text(".flash.success")
    assert g.customer(cid).first_name == "Dr. Lee"
    row = staff.locator(f"#active-{cid}")
    assert "greeted as Dr. Lee ·" in row.inner_text() and row.locator("input[name=greet_as]").input_value() == "Dr. Lee"
    said = [r.getMessage() for r in caplog.records if r.name.startswith("dangol_edge")]
    assert any(cid in m and "greeting" in m for m in said)   # logged, by id ...
    assert not any("Lee" in m for m in said)   # ... never by the name or the greeting

    row.locator("input[name=greet_as]").fill("")   # empty: back to the rule on the name
    row.locator("button:has-text('Save')").click()
    staff.wait_for_selector(".flash.success")
    assert g.customer(cid).greet_name is None and "greeted as Lee ·" in staff.inner_text(f"#active-{cid}")


def test_a_greeting_edit_is_bounded_and_guarded_as_the_other_staff_actions(site, staff, browser):  # noqa: F811
    g = site["gallery"]
    cid = active(g, 12, "Mina Park", "Mina")
    staff.goto(site["url"] + "/staff")
    token = staff.get_attribute("input[name=csrf_token]", "value")
    url = f"{site['url']}/staff/greeting/{cid}"
    r = staff.request.post(url, form={"greet_as": "x" * 41, "csrf_token": token})   # past the field's maxlength
    assert r.status == 400 and "40 characters at most" in r.text()
    for extra in ({}, {"csrf_token": "forged"}):   # no (or a forged) CSRF token: refused
        assert staff.request.post(url, form={"greet_as": "Minnie", **extra}).status == 400
    pending = g.enroll("", unit(13), status="pending", pending_ttl_s=600).id
    r = staff.request.post(f"{site['url']}/staff/greeting/{pending}", form={"greet_as": "Minnie", "csrf_token": token})
    assert r.status == 404 and g.customer(pending).greet_name is None
    stranger = browser.new_context()   # not signed in (a valid token of the sign-in form): sent to the sign-in
    try:
        page = stranger.new_page()
        page.goto(site["url"] + "/staff")
        login_token = page.get_attribute("input[name=csrf_token]", "value")
        r = page.request.post(url, form={"greet_as": "Minnie", "csrf_token": login_token}, max_redirects=0)
        assert r.status == 302 and "/staff/login" in r.headers["location"]
    finally:
        stranger.close()
    assert g.customer(cid).first_name == "Mina"   # nothing changed by any of them


# --- the door ------------------------------------------------------------------------------------------------
def test_the_next_arrival_is_greeted_with_the_new_greeting(tmp_path, home, model_path, clips, browser):  # noqa: F811
    from dangol_edge.daemon import Appliance

    door = tmp_path / "door"
    door.mkdir()
    for i in range(20):   # nobody in front of the camera yet
        cv2.imwrite(str(door / f"a-wall{i:02d}.png"), np.full((360, 640, 3), 90, np.uint8))
    app = Appliance(config(home, model_path, clips, camera={"source": str(door), "loop": True, "realtime": True}))
    app.start()
    try:
        assert app.gallery.customer(LIN).first_name == "Lin-Manuel"   # the rule on "Lin-Manuel Miranda"
        page = browser.new_page()
        page.set_default_timeout(10_000)
        page.goto(app.web.url.rstrip("/") + "/staff")
        row = page.locator(f"#active-{LIN}")
        row.locator("input[name=greet_as]").fill("Mr. Miranda")
        row.locator("button:has-text('Save')").click()
        page.wait_for_selector(".flash.success")
        for i in range(12):   # he walks in
            shutil.copy(clips / "lin-manuel-miranda.png", door / f"b-lin{i:02d}.png")
        kiosk = browser.new_page()
        kiosk.goto(app.web.url.rstrip("/") + "/")
        kiosk.wait_for_selector("section.welcome", timeout=60_000)
        assert kiosk.inner_text("section.welcome h1") == "Welcome back, Mr. Miranda"
        assert app.screen.snapshot()["customer_id"] == LIN
        page.close()
        kiosk.close()
    finally:
        app.stop()
