"""Three faults of the edge's MQTT sync, on a real Mosquitto (one per test, on a free port) and real SQLite files:

* a menu of a customer erased on this box (staff page, ``customers delete``, the cloud's erasure) is never cached
  again, whether the broker still retains it or it arrives late, after a reconnection or a restart;
* a catalogue or menu that cannot be saved (the state file is full) is held and saved by the next housekeeping
  pass, bounded, instead of being acknowledged and forgotten;
* a publish made while the connection is dropping (paho keeps it and sends it after the reconnect) is settled by
  its own PUBACK, and no leftover acknowledgement can mark a later event sent before the broker has it.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from dangol_edge.config import EdgeConfig
from dangol_edge.events import EventFactory, Outbox
from dangol_edge.state import StateStore
from dangol_edge.workers import Stats
from dangol_edge.workers.housekeeping import HousekeepingWorker
from dangol_protocol import Erasures, dump_payload
from dangol_protocol.topics import catalogue_topic, erasures_topic, menu_topic, status_topic
from tests.broker import MosquittoBroker
from tests.edge.test_sync_faults import fill_the_disk as fill_the_outbox
from tests.edge.test_sync import (  # noqa: F401 (fixtures)
    DEVICE, STORE, Cloud, arrival, broker, catalogue, make_sync, menu, state, wait_for,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def menu_at(customer: uuid.UUID, items: list[str], generated_at: datetime, name: str = "Mina Park") -> bytes:
    """A ``menu/1`` payload generated at a given time."""
    return json.dumps({
        "schema": "menu/1", "store_id": str(STORE), "customer_id": str(customer), "display_name": name,
        "model_version": "m1", "generated_at": generated_at.isoformat(),
        "items": [{"item_id": i, "score": 1.0 - n / 10} for n, i in enumerate(items)]}).encode()


def items(st: StateStore, customer: uuid.UUID) -> list[str] | None:
    m = st.menu(str(customer))
    return None if m is None else [p.item_id for p in m.items]


def big_catalogue(version: int, available_latte=True) -> bytes:
    """A ``catalogue/1`` of 200 items with descriptions (~70 KB: many more pages than a full file has room for)."""
    return json.dumps({
        "schema": "catalogue/1", "store_id": str(STORE), "version": version,
        "published_at": datetime.now(timezone.utc).isoformat(), "currency": "KRW",
        "items": [{"id": "latte", "name": "Latte", "price": 5000, "available": available_latte}]
        + [{"id": f"i{i}", "name": f"Item {i}", "price": 1000, "description": "x" * 300} for i in range(200)]}).encode()


def fill_the_disk(st: StateStore) -> None:
    """The medium is full: the state database may not grow by a single page, and its pages are packed — the menus
    table's with other customers' menus of the same size as the tests' (the box caches many), the rest with other
    data than the daemon's (nothing it prunes frees room). A real ``SQLITE_FULL`` for any write that needs a page."""
    with st._lock:
        pages = st.db.execute("PRAGMA page_count").fetchone()[0]
        st.db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for _ in range(100_000):
            st.put_menu(json.loads(menu_at(uuid.uuid4(), ["latte"], T0)))
    with st._lock:
        st.db.execute("CREATE TABLE IF NOT EXISTS filler (x TEXT)")
        for size in (256, 64, 16, 1):
            with pytest.raises(sqlite3.OperationalError, match="full"):
                for _ in range(100_000):
                    st.db.execute("INSERT INTO filler (x) VALUES (?)", ["x" * size])


def free_the_disk(st: StateStore) -> None:
    with st._lock:
        st.db.execute("PRAGMA max_page_count = 1073741823")


def kill(broker: MosquittoBroker) -> None:
    """The broker dies at once (no DISCONNECT, no saved state)."""
    broker._proc.send_signal(signal.SIGKILL)
    broker._proc.wait()
    broker.stop()


