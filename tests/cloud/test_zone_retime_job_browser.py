"""The owner changes a store's zone on the Stores page in headless Chromium and watches the job apply it: the
confirmation, the job's page with its progress while the sales move (held by a gate, so the running state is seen
for sure), the page updating itself to the outcome, and the Stores page with the new zone. Real Ta-Feng rows,
SQLite, a real Mosquitto (the app's broker)."""

from __future__ import annotations

import pytest

from dangol_cloud.app import create_app
from dangol_cloud.settings import Settings
from dangol_cloud.store_zones import store_zones

from .conftest import owner_database, screenshot_page, serving, sign_in_owner
from .test_zone_change_reimport import _import, _in, _naive_times, _stored
from .test_zone_retime_job import Gate


@pytest.mark.slow
def test_the_owner_sees_the_zone_change_applied_in_the_background(browser, tmp_path, ta_feng_slice, monkeypatch):
    broker, url, db, store_id = owner_database(tmp_path)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="zones", timezone="Europe/Berlin",
                        _env_file=None)
    try:
        first = _import(db, ta_feng_slice, "Europe/Berlin", store_id)
        naive = _naive_times(ta_feng_slice)
        gate = Gate(monkeypatch)
        with serving(create_app(settings, db=db)) as base:
            folder, page = screenshot_page(browser, tmp_path, "zone-job", 20_000)
            sign_in_owner(page, base)
            page.goto(base + "/stores/")
            page.locator(f"#tz-{store_id}").fill("Asia/Taipei")
            page.locator(f"#tz-{store_id}").locator("xpath=following-sibling::button").click()
            assert f"{first.inserted:,}" in page.inner_text("#confirm")            # what will move, asked first
            page.click("#confirm-button")
            page.wait_for_url(f"{base}/stores/zone-jobs/*")                        # answered while the move is held
            assert gate.entered.wait(30) and gate.thread.startswith("dangol-zone-")
            card = page.locator("#zone-job")
            assert card.get_attribute("data-state") == "running"
            assert "Applying Asia/Taipei to Main Street" in page.inner_text("h1")
            assert "keeps Europe/Berlin" in page.inner_text("#zone-job-numbers")
            assert page.locator("#zone-job-progress").get_attribute("value") is not None
            page.screenshot(path=str(folder / "running.png"))
            page.goto(base + "/stores/")                                           # the Stores page says so too
            assert "Applying Asia/Taipei to Main Street" in page.inner_text("#zone-job-banner")
            page.click("#zone-job-banner a")
            gate.release.set()
            page.wait_for_selector('#zone-job[data-state="done"]', timeout=60_000)  # it reloads itself
            done = page.inner_text("#zone-job-done")
            assert f"Its {first.inserted:,} imported sales moved to the same hours in Asia/Taipei" in done
            assert page.locator("#zone-job-progress").get_attribute("value") == "100"
            page.screenshot(path=str(folder / "done.png"))
            page.click("text=Back to stores")
            assert page.locator(f"#tz-{store_id}").input_value() == "Asia/Taipei"
            assert page.locator("#zone-job-banner").count() == 0
        with db.sessions() as s:
            assert store_zones(s) == {store_id: "Asia/Taipei"}
        assert _stored(db) == _in("Asia/Taipei", naive)
    finally:
        db.dispose()
        broker.stop()
