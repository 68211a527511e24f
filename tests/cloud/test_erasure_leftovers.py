"""Copies of an erased customer outside the customer tables (privacy review), on SQLite and PostgreSQL:

1. ``pos_requests`` (the POS API's idempotency table: store, Idempotency-Key, time, and the response naming the
   customer and purchase ids): an erasure and a retention sweep delete the rows naming the erased customers, and the
   sweep deletes every row older than the idempotency window (:data:`~dangol_cloud.erasure.POS_REQUEST_DAYS`);
2. an arrival naming an erased customer (made before the erasure reached the box, delivered after it) or a customer
   whose consent was withdrawn is stored already scrubbed, as the erasure's scrub leaves an event, and its visit is
   anonymous.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.erasure import POS_REQUEST_DAYS, erase_customer, run_retention
from dangol_cloud.events import Outcome, handle_message
from dangol_cloud.models import (AuditEntry, CatalogueItem, Customer, DeviceEvent, PosRequest, Purchase, Visit,
                                 utcnow)

from .conftest import STORE_TOKEN, add_store_and_device


# --- 1. pos_requests ------------------------------------------------------------------------------------
def _sale(client, customer: str, key: str):
    body = {"customer": customer, "ts": "2026-01-05T08:31:00+01:00", "lines": [{"item": "flat-white", "amount": 3.6}]}
    return client.post("/api/v1/purchases", data=json.dumps(body), headers={
        "Content-Type": "application/json", "Idempotency-Key": key, "Authorization": f"Bearer {STORE_TOKEN}"})


def _pos_rows(db) -> dict[str, dict]:
    with db.sessions() as s:
        return {key: response for key, response in s.execute(select(PosRequest.key, PosRequest.response))}


def test_erasure_deletes_the_pos_requests_naming_the_customer(db, settings):
    add_store_and_device(db)
    with db.transaction() as s:
        s.add(CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[]))
    client = create_app(settings, db=db, TESTING=True).test_client()
    for n in range(3):
        assert _sale(client, "loyalty-1042", f"receipt-{n}").status_code == 201
    erased = _sale(client, "loyalty-1042", "receipt-3").json["customer_id"]
    assert _sale(client, "loyalty-7", "receipt-4").status_code == 201
    with db.transaction() as s:
        erase_customer(s, erased, actor="owner@cafe.example")
    rows = _pos_rows(db)
    assert list(rows) == ["receipt-4"], "the erased customer's sales are still in pos_requests"
    assert erased not in json.dumps(rows)
    replay = _sale(client, "loyalty-7", "receipt-4")  # the other customer's retry is still answered from the table
    assert (replay.status_code, replay.headers.get("Idempotent-Replayed")) == (200, "true")


def test_retention_deletes_erased_customers_and_expired_pos_requests(db):
    store_id, _ = add_store_and_device(db)
    now = utcnow()
    stale, regular = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction() as s:
        s.add_all([Customer(id=stale, status="active", source="pos", created_at=now - timedelta(days=400)),
                   Customer(id=regular, status="active", source="pos", created_at=now)])
        for key, customer_id, age in (("stale-sale", stale, 1), ("expired", regular, POS_REQUEST_DAYS + 1),
                                      ("recent", regular, POS_REQUEST_DAYS - 1)):
            s.add(PosRequest(store_id=store_id, key=key, body_sha256="0" * 64, created_at=now - timedelta(days=age),
                             response={"customer_id": customer_id, "purchase_ids": [1], "lines": 1}))
    with db.transaction() as s:
        assert run_retention(s, 365) == [stale]
    assert list(_pos_rows(db)) == ["recent"]
    with db.sessions() as s:
        detail = s.scalar(select(AuditEntry.detail).where(AuditEntry.action == "retention-run"))
    assert "POS requests deleted: 2" in detail and detail.endswith("erased 1")


def test_a_retry_after_the_idempotency_window_is_refused_not_stored_twice(db, settings):
    """A till retrying a sale whose pos_requests row the sweep deleted (older than the window): its purchases are
    still stored, so the key is known; the answer is a 422 problem naming the key (as for a key reused with another body), not a 500 nor a second sale."""
    add_store_and_device(db)
    with db.transaction() as s:
        s.add(CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[]))
    client = create_app(settings, db=db, TESTING=True).test_client()
    assert _sale(client, "loyalty-1042", "receipt-9").status_code == 201
    with db.transaction() as s:
        for row in s.scalars(select(PosRequest)):
            row.created_at = utcnow() - timedelta(days=POS_REQUEST_DAYS + 1)
    with db.transaction() as s:
        run_retention(s, 365)
    assert _pos_rows(db) == {}
    retry = _sale(client, "loyalty-1042", "receipt-9")
    assert retry.status_code == 422, retry.get_data(as_text=True)
    assert retry.mimetype == "application/problem+json" and "receipt-9" in retry.json["detail"]
    with db.sessions() as s:
        assert len(s.scalars(select(Purchase)).all()) == 1


# --- 2. arrivals naming an erased customer ------------------------------------------------------------------
def _send(device_id: str, db, event) -> Outcome:
    return handle_message(db, proto.events_topic(device_id), proto.dump_payload(event))


def _enrol(db, device_id: str) -> str:
    customer_id, now = str(uuid.uuid4()), utcnow()
    event = proto.EnrolmentEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=now,
                                 customer_id=uuid.UUID(customer_id), status="active", display_name="Mina",
                                 consent=proto.Consent(recorded_by="jo", recorded_at=now, text_version="2026-01"))
    assert _send(device_id, db, event) is Outcome.STORED
    return customer_id


def _arrival(device_id: str, customer_id: str) -> proto.ArrivalEvent:
    return proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utcnow() - timedelta(minutes=5),
                              customer_id=uuid.UUID(customer_id), confidence=0.93, shown_items=["latte", "scone"])


def _stored(db, event) -> tuple[dict, str | None]:
    """The stored payload of ``event`` and the customer of its visit."""
    with db.sessions() as s:
        return (s.get(DeviceEvent, str(event.event_id)).payload,
                s.scalar(select(Visit.customer_id).where(Visit.event_id == str(event.event_id))))


def test_an_arrival_delivered_after_the_erasure_is_stored_scrubbed(db):
    _store, device = add_store_and_device(db)
    customer_id = _enrol(db, device)
    before, late = _arrival(device, customer_id), _arrival(device, customer_id)
    assert _send(device, db, before) is Outcome.STORED
    with db.transaction() as s:
        erase_customer(s, customer_id, actor="owner@cafe.example")  # scrubs ``before``
    assert _send(device, db, late) is Outcome.STORED  # in flight, or flushed from the box's outbox on reconnect
    payload, visitor = _stored(db, late)
    assert customer_id not in json.dumps(payload), payload
    assert payload.get("scrubbed") is True and not {"confidence", "shown_items"} & set(payload)
    assert set(payload) == set(_stored(db, before)[0])  # what the erasure's scrub keeps, no more
    assert payload["event_id"] == str(late.event_id) and visitor is None


def test_an_arrival_of_a_customer_who_withdrew_consent_is_stored_scrubbed(db):
    from dangol_cloud.web.customers import withdraw_consent

    _store, device = add_store_and_device(db)
    customer_id, regular = _enrol(db, device), _enrol(db, device)
    with db.transaction() as s:
        withdraw_consent(s, s.get(Customer, customer_id), actor="owner@cafe.example")
    late, seen = _arrival(device, customer_id), _arrival(device, regular)
    assert _send(device, db, late) is Outcome.STORED and _send(device, db, seen) is Outcome.STORED
    payload, visitor = _stored(db, late)
    assert payload.get("scrubbed") is True and customer_id not in json.dumps(payload) and visitor is None
    payload, visitor = _stored(db, seen)  # a regular's arrival is kept whole and linked
    assert (payload["customer_id"], payload["confidence"], visitor) == (regular, 0.93, regular)