def restart(broker: MosquittoBroker, sync) -> None:
    """Restart the broker on its port and wait until the sync has reconnected."""
    port = broker.port
    broker.stop()
    assert wait_for(lambda: not sync.connected.is_set(), timeout=10)
    broker.start(port=port)
    assert sync.connected.wait(20)


@pytest.fixture
def persistent_broker(tmp_path):
    """A broker that keeps retained messages and sessions across a restart (as a production one does)."""
    with MosquittoBroker(tmp_path / "pbroker", persistence=True) as b:
        yield b


# --- 1. an erased customer's menu is never cached again ------------------------------------------------------------

def test_a_menu_of_a_customer_erased_at_the_door_is_not_cached_again_after_a_reconnection(persistent_broker, state,
                                                                                           caplog):
    caplog.set_level(logging.INFO, logger="dangol_edge")
    broker, mina = persistent_broker, uuid.uuid4()
    cloud = Cloud(broker)
    cloud.publish(menu_topic(STORE, mina), menu(mina, ["latte"]), retain=True)
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert wait_for(lambda: state.menu(str(mina)) is not None)
        # staff erase Mina on the staff page: the daemon's erasure of the state file (a request to the cloud)
        Outbox(DEVICE, state, sync).erase([str(mina)], [EventFactory(DEVICE).erasure_done([str(mina)])])
        assert state.menu(str(mina)) is None
        restart(broker, sync)   # any broker restart or network blip: the retained menu comes again
        assert wait_for(lambda: state.menu(str(mina)) is not None or getattr(state, "refused_menus", 0) >= 1,
                        timeout=20)
        assert items(state, mina) is None, "the erased customer's retained menu was cached again"
        refused = state.refused_menus
        assert refused >= 1
        # a newer menu arriving late (the cloud trained before it heard of the erasure) is refused too
        cloud.publish(menu_topic(STORE, mina), menu_at(mina, ["scone"], datetime.now(timezone.utc) + timedelta(1)))
        assert wait_for(lambda: state.refused_menus == refused + 1)
        assert state.menu(str(mina)) is None
        assert sync.handle_message(menu_topic(STORE, mina), menu(mina, ["latte"])) == "erased"
        assert any(str(mina) in r.getMessage() and "erased" in r.getMessage() for r in caplog.records
                   if r.name.startswith("dangol_edge.state"))
        # another customer's menu is cached as ever
        other = uuid.uuid4()
        cloud.publish(menu_topic(STORE, other), menu(other, ["latte"]), retain=True)
        assert wait_for(lambda: items(state, other) == ["latte"])
    finally:
        sync.stop()
        cloud.close()


def test_a_cloud_erasure_is_remembered_so_a_late_menu_is_refused(broker, state):
    mina = uuid.uuid4()
    sync = make_sync(broker, state, on_erasure=lambda er: [str(c) for c in er.customer_ids])
    assert sync.handle_message(menu_topic(STORE, mina), menu_at(mina, ["latte"], T0)) == "menu"
    er = Erasures(store_id=STORE, erasure_id=uuid.uuid4(), requested_at=datetime.now(timezone.utc),
                  customer_ids=[mina])
    assert sync.handle_message(erasures_topic(STORE), dump_payload(er)) == "erasures"
    assert state.menu(str(mina)) is None
    # the training publish that was sending menus while the owner erased her: its menu comes after the erasure
    assert sync.handle_message(menu_topic(STORE, mina), menu_at(mina, ["scone"], T0 + timedelta(hours=1))) == "erased"
    assert state.menu(str(mina)) is None


