"""A café owner's first "Retrain now" before any purchase exists (UX review, 2026-12-07): the job page said
"NotEnoughData: no purchases in the database; run dangol-cloud import-purchases first" under a full progress bar.
It must say in plain words what to do on the dashboard, link to the Purchases page and not show a finished bar."""

from __future__ import annotations

import time

from dangol_cloud.app import create_app
from dangol_cloud.settings import Settings

from .conftest import _database, add_owner, screenshot_page, serving, sign_in_owner


def test_retrain_with_no_purchases_says_what_to_do_on_the_dashboard(browser, sqlite_url, tmp_path):
    db = _database(sqlite_url)
    add_owner(db)
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="walls",
                              _env_file=None), db=db)
    try:
        with serving(app) as base:
            folder, page = screenshot_page(browser, tmp_path, "train-empty", 30_000)
            sign_in_owner(page, base)
            page.click("#train-now")
            page.wait_for_url(base + "/train/job")
            deadline = time.monotonic() + 60
            while page.get_attribute("#train-job", "data-state") == "running":
                assert time.monotonic() < deadline, "training did not finish"
                time.sleep(0.5)
                page.reload()
            page.screenshot(path=str(folder / "01-no-purchases.png"), full_page=True)
            error = page.inner_text("#train-error")
            assert "NotEnoughData" not in error and "dangol-cloud" not in error, error
            assert "purchase" in error.lower()
            link = page.locator("#train-error a")
            assert link.count() == 1 and link.get_attribute("href").endswith("/purchases/"), error
            assert page.get_attribute("#train-progress", "value") != "100"
            page.context.close()
    finally:
        app.extensions["dangol_training"].join(30)
        db.dispose()
