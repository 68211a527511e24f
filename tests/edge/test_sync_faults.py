"""Faults around the edge's MQTT sync and its state cache, on a real Mosquitto and real SQLite files: the disk is
full when the broker's PUBACK is to be recorded, the outbox cannot be read, a cached first name is sealed under
another key, an arrival fails, an erasure names more than 100 customers."""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest

from dangol_edge.config import EdgeConfig
from dangol_edge.crypto import FieldCipher, new_key, parse_key
from dangol_edge.events import EventFactory, Outbox
from dangol_edge.gallery import Gallery
from dangol_edge.screen import Screen
from dangol_edge.state import StateStore
from dangol_edge.tracker import Decision
from dangol_edge.workers import ArrivalWorker, Stats
from dangol_protocol import Consent, Erasures, dump_payload
from dangol_protocol.models import MAX_ERASED_IDS
from dangol_protocol.topics import catalogue_topic, erasures_topic, events_topic
from tests.edge.test_sync import (  # noqa: F401 (fixtures)
    DEVICE, STORE, Cloud, arrival, broker, catalogue, make_sync, menu, state, wait_for,
)


def fill_the_disk(st: StateStore) -> None:
    """The medium is full (as ``tests/edge/test_daemon_faults.py``'s ``fill_the_disk``): the state database cannot
    grow any more and its pages are packed, here with events the broker acknowledged long ago (so nothing new is
    pending)."""
    with st._lock:
        pages = st.db.execute("PRAGMA page_count").fetchone()[0]
        st.db.execute(f"PRAGMA max_page_count = {pages}")
        for size in (256, 64, 16, 1):  # smaller and smaller rows until not a byte fits
            with pytest.raises(sqlite3.OperationalError, match="full"):
                for i in range(100_000):
                    st.db.execute("INSERT INTO outbox (event_id, topic, payload, created_at, sent_at) "
                                  "VALUES (?, 'filler', ?, 'then', 'then')", [f"filler-{size}-{i}", "x" * size])


def free_the_disk(st: StateStore) -> None:
    with st._lock:
        st.db.execute("PRAGMA max_page_count = 1073741823")


def network_thread_alive(sync) -> bool:
    thread = sync._client._thread  # paho's loop_start() thread (None once it ended)
    return thread is not None and thread.is_alive()


def sync_errors(caplog, with_traceback: bool = True) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dangol_edge.sync" and r.levelno >= logging.ERROR
            and (r.exc_info is not None) == with_traceback]