def test_an_erasure_is_kept_in_the_state_file_for_other_processes_and_restarts(tmp_path):
    """``dangol-edge customers delete`` erases in its own process: the daemon's cache refuses the customer's menus
    at once, and after a restart; the id is recorded in the same transaction as the rest of the erasure (a full disk
    changes neither)."""
    path = tmp_path / "state.sqlite"
    daemon = StateStore(path).open()
    mina, bo = uuid.uuid4(), uuid.uuid4()
    assert daemon.put_menu(json.loads(menu_at(mina, ["latte"], T0)))
    cli = StateStore(path).open()
    fill_the_outbox(cli)   # its confirmation cannot be queued: the erasure's transaction fails after the deletions
    with pytest.raises(sqlite3.OperationalError, match="full"):
        Outbox(DEVICE, cli).erase([str(mina)], [EventFactory(DEVICE).erasure_done([str(mina)])])
    cli.close()
    fresh = StateStore(path).open()   # a third process: nothing of the failed erasure is in the file
    assert items(fresh, mina) == ["latte"]
    assert fresh.put_menu(json.loads(menu_at(mina, ["scone"], T0 + timedelta(minutes=1))))
    fresh.close()
    cli = StateStore(path).open()
    Outbox(DEVICE, cli).erase([str(mina)], [EventFactory(DEVICE).erasure_done([str(mina)])])
    cli.close()
    assert daemon.menu(str(mina)) is None
    assert daemon.put_menu(json.loads(menu_at(mina, ["latte"], T0 + timedelta(hours=2)))) is False
    assert daemon.menu(str(mina)) is None and daemon.refused_menus == 1
    assert daemon.put_menu(json.loads(menu_at(bo, ["latte"], T0)))
    daemon.close()
    daemon = StateStore(path).open()   # the daemon restarts
    try:
        assert daemon.put_menu(json.loads(menu_at(mina, ["latte"], T0 + timedelta(hours=3)))) is False
        assert daemon.menu(str(mina)) is None and items(daemon, bo) == ["latte"]
    finally:
        daemon.close()


def test_erased_ids_are_bounded_oldest_first(tmp_path, monkeypatch, caplog):
    from dangol_edge import state_erased

    monkeypatch.setattr(state_erased, "ERASED_MAX", 3)
    st = StateStore(tmp_path / "state.sqlite").open()
    try:
        ids = [uuid.uuid4() for _ in range(5)]
        for cid in ids:
            st.erase_customers([str(cid)])
        assert st.erased_count() == 3
        assert any(r.levelno == logging.WARNING and "erased" in r.getMessage() for r in caplog.records)
        # the two oldest are forgotten (their menus would be cached again), the newest three still refused
        assert [st.put_menu(json.loads(menu_at(c, ["latte"], T0))) for c in ids] == [True, True, False, False, False]
    finally:
        st.close()


# --- 2. a catalogue or menu that cannot be saved is held and retried ------------------------------------------------

def housekeeping(tmp_path, monkeypatch, state, sync, gallery) -> HousekeepingWorker:
    for k in ("DANGOL_HOME", "DANGOL_MQTT_URL"):
        monkeypatch.delenv(k, raising=False)
    return HousekeepingWorker(EdgeConfig(home=tmp_path / "home"), gallery, state, Outbox(DEVICE, state, sync), sync,
                              sync.stats, on_erased=lambda cid: None, health=lambda: None,
                              stop_event=threading.Event())


