"""Property-based tests (Hypothesis) of the cloud's MQTT consumer: any payload on a device's events or status
topic is stored whole, refused (invalid, or outside the device's rights: dead-lettered) with nothing else
written, or recognised as a duplicate — never an exception, never a half-applied event."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.db import Database
from dangol_cloud.events import Outcome, handle_message
from dangol_cloud.models import AuditEntry, Customer, DeviceEvent, Erasure, Visit

from .conftest import DEV_KEY_BYTES, _postgres_schema_url, add_store_and_device

TABLES = (Customer, DeviceEvent, Visit, Erasure, AuditEntry)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def device_db(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('events') / 'cloud.sqlite'}"
    else:
        url = _postgres_schema_url(request)
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    _, device_id = add_store_and_device(db)
    yield db, device_id
    db.dispose()


def _counts(db) -> tuple[int, ...]:
    with db.sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in TABLES)


UUIDS = st.one_of(st.uuids().map(str), st.text(max_size=40))
TIMES = st.one_of(st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat()), st.text(max_size=30),
                  st.integers())
TEXT = st.one_of(st.none(), st.text(max_size=150), st.integers())


NAMES = st.text(max_size=120)  # any Unicode, NUL included


def _valid_events(device_id: str):
    """Well-formed events (often stored), sometimes with one field replaced by garbage."""
    recent = st.integers(-3 * 365 * 86400, 600).map(lambda s: datetime.now(timezone.utc) + timedelta(seconds=s))
    dev, now = uuid.UUID(device_id), st.one_of(recent, st.datetimes(timezones=st.just(timezone.utc)))
    consent = st.builds(proto.Consent, recorded_by=st.text(max_size=119).map("s".__add__), recorded_at=now,
                        text_version=st.text(max_size=39).map("v".__add__))  # non-empty after stripping
    events = st.one_of(
        st.builds(proto.ArrivalEvent, event_id=st.uuids(), device_id=st.just(dev), ts=now,
                  customer_id=st.one_of(st.none(), st.uuids()), confidence=st.one_of(st.none(), st.floats(0, 1))),
        st.builds(proto.EnrolmentEvent, event_id=st.uuids(), device_id=st.just(dev), ts=now, customer_id=st.uuids(),
                  status=st.sampled_from(["pending", "active"]), display_name=st.one_of(st.none(), NAMES),
                  consent=st.one_of(st.none(), consent)),
        st.builds(proto.ErasureDoneEvent, event_id=st.uuids(), device_id=st.just(dev), ts=now,
                  erasure_id=st.one_of(st.none(), st.uuids()), customer_ids=st.lists(st.uuids(), min_size=1, max_size=3)))

    def mutate(event, key, junk):
        body = json.loads(proto.dump_payload(event))
        if key is not None:
            body[sorted(body)[key % len(body)]] = junk
        return json.dumps(body).encode()

    return st.builds(mutate, events, st.one_of(st.none(), st.none(), st.integers(0, 20)), TEXT)


def _events(device_id: str):
    consent = st.one_of(st.none(), st.fixed_dictionaries({"recorded_by": TEXT, "recorded_at": TIMES,
                                                          "text_version": TEXT}))
    return st.fixed_dictionaries(
        {"schema": st.sampled_from(["event/1", "event/2", "status/1"]),
         "kind": st.sampled_from(["arrival", "enrolment", "erasure-done", "party"]),
         "event_id": UUIDS, "device_id": st.one_of(st.just(device_id), UUIDS), "ts": TIMES},
        optional={"customer_id": st.one_of(st.none(), UUIDS), "confidence": st.one_of(st.floats(), st.none()),
                  "shown_items": st.lists(st.text(max_size=10), max_size=3), "status": st.sampled_from(["pending", "active", "x"]),
                  "display_name": TEXT, "consent": consent, "erasure_id": st.one_of(st.none(), UUIDS),
                  "customer_ids": st.lists(UUIDS, max_size=3), "extra": TEXT})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_event_payload_is_stored_whole_or_changes_nothing(device_db, data):
    db, device_id = device_db
    raw = data.draw(st.one_of(_valid_events(device_id), _events(device_id).map(lambda d: json.dumps(d).encode()),
                              st.binary(max_size=200)))
    topic = data.draw(st.sampled_from([proto.events_topic(device_id), proto.status_topic(device_id)]))
    before = _counts(db)
    outcome = handle_message(db, topic, raw)
    event(outcome.value)
    after = _counts(db)
    if outcome in (Outcome.INVALID, Outcome.REFUSED, Outcome.DUPLICATE, Outcome.IGNORED, Outcome.UNKNOWN_DEVICE):
        assert after == before
    else:
        assert outcome is Outcome.STORED
        assert topic.endswith("/status") or after[1] == before[1] + 1  # the event row is there ...
        if not topic.endswith("/status"):
            parsed = proto.parse_payload(topic, raw)  # ... and it was valid as a whole
            assert str(parsed.event_id) in _event_ids(db)


def _event_ids(db) -> set[str]:
    with db.sessions() as s:
        return set(s.scalars(select(DeviceEvent.event_id)))


@pytest.mark.parametrize("field", ["display_name", "text_version", "recorded_by"])
def test_nul_in_an_enrolment_is_refused_not_a_database_error(device_db, field):
    """PostgreSQL text cannot hold NUL: such an event must be dropped as invalid, not raise (a raising message
    is never acknowledged and would be redelivered forever)."""
    db, device_id = device_db
    consent = {"recorded_by": "staff:jo", "recorded_at": "2026-01-02T09:00:00+00:00", "text_version": "2026-01"}
    body = {"schema": "event/1", "kind": "enrolment", "event_id": str(uuid.uuid4()), "device_id": device_id,
            "ts": "2026-01-02T09:00:00+00:00", "customer_id": str(uuid.uuid4()), "status": "active",
            "display_name": "Mina", "consent": consent}
    if field == "display_name":
        body["display_name"] = "Mi\u0000na"
    else:
        consent[field] = "x\u0000y"
    before = _counts(db)
    assert handle_message(db, proto.events_topic(device_id), json.dumps(body).encode()) is Outcome.INVALID
    assert _counts(db) == before
