"""Issue 11, finding 4 / build 3 — training as a background job with a progress bar and a result page, in
headless Chromium on real Ta-Feng purchases (customers whose id ends in 00) with a real Mosquitto: "Retrain
now" leads to the job page, which shows the step in progress and a bar while training runs, then the result
(model, purchases, menus, menu messages sent) and each step's seconds. A second run shows an ETA."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server

from dangol_cloud.app import create_app
from dangol_cloud.models import Menu, ModelVersion
from dangol_cloud.settings import Settings
from tests.broker import free_port

from .conftest import owner_database, screenshot_page, sign_in_owner, write_ta_feng_customers

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path, data_dir):
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows

    broker, url, db, _store = owner_database(tmp_path)
    slice_ = write_ta_feng_customers(data_dir, tmp_path / "ta_feng_00.csv")
    with db.transaction() as s:
        import_rows(s, parse_purchases(slice_, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, mqtt_url=broker.url, secret_key="train",
                        _env_file=None)
    app = create_app(settings, db=db)
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{server.server_port}", "db": db, "app": app}
    app.extensions["dangol_training"].join(300)
    server.shutdown()
    thread.join(5)
    db.dispose()
    broker.stop()


def _wait_done(page, timeout: float = 300.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = page.get_attribute("#train-job", "data-state")  # the page reloads itself every 2 s
        if state != "running":
            return state
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.5)


def test_retrain_now_shows_progress_and_result(browser, site, tmp_path):
    folder, page = screenshot_page(browser, tmp_path, "training", 30_000)
    base = site["base"]
    sign_in_owner(page, base)
    page.click("#train-now")
    page.wait_for_url(base + "/train/job")
    assert page.get_attribute("#train-job", "data-state") == "running"
    assert page.locator("#train-progress").count() == 1
    numbers = page.inner_text("#train-numbers")
    assert "step" in numbers and "first run: no estimate yet" in numbers
    page.screenshot(path=str(folder / "01-training.png"), full_page=True)
    assert _wait_done(page) == "done", page.inner_text("#train-job")
    result = page.inner_text("#train-result")
    with site["db"].sessions() as s:
        menus = s.scalar(select(func.count()).select_from(Menu))
        version = s.scalar(select(ModelVersion.version))
    assert menus > 100 and version in result and f"{menus:,} menus" in result
    assert "menu messages sent to 1 store(s)" in result
    steps = page.inner_text("#train-steps")
    assert "Learning tastes (LightFM)" in steps and "Writing menus" in steps and "Sending menus to the stores" in steps
    assert page.get_attribute("#train-progress", "value") == "100"
    page.screenshot(path=str(folder / "02-trained.png"), full_page=True)

    page.goto(base + "/")  # the second run is estimated from the first
    assert "details" in page.inner_text("#training")
    page.click("#train-now")
    page.wait_for_url(base + "/train/job")
    numbers = page.inner_text("#train-numbers")  # estimated from the first run: "about N s left", or past it
    assert ("left" in numbers or "taking longer than last time" in numbers
            or page.get_attribute("#train-job", "data-state") != "running"), numbers
    assert _wait_done(page) == "done"
    page.context.close()
