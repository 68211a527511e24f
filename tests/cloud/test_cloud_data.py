"""Data layer on SQLite and PostgreSQL: migrations, bulk import, idempotency, device events."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, inspect, select

import dangol_protocol as proto
from dangol_cloud.db import Database
from dangol_cloud.events import Outcome, handle_message
from dangol_cloud.importers import ImportFormatError, parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, Customer, Device, DeviceEvent, Purchase, Visit, external_ref_hash

from .conftest import utc


def counts(db: Database) -> dict[str, int]:
    """Row counts of every table that input could change."""
    with db.sessions() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                for m in (Purchase, Customer, CatalogueItem, Visit, DeviceEvent)}


def test_migrations_create_the_schema_and_are_idempotent(db):
    tables = set(inspect(db.engine).get_table_names())
    assert {"stores", "devices", "catalogue_items", "catalogue_versions", "customers", "purchases", "visits",
            "menus", "model_versions", "users", "erasures", "pos_requests", "alembic_version"} <= tables
    db.migrate()  # second upgrade head is a no-op
    uniques = {tuple(u["column_names"]) for u in inspect(db.engine).get_unique_constraints("purchases")}
    indexes = {tuple(i["column_names"]) for i in inspect(db.engine).get_indexes("purchases") if i["unique"]}
    assert ("idempotency_key",) in uniques | indexes


def test_real_ta_feng_slice_imports_once(db, ta_feng_slice):
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    assert report.rows == 3000 and report.inserted == 3000 and not report.errors
    with db.sessions() as s:
        # Ta-Feng keeps leading zeros in customer ids; the menu item is PRODUCT_SUBCLASS
        ref_hash = external_ref_hash(s, "01607000")  # the ref itself is encrypted: found by its keyed hash
        customer = s.scalar(select(Customer).where(Customer.external_ref_hash == ref_hash))
        assert customer is not None and customer.external_ref == "01607000"
        first = s.execute(select(Purchase, CatalogueItem).join(CatalogueItem).join(Customer)
                          .where(Customer.external_ref_hash == ref_hash, CatalogueItem.ref == "520503")).first()
        assert first is not None and first[0].product_id == "4712936888817"
        assert first[0].ts == utc(2000, 11, 1)
        assert first[1].price is not None and first[1].price > 0     # average unit price from the data
        n_customers = s.scalar(select(func.count()).select_from(Customer))
    assert report.customers_created == n_customers
    before = counts(db)
    with db.transaction() as s:  # the same file again adds nothing
        again = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    assert again.inserted == 0 and again.duplicates == 3000
    assert counts(db) == before


def test_bad_csv_rows_are_reported_by_line_and_skipped(db, tmp_path):
    path = tmp_path / "pos.csv"
    path.write_text("customer,item,quantity,timestamp,amount\n"
                    "c1,Flat white,1,2026-01-05T08:30:00,3.6\n"
                    "c1,Croissant,two,2026-01-05T08:31:00,2.5\n"       # line 3: bad quantity
                    ",Flat white,1,2026-01-05T09:00:00,3.6\n"          # line 4: no customer
                    "c2,Flat white,1,not-a-time,3.6\n"                 # line 5: bad timestamp
                    "c2,Croissant,1,2026-01-06T10:00:00,2.5\n")
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv")
    assert [e.line for e in report.errors] == [3, 4, 5]
    assert "quantity" in report.errors[0].message and "two" in report.errors[0].raw
    assert report.inserted == 2
    with db.sessions() as s:
        assert sorted(s.scalars(select(CatalogueItem.name))) == ["Croissant", "Flat white"]
        assert s.scalar(select(func.count()).select_from(Purchase)) == 2


def test_a_broken_file_imports_nothing(db, tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("who,what\nx,y\n")
    with pytest.raises(ImportFormatError, match="wrong.csv"):
        with db.transaction() as s:
            import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv")
    assert counts(db) == {k: 0 for k in counts(db)}


def test_failure_mid_import_rolls_back_every_batch(db, ta_feng_slice):
    def rows_then_crash():
        for n, row in enumerate(parse_purchases(ta_feng_slice, "ta-feng")):
            if n == 2500:
                raise OSError("disk went away")
            yield row

    with pytest.raises(OSError):
        with db.transaction() as s:
            import_rows(s, rows_then_crash(), source="ta-feng", key_prefix="ta-feng", batch_size=500)
    assert counts(db) == {k: 0 for k in counts(db)}


# --- device events (the MQTT consumer's handler) ---------------------------------------------------------
def _arrival(device_id: str, customer_id: str | None = None, event_id: uuid.UUID | None = None) -> bytes:
    return proto.dump_payload(proto.ArrivalEvent(event_id=event_id or uuid.uuid4(), device_id=uuid.UUID(device_id),
                                                 ts=utc(2026, 1, 5, 8, 30), customer_id=customer_id,
                                                 confidence=0.91 if customer_id else None, shown_items=["x"]))


def _enrol(device_id: str, customer_id: uuid.UUID, status="active") -> bytes:
    consent = proto.Consent(recorded_by="staff:jo", recorded_at=utc(2026, 1, 5, 8), text_version="2026-01")
    return proto.dump_payload(proto.EnrolmentEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id),
                                                   ts=utc(2026, 1, 5, 8), customer_id=customer_id, status=status,
                                                   display_name="Mina", consent=consent if status == "active" else None))


def test_arrival_replayed_is_recorded_once(db, store_device):
    store_id, device_id = store_device
    customer = uuid.uuid4()
    assert handle_message(db, proto.events_topic(device_id), _enrol(device_id, customer)) is Outcome.STORED
    payload = _arrival(device_id, str(customer))
    assert handle_message(db, proto.events_topic(device_id), payload) is Outcome.STORED
    assert handle_message(db, proto.events_topic(device_id), payload) is Outcome.DUPLICATE
    with db.sessions() as s:
        visits = s.scalars(select(Visit)).all()
        assert len(visits) == 1
        assert visits[0].customer_id == str(customer) and visits[0].store_id == store_id
        assert visits[0].shown_items == ["x"] and visits[0].confidence == pytest.approx(0.91)
        mina = s.get(Customer, str(customer))
        assert mina.status == "active" and mina.display_name == "Mina" and mina.consent_text_version == "2026-01"


def test_unknown_arrival_counts_as_visit_without_customer(db, store_device):
    _, device_id = store_device
    assert handle_message(db, proto.events_topic(device_id), _arrival(device_id)) is Outcome.STORED
    with db.sessions() as s:
        assert s.scalar(select(Visit.customer_id)) is None


@pytest.mark.parametrize("mutate", [
    lambda d: {**d, "schema": "event/9"},
    lambda d: {**d, "kind": "teleport"},
    lambda d: {**d, "event_id": "not-a-uuid"},
    lambda d: {**d, "confidence": 3},
    lambda d: {k: v for k, v in d.items() if k != "ts"},
    lambda d: "[]",
])
def test_malformed_event_changes_nothing(db, store_device, mutate, caplog):
    _, device_id = store_device
    data = json.loads(_arrival(device_id))
    mutated = mutate(data)
    raw = mutated.encode() if isinstance(mutated, str) else json.dumps(mutated).encode()
    before = counts(db)
    topic = proto.events_topic(device_id)
    assert handle_message(db, topic, raw) is Outcome.INVALID
    assert counts(db) == before
    assert topic in caplog.text and "invalid payload" in caplog.text


def test_event_from_unknown_device_or_spoofed_topic_is_dropped(db, store_device):
    _, device_id = store_device
    stranger = str(uuid.uuid4())
    assert handle_message(db, proto.events_topic(stranger), _arrival(stranger)) is Outcome.UNKNOWN_DEVICE
    # a device publishing an event that names another device on its own topic
    assert handle_message(db, proto.events_topic(device_id), _arrival(stranger)) is Outcome.INVALID
    assert counts(db)["visits"] == 0


def test_status_and_last_will_update_the_device(db, store_device):
    _, device_id = store_device
    topic = proto.status_topic(device_id)
    online = proto.Status(device_id=uuid.UUID(device_id), state="online", ts=utc(2026, 1, 5, 8),
                          health=proto.Health(camera="ok", fps=8.5, gallery_size=12, queue_depth=3))
    assert handle_message(db, topic, proto.dump_payload(online)) is Outcome.STORED
    will = proto.Status(device_id=uuid.UUID(device_id), state="offline")
    assert handle_message(db, topic, proto.dump_payload(will)) is Outcome.STORED
    with db.sessions() as s:
        device = s.get(Device, device_id)
        assert device.state == "offline" and device.health["gallery_size"] == 12
        # the time the cloud received the last report, not the door's clock (docs/mqtt.md, device_status)
        assert device.status_at > utc(2026, 1, 5, 8)


def test_migrations_match_the_orm_model(db):
    """The shipped Alembic migrations produce exactly the tables the ORM declares (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from dangol_cloud.models import Base

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