def test_a_catalogue_and_a_menu_that_cannot_be_saved_are_saved_by_the_next_housekeeping_pass(
        tmp_path, monkeypatch, broker, state, gallery, caplog):
    cloud = Cloud(broker)
    cloud.publish(catalogue_topic(STORE), catalogue(1), retain=True)
    changes = []
    sync = make_sync(broker, state, on_change=changes.append, stats=Stats())
    sync.start()
    try:
        assert wait_for(lambda: state.catalogue() is not None)
        fill_the_disk(state)   # the SD card fills up (logs, …)
        mina = uuid.uuid4()
        cloud.publish(catalogue_topic(STORE), big_catalogue(2, available_latte=False), retain=True)   # latte sold out
        cloud.publish(menu_topic(STORE, mina), menu(mina, ["scone"]), retain=True)
        assert wait_for(lambda: sync.stats.storage == "full"), "the failed save was not reported in the health"
        assert wait_for(lambda: sync.downlink.held == 2)
        assert sync.downlink.errors == 2
        assert state.catalogue().version == 1 and state.menu(str(mina)) is None
        changes.clear()
        hk = housekeeping(tmp_path, monkeypatch, state, sync, gallery)
        assert hk.tidy() is False   # still full: held, failed again (counted)
        assert sync.downlink.held == 2 and sync.downlink.errors == 4 and sync.stats.storage == "full"
        free_the_disk(state)   # space is freed
        assert hk.tidy() is True
        cat = state.catalogue()
        assert cat.version == 2 and [i.available for i in cat.items if i.id == "latte"] == [False]
        assert items(state, mina) == ["scone"]
        assert sync.downlink.held == 0 and sync.stats.storage == "ok"
        assert "catalogue" in changes and "menu" in changes
        first = [r for r in caplog.records if r.name == "dangol_edge.downlink" and r.levelno >= logging.ERROR]
        assert first and first[0].exc_info, "the first failure is logged with its traceback"
    finally:
        sync.stop()
        cloud.close()


def test_held_menus_are_bounded_newest_per_customer_and_dropped_ones_come_back(broker, state, monkeypatch):
    from dangol_edge import downlink

    monkeypatch.setattr(downlink, "MENUS_HELD_MAX", 3)
    cloud = Cloud(broker)
    cloud.publish(catalogue_topic(STORE), catalogue(1), retain=True)
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert wait_for(lambda: state.catalogue() is not None)
        fill_the_disk(state)
        custs = [uuid.uuid4() for _ in range(4)]
        for c in custs:
            cloud.publish(menu_topic(STORE, c), menu_at(c, ["latte"], T0), retain=True)
        last = custs[-1]
        cloud.publish(menu_topic(STORE, last), menu_at(last, ["scone"], T0 + timedelta(hours=1)), retain=True)
        cloud.publish(menu_topic(STORE, last), menu_at(last, ["latte", "scone"], T0 - timedelta(hours=1)))  # late
        assert wait_for(lambda: sync.downlink.errors == 6)
        assert sync.downlink.held == 3 and sync.downlink.dropped == 1   # the oldest (custs[0]) went
        assert sync.handle_message(menu_topic(STORE, custs[1]), menu_at(custs[1], ["latte"], T0)) == "held"
        assert sync.retry_downlink() == 3   # still full
        free_the_disk(state)
        assert sync.retry_downlink() == 0
        assert items(state, last) == ["scone"], "the newest menu of a customer is the one kept"
        assert items(state, custs[1]) == items(state, custs[2]) == ["latte"]
        # the dropped one is still retained by the broker: the sync subscribed again and it came back
        assert wait_for(lambda: items(state, custs[0]) == ["latte"])
    finally:
        sync.stop()
        cloud.close()


def test_a_menu_clear_that_cannot_be_saved_is_held_and_replaces_a_held_menu(broker, state):
    mina = uuid.uuid4()
    sync = make_sync(broker, state)   # not started: handle_message is what paho's thread calls
    assert sync.handle_message(menu_topic(STORE, mina), menu_at(mina, ["latte"], T0)) == "menu"
    other = sqlite3.connect(state.path, isolation_level=None)   # another writer holds the file's lock
    state.db.execute("PRAGMA busy_timeout = 100")
    other.execute("BEGIN IMMEDIATE")
    try:
        assert sync.handle_message(menu_topic(STORE, mina), menu_at(mina, ["scone"], T0 + timedelta(1))) == "held"
        assert sync.handle_message(menu_topic(STORE, mina), b"") == "held"   # the cloud cleared it (consent withdrawn)
        assert sync.downlink.held == 1 and sync.stats.storage == "error"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert sync.retry_downlink() == 0
    assert state.menu(str(mina)) is None and sync.stats.storage == "ok"


