"""Regression tests of the privacy review: a device cannot re-enrol a customer who withdrew consent; erasure
leaves no copy of the customer in ``device_events`` nor in a saved model; ``device_events`` and old models are
bounded; training survives a customer erased while it runs (real Ta-Feng purchases, 3,000 lines)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud import training
from dangol_cloud.erasure import erase_customer
from dangol_cloud.events import Outcome, handle_message
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import (
    AuditEntry, Customer, DeadLetter, Device, DeviceEvent, Menu, MenuDayparts, ModelVersion, Purchase, Visit,
    utcnow,
)
from dangol_cloud.security import mosquitto_hash
from dangol_cloud.settings import Settings

from .conftest import add_store_and_device


# --- helpers -----------------------------------------------------------------------------------------
def _enrolment(device_id: str, customer_id: str, status: str, *, consent: bool = True, name: str | None = "Mina Kim"):
    now = utcnow()
    return proto.EnrolmentEvent(
        event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=now, customer_id=uuid.UUID(customer_id),
        status=status, display_name=name,
        consent=proto.Consent(recorded_by="jo", recorded_at=now, text_version="2026-01") if consent else None)


def _arrival(device_id: str, customer_id: str, hours_ago: float = 0):
    return proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id),
                              ts=utcnow() - timedelta(hours=hours_ago), customer_id=uuid.UUID(customer_id),
                              confidence=0.9, shown_items=["latte", "scone"])


def _send(db, device_id: str, event) -> Outcome:
    return handle_message(db, proto.events_topic(device_id), proto.dump_payload(event))


def _payloads_naming(db, customer_id: str) -> list[dict]:
    with db.sessions() as s:
        return [p for p in s.scalars(select(DeviceEvent.payload)) if customer_id in json.dumps(p)]


def _second_device(db, store_id: str) -> str:
    with db.transaction() as s:
        device = Device(store_id=store_id, name="Side door", mqtt_username=f"device-{uuid.uuid4()}",
                        mqtt_password_hash=mosquitto_hash("pw"))
        s.add(device)
        s.flush()
        return device.id


@pytest.fixture
def purchases(db, data_dir, tmp_path):
    """``db`` with the first 3,000 real Ta-Feng purchase lines imported."""
    src = data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv"
    dst = tmp_path / "ta_feng_3000.csv"
    with src.open() as fin, dst.open("w") as fout:
        fout.writelines(line for n, line in zip(range(3001), fin))
    with db.transaction() as s:
        import_rows(s, parse_purchases(dst, "ta-feng"), source="ta-feng", key_prefix="ta-feng", tz="Asia/Taipei")
    return db


@pytest.fixture
def train_settings(tmp_path, db_url) -> Settings:
    return Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k", timezone="Asia/Taipei",
                    _env_file=None)


def _model_folders(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.models_dir.iterdir() if not p.name.startswith("."))


def _customer_with_purchases(db) -> str:
    with db.sessions() as s:
        return s.scalar(select(Purchase.customer_id).group_by(Purchase.customer_id)
                        .order_by(func.count().desc(), Purchase.customer_id).limit(1))


# --- 1. consent withdrawn on the dashboard stays withdrawn ------------------------------------------------
@pytest.mark.parametrize("status", ["active", "pending"])
def test_a_device_cannot_enrol_again_a_customer_who_withdrew_consent(db, status):
    from dangol_cloud.web.customers import withdraw_consent

    _store, device = add_store_and_device(db)
    cid = str(uuid.uuid4())
    assert _send(db, device, _enrolment(device, cid, "pending", consent=False, name=None)) is Outcome.STORED
    assert _send(db, device, _enrolment(device, cid, "active")) is Outcome.STORED
    with db.transaction() as s:
        withdraw_consent(s, s.get(Customer, cid), actor="owner@cafe.example")

    outcome = _send(db, device, _enrolment(device, cid, status, consent=status == "active"))

    assert outcome is Outcome.REFUSED
    with db.sessions() as s:
        customer = s.get(Customer, cid)
        assert (customer.status, customer.consent_at, customer.display_name) == ("withdrawn", None, None)
        assert [a.action for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))] == [
            "consent-recorded", "consent-withdrawn"]
        letter = s.scalar(select(DeadLetter))
        assert letter.kind == "refused" and "withdr" in letter.reason and cid in letter.reason


# --- 2. device events: scrubbed on erasure, pruned after a window ------------------------------------------
def test_erasure_scrubs_the_customer_from_stored_device_events_and_keeps_duplicate_detection(db):
    _store, device = add_store_and_device(db)
    cid = str(uuid.uuid4())
    assert _send(db, device, _enrolment(device, cid, "active")) is Outcome.STORED
    arrivals = [_arrival(device, cid, hours_ago=h) for h in (3, 2, 1)]
    assert all(_send(db, device, a) is Outcome.STORED for a in arrivals)
    assert len(_payloads_naming(db, cid)) == 4

    with db.transaction() as s:
        erase_customer(s, cid, actor="owner@cafe.example")

    assert _payloads_naming(db, cid) == []
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(DeviceEvent)) == 4  # event ids kept for replays
        assert all("latte" not in json.dumps(p) for p in s.scalars(select(DeviceEvent.payload)))
    assert _send(db, device, arrivals[0]) is Outcome.DUPLICATE
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Visit)) == 3


def test_old_device_events_are_pruned_and_replays_of_pruned_arrivals_still_change_nothing(db):
    from dangol_cloud.erasure import prune_device_events

    store, device = add_store_and_device(db)
    other = _second_device(db, store)
    cid = str(uuid.uuid4())
    assert _send(db, device, _enrolment(device, cid, "active")) is Outcome.STORED
    old = _arrival(device, cid, hours_ago=2)
    assert _send(db, device, old) is Outcome.STORED
    with db.transaction() as s:  # received 40 days ago
        s.get(DeviceEvent, str(old.event_id)).received_at = utcnow() - timedelta(days=40)
    fresh = _arrival(device, cid, hours_ago=1)
    assert _send(db, device, fresh) is Outcome.STORED

    with db.transaction() as s:
        pruned = prune_device_events(s, days=30)

    assert pruned == 1
    with db.sessions() as s:
        kept = {(e.kind, e.event_id) for e in s.scalars(select(DeviceEvent))}
    assert ("arrival", str(fresh.event_id)) in kept and ("arrival", str(old.event_id)) not in kept
    assert {k for k, _ in kept} == {"arrival", "enrolment"}  # a living customer's enrolment is kept
    assert _send(db, device, old) is Outcome.DUPLICATE  # the visit still holds its event id
    assert _send(db, other, old.model_copy(update={"device_id": uuid.UUID(other)})) is Outcome.REFUSED
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Visit)) == 2


def test_the_retention_command_prunes_old_device_events_too(db, db_url, monkeypatch, tmp_path, capsys):
    """A chain that runs ``dangol-cloud retention`` from cron (and not ``serve``'s sweep) must not keep door
    events for ever either."""
    from dangol_cloud.cli import main as cli

    _store, device = add_store_and_device(db)
    event = _arrival(device, str(uuid.uuid4()))
    assert _send(db, device, event) is Outcome.STORED
    with db.transaction() as s:
        s.get(DeviceEvent, str(event.event_id)).received_at = utcnow() - timedelta(days=3)
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DANGOL_DEVICE_EVENT_DAYS", "2")
    assert cli(["retention"]) == 0
    assert "1 device event older than 2 days deleted" in capsys.readouterr().out
    with db.sessions() as s:
        assert s.get(DeviceEvent, str(event.event_id)) is None


def test_serve_prunes_device_events_older_than_the_setting(db, tmp_path):
    from dangol_cloud.app import create_app
    from dangol_cloud.background import start_background

    assert Settings(_env_file=None).device_event_days == 30  # the documented default
    _store, device = add_store_and_device(db)
    event = _arrival(device, str(uuid.uuid4()))
    assert _send(db, device, event) is Outcome.STORED
    with db.transaction() as s:
        s.get(DeviceEvent, str(event.event_id)).received_at = utcnow() - timedelta(days=3)
    settings = Settings(database_url=db.url, cloud_home=tmp_path / "home", device_event_days=2, listen=False,
                        secret_key="k", _env_file=None)
    stop = start_background(create_app(settings, db=db))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with db.sessions() as s:
                if s.get(DeviceEvent, str(event.event_id)) is None:
                    break
            time.sleep(0.1)
    finally:
        stop()
    with db.sessions() as s:
        assert s.get(DeviceEvent, str(event.event_id)) is None, "the daily sweep did not prune old device events"


# --- 3. saved models: only the current one is kept, and an erasure leaves no trace in it ----------------------
def test_training_keeps_only_the_current_model_version_and_folder(purchases, train_settings):
    first = training.train_from_database(purchases, train_settings)
    time.sleep(1.1)
    second = training.train_from_database(purchases, train_settings)

    assert first.version != second.version
    assert _model_folders(train_settings) == [second.version]
    with purchases.sessions() as s:
        assert list(s.scalars(select(ModelVersion.version))) == [second.version]
        assert set(s.scalars(select(Menu.model_version))) == {second.version}


def test_erasure_removes_the_customer_from_the_saved_model(purchases, train_settings):
    from dangol_cloud.recommend import Recommender

    report = training.train_from_database(purchases, train_settings)
    cid = _customer_with_purchases(purchases)
    with np.load(f"{report.path}/arrays.npz") as z:
        assert cid in set(z["customers"])

    with purchases.transaction() as s:
        erasure = erase_customer(s, cid, actor="owner@cafe.example")
        erasure_id = erasure.id

    with np.load(f"{report.path}/arrays.npz") as z:
        assert cid not in set(z["customers"])
    model = Recommender.load(report.path)
    stranger = str(uuid.uuid4())
    picks = model.recommend([cid, stranger], n=5)
    assert [p.item for p in picks[cid]] == [p.item for p in picks[stranger]]  # cold start: nothing of theirs left
    with purchases.sessions() as s:
        detail = s.scalar(select(AuditEntry.detail).where(AuditEntry.erasure_id == erasure_id,
                                                          AuditEntry.action == "erasure-requested"))
    assert "removed from 1 saved model" in detail


# --- 4. a customer erased while training runs --------------------------------------------------------------
def test_training_survives_a_customer_erased_while_it_runs(purchases, train_settings):
    victim = _customer_with_purchases(purchases)

    def progress(step: str) -> None:
        if step == "menus":
            with purchases.transaction() as s:
                erase_customer(s, victim, actor="owner@cafe.example")

    report = training.train_from_database(purchases, train_settings, progress=progress)

    with purchases.sessions() as s:
        assert s.get(Menu, victim) is None and s.get(MenuDayparts, victim) is None
        assert s.scalar(select(func.count()).select_from(Menu)) == report.menus > 0
        assert list(s.scalars(select(ModelVersion.version))) == [report.version]
    with np.load(f"{report.path}/arrays.npz") as z:
        assert victim not in set(z["customers"])


def test_a_failed_commit_leaves_no_model_folder_behind(purchases, train_settings, monkeypatch):
    first = training.train_from_database(purchases, train_settings)
    time.sleep(1.1)

    def broken_insert(*args, **kwargs):
        raise RuntimeError("disk went away half-way through writing menus")

    monkeypatch.setattr(training, "insert", broken_insert)
    with pytest.raises(RuntimeError, match="half-way"):
        training.train_from_database(purchases, train_settings)
    assert _model_folders(train_settings) == [first.version]
    with purchases.sessions() as s:
        assert list(s.scalars(select(ModelVersion.version))) == [first.version]
