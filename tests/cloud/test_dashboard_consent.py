"""Issue 10, item 3 (cloud side): the dashboard's consent form records consent through the service layer —
:func:`dangol_cloud.services.record_consent`, then :func:`dangol_cloud.services.welcome` once committed — exactly
as the MQTT listener does for a device's ``enrolment`` event, so both leave the same customer record and the
same audit entry. Real SQLite, the real listener entry point (:func:`dangol_cloud.events.handle_message`)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud import services
from dangol_cloud.events import Outcome, handle_message
from dangol_cloud.models import AuditEntry, Customer, utcnow
from dangol_cloud.web import customers as customers_page

from .conftest import add_store_and_device
from .test_cloud_web import OWNER_EMAIL, csrf_of, sign_in, web  # noqa: F401 - the fixture

CONSENT = {"recorded_by": "staff:jo", "text_version": "2026-01"}


def _send(db, device_id: str, **fields) -> None:
    event = proto.EnrolmentEvent(event_id=proto.new_event_id(), device_id=uuid.UUID(device_id), ts=utcnow(), **fields)
    assert handle_message(db, proto.events_topic(device_id), proto.dump_payload(event)) is Outcome.STORED


def _record(db, customer_id: str) -> tuple:
    with db.sessions() as s:
        c = s.get(Customer, customer_id)
        audits = s.execute(select(AuditEntry.action, AuditEntry.detail, AuditEntry.actor, AuditEntry.device_id)
                           .where(AuditEntry.customer_id == customer_id).order_by(AuditEntry.id)).all()
        return (c.display_name, c.status, c.consent_by, c.consent_text_version, c.consent_at is not None), audits


@pytest.fixture
def spied(monkeypatch):
    """The dashboard's calls of the two services (the real functions still run)."""
    calls: list[tuple] = []
    real_record, real_welcome = services.record_consent, services.welcome

    def record(session, customer, **kw):
        calls.append(("record_consent", customer.id, kw))
        return real_record(session, customer, **kw)

    def welcome(db, settings, customer_ids):
        with db.sessions() as s:  # called after the commit: the customer is already active for everyone
            calls.append(("welcome", list(customer_ids), [s.get(Customer, c).status for c in customer_ids]))
        return real_welcome(db, settings, customer_ids)

    monkeypatch.setattr(customers_page, "record_consent", record)  # raising=True: the page must use the service
    monkeypatch.setattr(customers_page, "welcome", welcome)
    return calls


def test_the_dashboard_records_consent_as_the_listener_does(web, spied):  # noqa: F811
    app, db = web
    _, device_id = add_store_and_device(db)
    by_device, by_form = str(uuid.uuid4()), str(uuid.uuid4())
    for cid in (by_device, by_form):  # two sign-ups at the same door, both pending
        _send(db, device_id, customer_id=uuid.UUID(cid), status="pending", short_code="1234")
    # one activated at the door (the listener's path) ...
    _send(db, device_id, customer_id=uuid.UUID(by_device), status="active", display_name="Mina Park",
          consent=proto.Consent(recorded_at=utcnow(), **CONSENT))
    # ... the other on the dashboard's consent form
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get(f"/customers/{by_form}").get_data(as_text=True))
    r = client.post(f"/customers/{by_form}/consent", data={"csrf_token": token, "display_name": " Mina  Park ",
                                                           **CONSENT})
    assert r.status_code == 302

    assert [c[0] for c in spied] == ["record_consent", "welcome"]
    assert spied[0][1] == by_form and spied[0][2]["actor"] == OWNER_EMAIL
    assert spied[1][1:] == ([by_form], ["active"])
    device_fields, device_audit = _record(db, by_device)
    form_fields, form_audit = _record(db, by_form)
    assert form_fields == device_fields == ("Mina Park", "active", "staff:jo", "2026-01", True)
    # the same audit entry; only who recorded it differs (the device, or the signed-in user)
    assert [(a.action, a.detail) for a in form_audit] == [(a.action, a.detail) for a in device_audit] == \
        [("consent-recorded", "text version 2026-01")]
    assert (device_audit[0].actor, device_audit[0].device_id) == (f"device:{device_id}", device_id)
    assert (form_audit[0].actor, form_audit[0].device_id) == (OWNER_EMAIL, None)


def test_an_incomplete_form_records_nothing(web, spied):  # noqa: F811
    app, db = web
    _, device_id = add_store_and_device(db)
    cid = str(uuid.uuid4())
    _send(db, device_id, customer_id=uuid.UUID(cid), status="pending", short_code="1234")
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get(f"/customers/{cid}").get_data(as_text=True))
    r = client.post(f"/customers/{cid}/consent", data={"csrf_token": token, "display_name": "Mina",
                                                       "recorded_by": "", "text_version": "2026-01"})
    assert r.status_code == 302 and spied == []
    assert _record(db, cid) == ((None, "pending", None, None, False), [])


def test_the_first_menu_is_the_one_the_listener_path_sends(web, spied, ta_feng_slice):  # noqa: F811
    """With a trained model (3,000 real Ta-Feng lines), a regular activated on the form gets the same first
    menu (newest model, cold-start picks for a door sign-up) as one activated at the door and welcomed by
    the listener's ``on_activated`` (:func:`dangol_cloud.services.welcome`)."""
    from dangol_cloud.app import get_settings
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows
    from dangol_cloud.models import Menu, ModelVersion
    from dangol_cloud.training import train_from_database

    app, db = web
    with app.app_context():
        settings = get_settings()
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    train_from_database(db, settings)
    _, device_id = add_store_and_device(db)
    by_device, by_form = str(uuid.uuid4()), str(uuid.uuid4())
    for cid in (by_device, by_form):
        _send(db, device_id, customer_id=uuid.UUID(cid), status="pending", short_code="1234")
    _send(db, device_id, customer_id=uuid.UUID(by_device), status="active", display_name="Mina Park",
          consent=proto.Consent(recorded_at=utcnow(), **CONSENT))
    services.welcome(db, settings, [by_device])  # what the listener's on_activated does
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get(f"/customers/{by_form}").get_data(as_text=True))
    client.post(f"/customers/{by_form}/consent", data={"csrf_token": token, "display_name": "Hana", **CONSENT})
    assert [c[0] for c in spied] == ["record_consent", "welcome"]
    with db.sessions() as s:
        latest = s.scalar(select(ModelVersion.version))
        door, form = s.get(Menu, by_device), s.get(Menu, by_form)
        assert door is not None and form is not None and door.picks  # not an empty list compared with itself
        assert form.model_version == door.model_version == latest
        assert form.picks == door.picks