# --- 3. acknowledgements of publishes made while the connection drops -----------------------------------------------

def test_a_publish_made_while_the_connection_drops_is_settled_by_its_own_puback(broker, state):
    """paho keeps a QoS 1 message that ``publish()`` reported "not connected" and sends it after reconnecting; its
    PUBACK must settle that event, and must not stay behind to settle whatever event later gets the same message id
    (paho's ids are 16 bits: they come round again)."""
    cloud = Cloud(broker)  # subscribed to the events (else the broker delivers them to nobody: they stay held)
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert sync.connected.wait(10)
        c = sync._client
        published = []   # (message id, rc) of every publish the sync makes
        paho_publish = c.publish

        def recording_publish(*a, **kw):
            info = paho_publish(*a, **kw)
            published.append((info.mid, info.rc))
            return info
        c.publish = recording_publish
        paho_close = c._sock_close

        def slow_close():   # a pause of paho's network thread between losing the socket and on_disconnect
            had = c._sock is not None
            paho_close()
            if had:
                time.sleep(1.5)
        c._sock_close = slow_close
        port = broker.port
        kill(broker)
        assert wait_for(lambda: c._sock is None, timeout=5) and sync.connected.is_set()
        first = arrival()
        sync.send_event(first)   # the flusher publishes in that window: paho keeps it for after the reconnect
        assert wait_for(lambda: any(rc == 4 for _, rc in published), timeout=5)   # MQTT_ERR_NO_CONN
        kept_mid = next(mid for mid, rc in published if rc == 4)
        broker.start(port=port)
        # the broker kept no sessions: the event may reach nobody until the cloud subscribes again, then waits out
        # its back-off (1, 2, 4, 8, 16 s), so allow for a slow reconnection under load
        assert wait_for(lambda: sync.connected.is_set() and state.outbox_depth() == 0, timeout=60)
        time.sleep(0.5)
        assert dict(sync._early) == {}, "a PUBACK was left behind"
        assert sync._inflight == {}
        # normal operation goes on until paho's message id comes round to that one again
        before = (kept_mid - 2) % 65535 + 1   # the id paho gives just before kept_mid (ids run 1 … 65535)
        while True:
            info = sync._publish(status_topic(DEVICE), b"{}", None)
            if info.mid == before:
                break
            if info.mid % 5000 == 0:
                time.sleep(0.05)
        assert wait_for(lambda: not sync._inflight, timeout=20)
        broker._proc.send_signal(signal.SIGSTOP)   # the network stalls: nothing is acknowledged now
        try:
            second = arrival()
            sync.send_event(second)
            assert wait_for(lambda: published[-1][0] == kept_mid, timeout=5)
            time.sleep(0.5)
            assert str(second.event_id) in {e["event_id"] for e in state.pending(100)}, \
                "an event was marked sent before the broker acknowledged it"
        finally:
            broker._proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: state.outbox_depth() == 0, timeout=20)
    finally:
        sync.stop()
        cloud.close()


def test_leftover_acknowledgements_are_cleared_on_reconnect_and_bounded(broker, state):
    from dangol_edge.sync_uplink import EARLY_MAX

    cloud = Cloud(broker)  # subscribed to the events (else the broker delivers them to nobody: they stay held)
    sync = make_sync(broker, state)
    sync.start()
    try:
        assert sync.connected.wait(10)
        for mid in range(60_000, 60_000 + EARLY_MAX + 500):   # PUBACKs of message ids nobody is waiting for
            sync._on_publish(sync._client, None, mid, 0, None)
        assert len(sync._early) <= EARLY_MAX
        restart(broker, sync)
        assert dict(sync._early) == {}
        ev = arrival()
        sync.send_event(ev)
        assert wait_for(lambda: state.outbox_depth() == 0)
    finally:
        sync.stop()
        cloud.close()
