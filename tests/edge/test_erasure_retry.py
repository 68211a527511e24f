"""A cloud erasure that meets a storage error (the gallery locked by another writer, the state file full) is held
and retried until its deletions commit; only then is ``erasure-done`` sent. The held list is bounded and counted.
The real daemon, a real Mosquitto and real SQLite locks and limits."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest

from dangol_edge.daemon import Appliance
from dangol_edge.embed import file_sha256
from dangol_edge.events import EventNotSaved
from dangol_edge.gallery import Gallery
from dangol_protocol import Consent, Erasures, dump_payload
from dangol_protocol.topics import erasures_topic
from tests.broker import MosquittoBroker
from tests.edge.test_daemon import STORE, config
from tests.edge.test_sync import STORE as SYNC_STORE
from tests.edge.test_sync import Cloud, make_sync, wait_for

CONSENT = Consent(recorded_by="Jo", recorded_at=datetime.now(timezone.utc), text_version="1")


def enrol_two(home, model_path) -> list[str]:
    ids = []
    with Gallery(home / "gallery.sqlite", file_sha256(model_path)) as g:
        for seed, name in enumerate(("Ann Lee", "Bo Kim")):
            e = np.random.default_rng(seed).standard_normal((1, 128)).astype(np.float32)
            ids.append(g.enroll(name, e / np.linalg.norm(e), consent=CONSENT).id)
    return ids


def erasure(ids, store=STORE) -> Erasures:
    return Erasures(store_id=store, erasure_id=uuid.uuid4(), requested_at=datetime.now(timezone.utc),
                    customer_ids=[uuid.UUID(str(c)) for c in ids])


def confirmations(cloud, er: Erasures) -> list[str]:
    """Customer ids the cloud has seen confirmed for ``er``."""
    return sorted(c for e in cloud.events() if e.get("kind") == "erasure-done"
                  and e.get("erasure_id") == str(er.erasure_id) for c in e["customer_ids"])


@pytest.fixture
def running(tmp_path, model_path, clips):
    """A daemon (housekeeping every second) connected to a real broker with two customers; yields
    (app, cloud, their ids, home)."""
    home = tmp_path / "home"
    ids = enrol_two(home, model_path)
    with MosquittoBroker(tmp_path / "broker") as broker:
        cloud = Cloud(broker)
        app = Appliance(config(home, model_path, clips, f"mqtt://{broker.host}:{broker.port}",
                               camera={"source": str(clips / "obama.jpg")}))
        app.start()
        try:
            assert app.sync.connected.wait(20)
            time.sleep(0.5)   # the store's subscriptions are in place
            yield app, cloud, ids, home
        finally:
            app.stop()
            cloud.close()


def lock(path, app_db) -> sqlite3.Connection:
    """Another writer holds ``path``'s write lock; the app's connection gives up after 0.2 s (not 5)."""
    app_db.execute("PRAGMA busy_timeout = 200")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_an_erasure_meeting_a_locked_gallery_is_retried_and_confirmed_once_done(running, caplog):
    caplog.set_level(logging.INFO, logger="dangol_edge")
    app, cloud, ids, home = running
    locker = lock(home / "gallery.sqlite", app.gallery.db)
    try:
        er = erasure(ids)
        cloud.publish(erasures_topic(STORE), dump_payload(er))
        assert wait_for(lambda: app.sync.erasures.errors >= 2, timeout=15), "the erasure was not retried"
        assert app.sync.erasures.held == 1
        assert confirmations(cloud, er) == [], "erasure-done was sent before the deletions committed"
        assert len(app.gallery.customers()) == 2
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert wait_for(lambda: confirmations(cloud, er) == sorted(ids), timeout=20), "the erasure was never carried out"
    assert app.gallery.customers() == [] and app.gallery.size == 0
    assert app.sync.erasures.held == 0
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR and str(er.erasure_id) in r.getMessage()]
    assert failed and failed[0].exc_info, "the first failure is logged with its traceback"
    assert any(str(er.erasure_id) in r.getMessage() and r.levelno == logging.INFO and "carried out" in r.getMessage()
               for r in caplog.records)


def test_an_erasure_whose_state_step_fails_is_confirmed_only_after_it_is_retried(running):
    """The gallery deletions commit but the state file cannot be written (its menus, queued events and the
    confirmation go in one transaction): no confirmation until that transaction commits on a retry."""
    app, cloud, ids, home = running
    app.state.put_menu({"schema": "menu/1", "store_id": str(STORE), "customer_id": ids[0], "display_name": "Ann",
                        "model_version": "m", "generated_at": datetime.now(timezone.utc).isoformat(),
                        "items": [{"item_id": "latte", "score": 1}]})
    locker = lock(home / "state.sqlite", app.state.db)
    try:
        with pytest.raises(EventNotSaved):   # an arrival just before the erasure: held in memory for a retry
            app.outbox.send(app.events.arrival(ids[0], 0.9, ["latte"]))
        er = erasure(ids)
        cloud.publish(erasures_topic(STORE), dump_payload(er))
        assert wait_for(lambda: app.sync.erasures.errors >= 2, timeout=15)
        assert app.gallery.customers() == [], "the gallery deletions did not commit"
        assert confirmations(cloud, er) == [] and app.sync.erasures.held == 1
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert wait_for(lambda: confirmations(cloud, er) == sorted(ids), timeout=20)
    assert app.state.menu(ids[0]) is None
    assert wait_for(lambda: app.outbox.held == 0, timeout=10)
    time.sleep(0.5)
    assert [e for e in cloud.events() if e.get("customer_id") == ids[0]] == [], "an erased customer's arrival was sent"
    assert app.sync.erasures.held == 0


def test_held_erasures_are_bounded_counted_and_merged(tmp_path, broker, caplog):
    """The state file is full: each erasure is held; the same erasure sent again is held once; beyond the bound the
    oldest is dropped and counted (the cloud re-sends what a device has not confirmed); once the disk has room a
    retry confirms every held one."""
    from dangol_edge.erasures import HELD_MAX
    from dangol_edge.state import StateStore

    state = StateStore(tmp_path / "state.sqlite").open()
    try:
        sync = make_sync(broker, state)   # not started: handle_message is what paho's thread calls
        pages = state.db.execute("PRAGMA page_count").fetchone()[0]
        state.db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for i in range(100_000):
                state.enqueue(f"filler-{i}", "filler", "x" * 64)
        first = erasure([uuid.uuid4()], SYNC_STORE)
        assert sync.handle_message(erasures_topic(SYNC_STORE), dump_payload(first)) == "erasure-held"
        assert sync.handle_message(erasures_topic(SYNC_STORE), dump_payload(first)) == "erasure-held"
        assert sync.erasures.held == 1 and sync.erasures.errors == 2
        later = [erasure([uuid.uuid4()], SYNC_STORE) for _ in range(HELD_MAX)]
        for er in later:
            sync.handle_message(erasures_topic(SYNC_STORE), dump_payload(er))
        assert sync.erasures.held == HELD_MAX and sync.erasures.dropped == 1
        assert any(r.levelno >= logging.ERROR and str(first.erasure_id) in r.getMessage()
                   and "dropped" in r.getMessage() for r in caplog.records)
        assert sync.retry_erasures() == HELD_MAX   # still full: all still held
        state.db.execute("PRAGMA max_page_count = 1000000")   # room again
        assert sync.retry_erasures() == 0
        done = [e["payload"] for e in state.pending(1000) if "erasure-done" in e["payload"]]
        assert len(done) == HELD_MAX and sync.erasures.held == 0
        assert not any(str(first.erasure_id) in p for p in done)
    finally:
        state.close()


@pytest.fixture
def broker(tmp_path):
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


def test_a_staff_erasure_whose_state_step_fails_is_retried_by_housekeeping(tmp_path, model_path, clips):
    """The staff page erases a customer while the state file cannot be written: the page says so, nothing about the
    customer is sent meanwhile, and the housekeeping worker removes their queued events and reports the erasure
    once it can."""
    from tests.edge.test_erasure_outbox import Staff, about, queued

    home = tmp_path / "home"
    ids = enrol_two(home, model_path)
    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")}))
    app.start()
    try:
        app.outbox.send(app.events.arrival(ids[0], 0.9, ["latte"]))
        staff = Staff(app)
        token = staff._token()
        locker = lock(home / "state.sqlite", app.state.db)
        try:
            r = staff.web.post(f"/staff/erase/{ids[0]}", data={"csrf_token": token})
            assert r.status_code == 302
            assert "cannot write its storage" in staff.web.get("/staff").get_data(as_text=True)
            assert [c.id for c in app.gallery.customers()] == [ids[1]]
            assert ids[0] not in [e["customer_id"] for e in app.state.pending(100)], "withheld while erasing"
            assert ids[0] in app.housekeeping.unreported
            time.sleep(1.5)   # a housekeeping pass fails too
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert wait_for(lambda: about(queued(app), ids[0]) == [("erasure-done", None)], timeout=10)
        assert ids[0] not in app.housekeeping.unreported
    finally:
        app.stop()
