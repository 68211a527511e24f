"""Review R6 (dec 7b): what the dashboard says must stay true.

1. The owner's "Background work since the service started" line for a retrying worker shows only while customers
   still wait (or some were dropped): a first menu that failed once and then reached the stores is no longer a
   warning (it stayed until the service restarted).
2. The busy page does not claim "Nothing was saved" (a sign-in, or consent committed before the first menu).
3. Consent recorded, then the first menu's write hits a busy database: the page says consent was recorded, the
   menu is handed to the welcomer, and the flash names no broker address or errno (the log has them)."""

from __future__ import annotations

import time
import uuid

import pytest

from dangol_cloud import background
from dangol_cloud.background import MenuRepublisher
from dangol_cloud.models import AuditEntry, Customer
from dangol_cloud.mqtt import MqttError
from dangol_cloud.web import customers as customers_page

from .conftest import OWNER_EMAIL, OWNER_PASSWORD, add_owner, add_store_and_device, sqlite_write_lock_held
from .test_background_outcomes_dec7b import CONSENT, _enrol
from .test_cloud_web import csrf_of, sign_in, web  # noqa: F401 - the fixture


def _wait(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_a_first_menu_that_failed_once_and_then_arrived_is_no_longer_a_warning(web):  # noqa: F811
    app, _db = web
    calls = []

    def publish(ids):
        calls.append(list(ids))
        if len(calls) == 1:
            raise OSError("broker down")
        return len(ids)

    worker = MenuRepublisher(publish, retry_seconds=0.2, max_pending=10, what="first menus")
    app.extensions["dangol_welcomer"] = worker
    try:
        worker.submit("11111111-1111-1111-1111-111111111111")
        assert _wait(lambda: worker.published == 1 and worker.waiting() == 0)
        assert worker.failures == 1
        client = app.test_client()
        sign_in(client)
        page = client.get("/").get_data(as_text=True)
        assert "first menus of new regulars (dashboard)" not in page, page
        assert 'data-background-warning="counters"' not in page
    finally:
        worker.stop()


def test_a_first_menu_still_waiting_or_dropped_is_a_warning(web):  # noqa: F811
    app, _db = web
    worker = MenuRepublisher(lambda ids: (_ for _ in ()).throw(OSError("broker down")), retry_seconds=30,
                             max_pending=1, what="first menus")
    app.extensions["dangol_welcomer"] = worker
    try:
        worker.submit("a")
        assert _wait(lambda: worker.failures == 1)
        worker.submit("b")  # one is waiting already: dropped
        client = app.test_client()
        sign_in(client)
        page = client.get("/").get_data(as_text=True)
        assert "first menus of new regulars (dashboard): 1 failed attempt(s), 1 customer(s) still waiting, " \
               "1 dropped" in page, page
    finally:
        worker.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_sign_in_while_the_database_is_busy_does_not_claim_nothing_was_saved(db, db_url, settings):
    from dangol_cloud.app import create_app

    add_owner(db)
    client = create_app(settings, db=db, WTF_CSRF_ENABLED=False).test_client()
    with sqlite_write_lock_held(db):  # the sign-in records the login: a write
        page = client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD})
    text = page.get_data(as_text=True)
    assert page.status_code == 503, text[:300]
    assert "Nothing was saved" not in text and "This could not be finished" in text, text
    assert "busy with another write" in text


def test_consent_saved_then_a_busy_database_hands_the_first_menu_to_the_welcomer(web, monkeypatch):  # noqa: F811
    app, db = web
    _, device_id = add_store_and_device(db)
    cid = str(uuid.uuid4())
    _enrol(db, device_id, cid)
    real_welcome = customers_page.welcome
    busy = [True]

    def welcome_while_an_import_writes(db_, settings, ids):
        """The first menu's write meets another process's write lock (the consent is committed by now)."""
        if busy[0]:
            busy[0] = False
            with sqlite_write_lock_held(db_):
                with db_.transaction() as s:
                    s.add(AuditEntry(actor="welcome", action="menu-written", detail="first menu"))
        return real_welcome(db_, settings, ids)

    monkeypatch.setattr(customers_page, "welcome", welcome_while_an_import_writes)
    monkeypatch.setattr(background, "WELCOME_RETRY_SECONDS", 0.2)
    handed: list = []
    retrier = background.welcomer(app)
    real_submit = retrier.submit
    monkeypatch.setattr(retrier, "submit", lambda ids: (handed.append(ids), real_submit(ids)))
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get(f"/customers/{cid}").get_data(as_text=True))
    r = client.post(f"/customers/{cid}/consent", data={"csrf_token": token, "display_name": "Mina", **CONSENT},
                    follow_redirects=True)
    text = r.get_data(as_text=True)
    try:
        assert r.status_code == 200, text[:500]
        assert "Nothing was saved" not in text
        assert "Consent recorded" in text and "not sent yet" in text, text
        assert "database is locked" not in text
        with db.sessions() as s:
            assert s.get(Customer, cid).status == "active"
        assert handed == [cid]  # the welcomer writes it once the database is free
        assert _wait(lambda: retrier.waiting() == 0)
    finally:
        worker = app.extensions.get("dangol_welcomer")
        worker and worker.stop()


def test_the_consent_flash_names_no_broker_address(web, monkeypatch, caplog):  # noqa: F811
    app, db = web
    _, device_id = add_store_and_device(db)
    cid = str(uuid.uuid4())
    _enrol(db, device_id, cid)

    def broker_down(db_, settings, ids):
        raise MqttError("MQTT broker 127.0.0.1:40345 unreachable: [Errno 111] Connection refused")

    monkeypatch.setattr(customers_page, "welcome", broker_down)
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get(f"/customers/{cid}").get_data(as_text=True))
    try:
        text = client.post(f"/customers/{cid}/consent", data={"csrf_token": token, "display_name": "Mina",
                                                               **CONSENT}, follow_redirects=True).get_data(as_text=True)
        assert "not sent yet" in text and "the stores could not be reached" in text, text
        assert "127.0.0.1" not in text and "Errno" not in text
        assert "127.0.0.1:40345" in caplog.text  # the detail is in the log
    finally:
        worker = app.extensions.get("dangol_welcomer")
        worker and worker.stop()
