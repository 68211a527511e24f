"""Background work that fails is seen (review R3, dec 7b).

1. The daily retention sweep and scheduled training record each run's outcome in the audit log in a transaction of
   their own (a failed sweep's own "retention-run" entry rolls back with it), and the owner's home page warns when
   retention failed or has not succeeded for more than a day, or the last scheduled training failed — naming when
   it last succeeded and why it failed; the background workers' failure counters show there too.
2. A new regular's first menu that cannot be written or sent at once (model unreadable, broker down) is retried
   until it reaches the stores — from the dashboard's consent form (the app's welcomer) and from the listener
   (its follow-ups) — instead of waiting for a "next publish" that sends nothing for them.

Real app factory, SQLite and PostgreSQL, real Mosquitto, real Ta-Feng purchases and a real trained model.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud import background
from dangol_cloud.app import create_app
from dangol_cloud.background import MenuRepublisher, start_background
from dangol_cloud.events import Listener, Outcome, handle_message
from dangol_cloud.models import AuditEntry, Customer, Menu, ModelVersion, utcnow
from dangol_cloud.settings import Settings

from .conftest import add_owner, add_store_and_device
from .test_cloud_web import csrf_of, sign_in

CONSENT = {"recorded_by": "staff:jo", "text_version": "2026-01"}


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def _audits(db, action: str) -> list[AuditEntry]:
    with db.sessions() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def _home(app) -> str:
    client = app.test_client()
    sign_in(client)
    return client.get("/").get_data(as_text=True)


def _settings(db, tmp_path: Path, **kw) -> Settings:
    return Settings(database_url=db.url, cloud_home=tmp_path / "home", secret_key="k", listen=False,
                    _env_file=None, **kw)


# --- 1. the retention sweep ----------------------------------------------------------------------------------------
def test_a_failing_retention_sweep_is_recorded_and_the_owner_is_warned(db, tmp_path):
    """A saved model whose file cannot be rewritten (here: not a model archive) makes every sweep fail: nobody is
    erased. The failure is recorded on its own (the sweep's transaction rolled back) and the home page says so,
    with the error; once the cause is gone the next sweep erases and the warning goes."""
    add_owner(db)
    folder = tmp_path / "home" / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "arrays.npz").write_bytes(b"this is not a saved model")
    stale = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(ModelVersion(version="broken", path=str(folder)))
        s.add(Customer(id=stale, status="active", source="edge", created_at=utcnow() - timedelta(days=400)))
    app = create_app(_settings(db, tmp_path, retention_days=30), db=db, TESTING=True)
    stop = start_background(app)
    try:
        assert _wait(lambda: app.extensions["dangol_sweep_failures"]["retention"] == 1)
        assert _wait(lambda: _audits(db, "retention-failed")), "the failed sweep left no trace in the database"
    finally:
        stop()
    failed = _audits(db, "retention-failed")
    assert len(failed) == 1 and failed[0].actor == "retention"
    assert "ValueError" in failed[0].detail and "pickled" in failed[0].detail
    assert _audits(db, "retention-run") == []  # rolled back with the sweep
    with db.sessions() as s:
        assert s.get(Customer, stale) is not None  # not erased
    page = _home(app)
    assert 'data-background-warning="retention"' in page
    warning = page.split('data-background-warning="retention"')[1].split("</div>")[0]
    assert "not being erased" in warning and "Last success: never" in warning and "ValueError" in warning

    (folder / "arrays.npz").unlink()  # the cause is gone: the next sweep (at start) erases and records it
    stop = start_background(app)
    try:
        assert _wait(lambda: _audits(db, "retention-run"))
    finally:
        stop()
    with db.sessions() as s:
        assert s.get(Customer, stale) is None
    assert 'data-background-warning="retention"' not in _home(app)


def test_retention_that_has_not_succeeded_for_more_than_a_day_is_warned(db, tmp_path):
    """No failure on record, but the last successful sweep is two days old (the daily sweep stopped): warned,
    naming when it last succeeded; a sweep an hour ago: no warning."""
    add_owner(db)
    app = create_app(_settings(db, tmp_path), db=db, TESTING=True)
    with db.transaction() as s:
        s.add(AuditEntry(actor="retention", action="retention-run", detail="erased 0", at=utcnow() - timedelta(days=2)))
    page = _home(app)
    assert 'data-background-warning="retention"' in page
    warning = page.split('data-background-warning="retention"')[1].split("</div>")[0]
    assert "has not run for more than a day" in warning and "Last success: never" not in warning
    with db.transaction() as s:
        s.add(AuditEntry(actor="retention", action="retention-run", detail="erased 0",
                         at=utcnow() - timedelta(hours=1)))
    assert 'data-background-warning="retention"' not in _home(app)


# --- 1. scheduled training ----------------------------------------------------------------------------------------
def test_a_failing_scheduled_training_is_recorded_and_the_owner_is_warned(db, tmp_path, ta_feng_slice):
    """The models folder cannot be written (a file is in its place): each scheduled training fails after
    training. Recorded with the error and counted; the home page warns; once fixed, a success is recorded and the
    warning goes."""
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows

    add_owner(db)
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "models").write_text("not a folder")
    app = create_app(_settings(db, tmp_path, train_interval_hours=0.0005), db=db, TESTING=True)  # every 1.8 s
    stop = start_background(app)
    try:
        assert _wait(lambda: _audits(db, "training-failed"), timeout=90), "the failed training left no trace"
        assert app.extensions["dangol_sweep_failures"]["training"] >= 1
        page = _home(app)
        assert 'data-background-warning="training"' in page
        warning = page.split('data-background-warning="training"')[1].split("</div>")[0]
        assert "Last success: never" in warning and "Error" in warning  # FileExistsError / NotADirectoryError
        (tmp_path / "home" / "models").unlink()
        assert _wait(lambda: _audits(db, "training-scheduled"), timeout=90)
    finally:
        stop()
    with db.sessions() as s:
        assert s.scalar(select(ModelVersion.version)) in _audits(db, "training-scheduled")[-1].detail
    time.sleep(0.5)  # a run started before stop() may still finish
    last_ok = _audits(db, "training-scheduled")[-1].at
    if all(f.at < last_ok for f in _audits(db, "training-failed")):
        assert 'data-background-warning="training"' not in _home(app)


# --- 2. a new regular's first menu ---------------------------------------------------------------------------------
def _enrol(db, device_id: str, customer_id: str) -> None:
    event = proto.EnrolmentEvent(event_id=proto.new_event_id(), device_id=uuid.UUID(device_id), ts=utcnow(),
                                 customer_id=uuid.UUID(customer_id), status="pending", short_code="1234")
    assert handle_message(db, proto.events_topic(device_id), proto.dump_payload(event)) is Outcome.STORED


def _menus_seen(broker, store_id: str) -> tuple[dict, mqtt.Client]:
    """Subscribe to every menu of ``store_id`` on the broker; returns ``({customer id: payload}, client)``."""
    seen: dict = {}
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: seen.__setitem__(m.topic.rsplit("/", 1)[-1], m.payload)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(proto.menus_wildcard(store_id), qos=1)
    assert subscribed.wait(5)
    return seen, client


def test_a_new_regulars_first_menu_is_retried_until_it_reaches_the_stores(sqlite_url, tmp_path, mosquitto,
                                                                             ta_feng_slice, monkeypatch):
    """The model cannot be loaded when the owner records consent: no menu is written, and no Publish would send
    one. The page says it is retried; the owner's home page shows it waiting; once the model loads again the
    menu is written and published to the store without anyone doing anything."""
    from dangol_cloud.db import Database
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows
    from dangol_cloud.training import train_from_database

    from .conftest import DEV_KEY_BYTES

    monkeypatch.setattr(background, "WELCOME_RETRY_SECONDS", 0.5, raising=False)
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    store_id, device_id = add_store_and_device(db)
    settings = Settings(database_url=sqlite_url, cloud_home=tmp_path / "home", secret_key="k", listen=False,
                        mqtt_url=mosquitto.url, _env_file=None)
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    report = train_from_database(db, settings)
    arrays = Path(report.path) / "arrays.npz"
    arrays.rename(arrays.with_suffix(".away"))  # the model cannot be loaded
    cid = str(uuid.uuid4())
    _enrol(db, device_id, cid)
    app = create_app(settings, db=db, TESTING=True)
    seen, watcher = _menus_seen(mosquitto, store_id)
    try:
        client = app.test_client()
        sign_in(client)
        token = csrf_of(client.get(f"/customers/{cid}").get_data(as_text=True))
        r = client.post(f"/customers/{cid}/consent", data={"csrf_token": token, "display_name": "Mina", **CONSENT},
                        follow_redirects=True)
        flash = r.get_data(as_text=True)
        assert "not sent yet" in flash and "tried again every" in flash, flash
        with db.sessions() as s:
            assert s.get(Menu, cid) is None
        time.sleep(1.5)  # a retry or two, failing as well
        page = client.get("/").get_data(as_text=True)
        assert 'data-background-warning="counters"' in page
        assert "first menus of new regulars (dashboard)" in page and "1 customer(s) still waiting" in page

        arrays.with_suffix(".away").rename(arrays)  # the model loads again
        assert _wait(lambda: cid in seen), "the first menu never reached the store"
        with db.sessions() as s:
            menu = s.get(Menu, cid)
            assert menu is not None and menu.model_version == report.version and menu.picks
        assert json.loads(seen[cid])["customer_id"] == cid
        assert app.extensions["dangol_welcomer"].pending() == 0
        assert app.extensions["dangol_welcomer"].failures >= 1
    finally:
        watcher.disconnect()
        watcher.loop_stop()
        app.extensions.get("dangol_welcomer") and app.extensions["dangol_welcomer"].stop()
        db.dispose()


def test_a_retry_gives_no_menu_to_a_customer_who_withdrew_meanwhile(db, tmp_path, ta_feng_slice):
    """The welcome retried for a customer who withdrew consent (or was erased) meanwhile writes no menu for them —
    and does not fail for ever on the erased one."""
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows
    from dangol_cloud.services import welcome
    from dangol_cloud.training import train_from_database

    settings = _settings(db, tmp_path)
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    train_from_database(db, settings)
    withdrawn, active = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction() as s:
        s.add(Customer(id=withdrawn, status="withdrawn", source="edge"))
        s.add(Customer(id=active, status="active", source="edge", consent_at=utcnow(), consent_by="staff:jo",
                       consent_text_version="2026-01", display_name="Jun"))
    assert welcome(db, settings, [withdrawn, active, str(uuid.uuid4())]) == 0  # no broker: written, not sent
    with db.sessions() as s:
        assert s.get(Menu, withdrawn) is None and s.get(Menu, active) is not None


def test_the_listener_retries_a_welcome_that_failed(sqlite_url, tmp_path, mosquitto):
    """The listener's welcome of a customer a door just activated fails once (e.g. broker or model trouble): it
    is counted and tried again off the listener's worker until it succeeds."""
    from dangol_cloud.db import Database

    from .conftest import DEV_KEY_BYTES

    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    _, device_id = add_store_and_device(db)
    calls: list[str] = []

    def welcome(customer_id: str) -> int:
        calls.append(customer_id)
        if len(calls) == 1:
            raise OSError("model folder unreadable")
        return 1

    listener = Listener(db, mosquitto.url, client_id=f"cloud-{uuid.uuid4().hex[:6]}", on_activated=welcome,
                        follow_up_retry=0.2).start()
    edge = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:8]}")
    edge.connect(mosquitto.host, mosquitto.port)
    edge.loop_start()
    customer = uuid.uuid4()
    try:
        for status in ("pending", "active"):
            consent = proto.Consent(recorded_by="staff:jo", recorded_at=utcnow(), text_version="2026-01")
            event = proto.EnrolmentEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utcnow(),
                                         customer_id=customer, status=status, short_code="K7",
                                         display_name="Jun" if status == "active" else None,
                                         consent=consent if status == "active" else None)
            edge.publish(proto.events_topic(device_id), proto.dump_payload(event), qos=1).wait_for_publish(5)
        assert _wait(lambda: len(calls) >= 2, timeout=10), "the failed welcome was never tried again"
        assert _wait(lambda: listener.follow_ups.published == 1)
    finally:
        edge.disconnect()
        edge.loop_stop()
        listener.stop()
        db.dispose()
    assert calls == [str(customer), str(customer)]
    assert listener.follow_up_failures == 1 and listener.follow_ups.pending() == 0


def test_the_retry_queue_is_bounded_and_counts_what_it_drops():
    """At most ``max_pending`` customers wait; one more is dropped and counted, not queued."""
    tried = threading.Event()

    def publish(ids):
        tried.set()
        raise OSError("broker down")

    worker = MenuRepublisher(publish, retry_seconds=60, max_pending=2, what="first menus")
    try:
        worker.submit(["a", "b"])
        assert tried.wait(5) and _wait(lambda: worker.failures == 1 and worker.pending() == 2, timeout=5)
        worker.submit("c")
        worker.submit("a")  # already waiting: not a drop
        assert (worker.pending(), worker.dropped) == (2, 1)
    finally:
        worker.stop()