def test_a_storage_error_when_the_broker_acknowledges_keeps_the_connection_and_resends(broker, state, caplog):
    """An acknowledged event is deleted, so a full disk no longer keeps it from being recorded; a database another
    writer keeps locked does: the event stays (sent again), paho's network thread lives on."""
    ev = arrival()
    state.enqueue(str(ev.event_id), events_topic(DEVICE), dump_payload(ev))
    fill_the_disk(state)  # the SD card fills up before the event could go out
    cloud = Cloud(broker)
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert sync.connected.wait(10)
        assert wait_for(lambda: state.outbox_depth() == 0), "a full disk kept an acknowledgement from being recorded"
        assert sync.storage_errors == 0
    finally:
        sync.stop()
    free_the_disk(state)
    ev = arrival()
    state.enqueue(str(ev.event_id), events_topic(DEVICE), dump_payload(ev))
    state.db.execute("PRAGMA busy_timeout = 100")
    other = sqlite3.connect(state.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the acknowledgement cannot be written
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert sync.connected.wait(10)
        assert wait_for(lambda: getattr(sync, "storage_errors", 0) >= 2 or not network_thread_alive(sync))
        assert network_thread_alive(sync), "a storage error in the PUBACK callback killed paho's network thread"
        assert sync.connected.is_set()
        assert sync.stats.storage == "error"
        assert state.outbox_depth() == 1  # unacknowledged: sent again (with back-off) until it is recorded
        assert str(ev.event_id) in {e["event_id"] for e in cloud.events()}
        assert len(sync_errors(caplog)) == 1  # one traceback per streak, every failure counted
        # the lock is released: the re-sent event is recorded, and paho's network thread still handles the down-link
        other.execute("ROLLBACK")
        cloud.publish(catalogue_topic(STORE), catalogue(3), retain=True)
        assert wait_for(lambda: state.catalogue() is not None and state.catalogue().version == 3)
        assert wait_for(lambda: state.outbox_depth() == 0)
        assert sync.stats.storage == "ok"
    finally:
        sync.stop()
        cloud.close()
        other.close()


def test_the_outbox_flusher_survives_a_failing_read_and_delivers_afterwards(broker, state, caplog):
    caplog.set_level(logging.INFO, logger="dangol_edge.sync")
    ev = arrival()
    state.enqueue(str(ev.event_id), events_topic(DEVICE), dump_payload(ev))
    other = sqlite3.connect(state.path, isolation_level=None)  # e.g. a botched repair by hand: no outbox table
    other.execute("ALTER TABLE outbox RENAME TO outbox_moved")
    cloud = Cloud(broker)
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert sync.connected.wait(10)
        assert wait_for(lambda: getattr(sync, "flush_errors", 0) >= 2 or not sync._flusher.is_alive())
        assert sync._flusher.is_alive(), "an error reading the outbox ended the outbox flusher"
        assert sync.stats.storage == "error"
        assert len(sync_errors(caplog)) == 1  # logged with its traceback once per streak, every failure counted
        other.execute("ALTER TABLE outbox_moved RENAME TO outbox")  # repaired: retried after the back-off
        assert wait_for(lambda: state.outbox_depth() == 0)
        assert [e["event_id"] for e in cloud.events()] == [str(ev.event_id)]
        assert any("works again" in r.getMessage() for r in caplog.records if r.name == "dangol_edge.sync")
    finally:
        sync.stop()
        cloud.close()
        other.close()


def test_a_cached_name_sealed_under_another_key_is_no_name(tmp_path, caplog):
    old, new = (FieldCipher(parse_key(new_key(), k)) for k in ("old", "new"))
    cust = uuid.uuid4()
    with StateStore(tmp_path / "state.sqlite", cipher=old) as st:
        st.put_menu(json.loads(menu(cust, ["scone", "latte"])))
    with StateStore(tmp_path / "state.sqlite", cipher=new) as st:
        for _ in range(3):  # the screen asks again and again
            m = st.menu(str(cust))
            assert m is not None and m.display_name is None
            assert [p.item_id for p in m.items] == ["scone", "latte"]
        assert st.name_read_errors == 1
    logged = [r for r in caplog.records if r.name == "dangol_edge.state" and str(cust) in r.getMessage()]
    assert len(logged) == 1


def test_the_arrival_worker_survives_a_failing_arrival(tmp_path, caplog):
    """A regular whose cached menu name is sealed under the key before a rotation is still welcomed with their
    picks; an arrival that fails (here a tampered gallery row) is logged, counted, and the next one is handled."""
    consent = Consent(recorded_by="Jo", recorded_at=datetime.now(timezone.utc), text_version="2026-01")
    e = np.eye(2, 128, dtype=np.float32)
    g = Gallery(tmp_path / "gallery.sqlite", "sha").open()
    mina = g.enroll("Mina Park", e[:1], consent=consent)
    bo = g.enroll("Bo Kim", e[1:], consent=consent)
    sealed = g.db.execute("SELECT display_name FROM customers WHERE id = ?", [mina.id]).fetchone()[0]
    g.db.execute("UPDATE customers SET display_name = ? WHERE id = ?", [sealed, bo.id])  # moved: cannot be opened
    path = tmp_path / "state.sqlite"
    with StateStore(path, cipher=FieldCipher(parse_key(new_key(), "before the rotation"))) as old:
        old.put_menu(json.loads(menu(uuid.UUID(mina.id), ["scone"])))
    st = StateStore(path).open()
    st.put_catalogue(json.loads(catalogue(1)))
    stats, stop, decisions, screen = Stats(), threading.Event(), queue.Queue(), Screen()
    w = ArrivalWorker(EdgeConfig(home=tmp_path), g, st, screen, EventFactory(DEVICE), Outbox(DEVICE, st), decisions,
                      stats, stop)
    w.start()
    try:
        for i, cid in enumerate([mina.id, bo.id, mina.id]):
            decisions.put(Decision("known", i, 0.0, 0.0, 3, 3, cid, 0.9, arrival=True))
        assert wait_for(lambda: stats.arrivals + getattr(stats, "arrival_failures", 0) >= 3 or not w.is_alive())
        assert w.is_alive() and not w.crashed, "a failing arrival ended the arrival worker"
        assert stats.arrivals == 2 and stats.arrival_failures == 1
        shown = screen.snapshot()
        assert shown["screen"] == "welcome" and shown["first_name"] == "Mina"
        assert [p["id"] for p in shown["picks"]][0] == "scone"
        failed = [r for r in caplog.records if r.name == "dangol_edge.workers.arrivals" and r.exc_info]
        assert len(failed) == 1 and bo.id in failed[0].getMessage()
    finally:
        stop.set()
        w.join(5)
        st.close()
        g.close()


def test_an_erasure_of_more_than_100_customers_is_confirmed_in_parts(broker, state):
    ids = [uuid.uuid4() for _ in range(2 * MAX_ERASED_IDS + 1)]
    erased = []
    sync = make_sync(broker, state, on_erasure=lambda er: erased.extend(map(str, er.customer_ids)) or erased)
    cloud = Cloud(broker)
    sync.start()
    try:
        assert sync.connected.wait(10)
        time.sleep(0.3)  # subscriptions are in place
        er = Erasures(store_id=STORE, erasure_id=uuid.uuid4(), requested_at=datetime.now(timezone.utc),
                      customer_ids=ids)
        cloud.publish(erasures_topic(STORE), dump_payload(er))
        assert wait_for(lambda: len(erased) == len(ids))
        done = lambda: [e for e in cloud.events() if e.get("kind") == "erasure-done"]  # noqa: E731
        assert wait_for(lambda: sum(len(e["customer_ids"]) for e in done()) >= len(ids)), \
            "the erasure was carried out but never confirmed"
        assert len(done()) == 3 and all(len(e["customer_ids"]) <= MAX_ERASED_IDS for e in done())
        assert {e["erasure_id"] for e in done()} == {str(er.erasure_id)}
        assert sorted(c for e in done() for c in e["customer_ids"]) == sorted(map(str, ids))
        assert len({e["event_id"] for e in done()}) == 3
        assert wait_for(lambda: state.outbox_depth() == 0)
    finally:
        sync.stop()
        cloud.close()
