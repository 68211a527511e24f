"""The Stores page in headless Chromium shows what the cloud refused from each device (issue 9): the count
per device, the dead letters, and the erasure a device asked for, which only an owner's confirmation executes."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.events import Outcome, handle_message
from dangol_cloud.models import Customer, Erasure, ErasureRequest, utcnow
from dangol_cloud.settings import Settings
from tests.broker import free_port
from tests.browser import chromium_missing

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, add_owner
from .test_device_trust import Chain


@pytest.fixture
def site(tmp_path):
    if (msg := chromium_missing()):
        pytest.fail(msg, pytrace=False)
    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    chain = Chain(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="trust-page", _env_file=None)
    server = make_server("127.0.0.1", free_port(), create_app(settings, db=db), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{server.server_port}", "db": db, "chain": chain}
    server.shutdown()
    thread.join(5)
    db.dispose()


def _event(cls, device_id, **fields) -> bytes:
    return proto.dump_payload(cls(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utcnow(), **fields))


def test_stores_page_shows_refusals_dead_letters_and_device_erasure_requests(site, browser):
    db, chain = site["db"], site["chain"]
    mina = uuid.UUID(chain.mina)
    topic_b, topic_a = proto.events_topic(chain.device_b), proto.events_topic(chain.device_a)
    assert handle_message(db, topic_b, _event(proto.ErasureDoneEvent, chain.device_b, customer_ids=[mina])) \
        is Outcome.REFUSED
    assert handle_message(db, topic_b, b"[" * 60_000) is Outcome.INVALID
    assert handle_message(db, topic_a, _event(proto.ErasureDoneEvent, chain.device_a, customer_ids=[mina])) \
        is Outcome.STORED  # erased on store A's staff page: a request, nothing erased yet
    with db.sessions() as s:
        assert s.get(Customer, chain.mina) is not None

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(10_000)
    page.goto(site["base"] + "/login")
    page.fill("input[name=email]", OWNER_EMAIL)
    page.fill("input[name=password]", OWNER_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(site["base"] + "/")
    page.goto(site["base"] + "/stores/")
    row_b = page.locator("tr", has_text="device-harbour")  # the device's row (MQTT user column)
    assert "1 refused · 1 dead letters" in row_b.inner_text()
    assert "invalid: JSON nested deeper than 16 levels" in row_b.inner_text()  # the last reason
    letters = page.inner_text("#dead-letters")
    assert "not a customer of this device's store" in letters and "JSON nested deeper than 16 levels" in letters
    requests = page.locator("#erasure-requests")
    assert chain.mina in requests.inner_text() and "Front door" in requests.inner_text()

    requests.locator("button", has_text="Erase everywhere").click()
    page.fill("input[name=confirm]", "ERASE")
    page.click("#confirm-button")
    assert "Erased everywhere" in page.inner_text(".flash")
    with db.sessions() as s:
        assert s.get(Customer, chain.mina) is None
        assert s.scalar(select(ErasureRequest.status)) == "confirmed"
        erasure = s.scalar(select(Erasure))
        assert erasure.requested_by == OWNER_EMAIL and chain.device_a in erasure.confirmed_by
    page.context.close()
