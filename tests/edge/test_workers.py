"""The daemon's workers: bounded memory over a long run, a failing recognizer starves the watchdog, expired
sign-ups and held events reach the cloud."""

from __future__ import annotations

import json
import logging
import queue
import socket
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from dangol_edge.daemon import Appliance
from dangol_edge.events import HELD_MAX, EventFactory, EventNotSaved, Outbox
from dangol_edge.recognition import Recognizer
from dangol_edge.screen import Screen
from dangol_edge.state import StateStore
from dangol_edge.tracker import Decision
from dangol_edge.workers import ArrivalWorker, Stats
from dangol_edge.workers.base import ARRIVAL_TIMES_KEPT
from dangol_edge.workers.recognition import FAILING_AFTER
from tests.edge.test_daemon import DEVICE, LIN, catalogue_payload, config, home  # noqa: F401
from tests.edge.test_sync import wait_for


def test_arrival_times_stay_bounded_over_a_long_run(tmp_path, home, model_path, clips):  # noqa: F811
    """A day at a busy door is far more arrivals than this; the list must not grow with them."""
    from dangol_edge.embed import file_sha256
    from dangol_edge.gallery import Gallery

    cfg = config(home, model_path, clips)
    with Gallery(cfg.gallery_path, file_sha256(model_path)) as gallery, StateStore(cfg.state_path) as state:
        state.put_catalogue(catalogue_payload())
        stats = Stats()
        worker = ArrivalWorker(cfg, gallery, state, Screen(), EventFactory(DEVICE), Outbox(DEVICE, state),
                               queue.Queue(), stats, threading.Event())
        n = 3 * ARRIVAL_TIMES_KEPT
        for i in range(n):
            worker.handle(Decision(kind="known", track_id=i, ts=float(i), first_ts=float(i), votes=3, frames=3,
                                   customer_id=LIN, score=0.8, arrival=True))
        assert stats.arrivals == n
        assert len(stats.arrival_times) == ARRIVAL_TIMES_KEPT
        assert stats.arrival_times[-1][0] == float(n - 1)  # the newest are kept
        assert state.outbox_depth() == n  # every arrival was reported


def test_events_held_while_the_outbox_cannot_be_written_are_bounded_and_retried(tmp_path):
    with StateStore(tmp_path / "state.sqlite") as state:
        outbox = Outbox(DEVICE, state)
        events = EventFactory(DEVICE)
        pages = state.db.execute("PRAGMA page_count").fetchone()[0]
        state.db.execute(f"PRAGMA max_page_count = {pages}")  # the medium is full
        with pytest.raises(sqlite3.OperationalError):
            for i in range(100_000):
                state.enqueue(f"filler-{i}", "filler", "x" * 512)
        first = events.erasure_done([LIN])
        with pytest.raises(EventNotSaved):
            outbox.send(first)
        for _ in range(HELD_MAX + 10):
            with pytest.raises(EventNotSaved):
                outbox.send(events.arrival(None, None, []))
        assert outbox.held == HELD_MAX and outbox.dropped == 11
        assert outbox.retry() == 0 and outbox.held == HELD_MAX  # still full: kept
        state.db.execute("DELETE FROM outbox WHERE event_id LIKE 'filler-%'")
        state.db.execute("PRAGMA max_page_count = 1073741823")
        assert outbox.retry() == HELD_MAX and outbox.held == 0
        assert state.outbox_depth() == HELD_MAX


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A fake systemd notify socket with a 0.4 s watchdog, drained by a thread (a full datagram queue would
    block the sender); yields a function returning the messages received since its last call."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    got: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            try:
                msg = sock.recv(4096).decode()
            except (socket.timeout, BlockingIOError):
                continue
            with lock:
                got.append(msg)
    t = threading.Thread(target=drain, daemon=True)
    t.start()

    def received() -> list[str]:
        with lock:
            out = list(got)
            got.clear()
        return out
    yield received
    done.set()
    t.join(2)
    sock.close()


def test_a_failing_recognizer_starves_the_watchdog_and_reports_failing(  # noqa: F811
        home, model_path, clips, monkeypatch, caplog, notify_socket):
    working = Recognizer.process
    calls = []

    def broken(self, frame):
        calls.append(frame.index)
        raise RuntimeError("interpreter crashed")

    monkeypatch.setattr(Recognizer, "process", broken)
    caplog.set_level(logging.INFO, logger="dangol_edge")
    app = Appliance(config(home, model_path, clips, camera={"loop": True, "realtime": True}))
    app.start()
    try:
        assert wait_for(lambda: app.health().recognition == "failing", timeout=30)
        assert app.health().fps == 0.0
        notify_socket()
        n = len(calls)
        time.sleep(1.5)
        assert len(calls) > n + 5, "frames kept coming and kept failing"
        assert "WATCHDOG=1" not in notify_socket(), "the watchdog was fed while recognition failed"
        failed = [r for r in caplog.records if r.getMessage().startswith("recognition failed on frame")]
        assert len(failed) == 1 and failed[0].exc_info is not None, "one traceback per failure streak"
        assert sum(r.exc_info is not None for r in caplog.records) == 1

        monkeypatch.setattr(Recognizer, "process", working)  # recovers (e.g. a transient fault)
        assert wait_for(lambda: app.health().recognition == "ok", timeout=30)
        assert wait_for(lambda: "WATCHDOG=1" in notify_socket(), timeout=5)
        assert any("recovered after" in r.getMessage() for r in caplog.records)
        assert len(calls) > FAILING_AFTER
    finally:
        app.stop()


def test_an_expired_sign_up_is_reported_to_the_cloud(home, model_path, clips):  # noqa: F811
    from dangol_edge.embed import file_sha256
    from dangol_edge.gallery import Gallery

    with Gallery(home / "gallery.sqlite", file_sha256(model_path)) as g:
        emb = g.matrix_for(file_sha256(model_path))[0][:1]
        pending = g.enroll("", emb, status="pending", pending_ttl_s=3600)
        past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat(timespec="seconds")
        g.db.execute("UPDATE customers SET expires_at = ? WHERE id = ?", [past, pending.id])
    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")}))
    app.start()
    try:
        assert wait_for(lambda: not app.gallery.customers(status="pending"), timeout=15)
        assert wait_for(lambda: any(
            e["kind"] == "erasure-done" and e["customer_ids"] == [pending.id] and e["erasure_id"] is None
            for e in (json.loads(p["payload"]) for p in app.state.pending(100))), timeout=5)
        assert [c.id for c in app.gallery.customers()] == [LIN]
    finally:
        app.stop()


def test_event_factory_fills_id_device_and_time():
    device = uuid.uuid4()
    f = EventFactory(device)
    a, b = f.arrival(LIN, 1.7, ["latte"]), f.arrival(None, None, [])
    assert a.event_id != b.event_id and a.device_id == device and a.ts.tzinfo is not None
    assert a.confidence == 1.0 and b.customer_id is None


def test_enrolment_requests_are_bounded_and_drops_counted():
    """A stuck recognition thread must not let button presses or staff clicks pile up without bound."""
    from dangol_edge.config import EdgeConfig
    from dangol_edge.workers.enrolment import ButtonEnrolment

    e = ButtonEnrolment(EdgeConfig(), gallery=None, screen=None, events=None, outbox=None)
    assert all(e.ask("enrol", source="test") for _ in range(e.requests.maxsize))
    assert e.ask("cancel", source="test") is False and e.requests_dropped == 1
    with pytest.raises(ValueError, match="expected 'enrol' or 'cancel'"):
        e.ask("erase")


def _signup(tmp_path, model_path, **enrol):
    """A ButtonEnrolment over a real gallery, state store and screen (no daemon threads)."""
    from dangol_edge.config import EdgeConfig
    from dangol_edge.embed import file_sha256
    from dangol_edge.gallery import Gallery
    from dangol_edge.workers.enrolment import ButtonEnrolment

    cfg = EdgeConfig().model_copy(update={"enrol": EdgeConfig().enrol.model_copy(update=enrol)})
    gallery = Gallery(tmp_path / "gallery.sqlite", file_sha256(model_path)).open()
    state = StateStore(tmp_path / "state.sqlite").open()
    screen = Screen()
    e = ButtonEnrolment(cfg, gallery, screen, EventFactory(DEVICE), Outbox(DEVICE, state), stats=Stats())
    return e, gallery, state, screen


def _frames(clips, n):
    import cv2

    from dangol_edge.sources import Frame

    rgb = cv2.cvtColor(cv2.imread(str(clips / "obama.jpg")), cv2.COLOR_BGR2RGB)
    return [Frame(rgb=rgb, ts=float(i), index=i) for i in range(n)]


def test_a_sign_up_ends_when_the_gallery_is_corrupt(tmp_path, model_path, clips, pipeline, monkeypatch):
    """A failing SD card returns a malformed page (sqlite3.DatabaseError, not the OperationalError of a full
    disk): the sign-up must end with "couldn't save" and raise once for the worker to log and count — not retry
    the save on every later frame with the screen stuck on "capturing"."""
    e, gallery, state, screen = _signup(tmp_path, model_path)
    tries = []

    def malformed(*args, **kwargs):  # what sqlite3 raises for a corrupt page read from the medium
        tries.append(1)
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(gallery, "enroll", malformed)
    assert e.ask("enrol", source="test")
    e.handle_requests()
    raised = 0
    for frame in _frames(clips, 200):
        if not e.active:
            break
        try:
            e.step(frame, pipeline)
        except sqlite3.DatabaseError:
            raised += 1
    assert (raised, len(tries)) == (1, 1)
    assert not e.active
    assert screen.snapshot()["stage"] == "not-saved" and e.stats.storage == "error"
    assert gallery.customers(status=None) == [] and state.pending(10) == []
    gallery.close()
    state.close()


def test_a_sign_up_ends_when_every_frame_fails(tmp_path, model_path, clips, pipeline, monkeypatch):
    """The face pipeline raising on every frame (e.g. an inference fault) must not keep the sign-up open past
    ``enrol.max_frames``: it ends as "failed" like a sign-up that saw no good face."""
    e, gallery, state, screen = _signup(tmp_path, model_path, max_frames=30)

    def broken(*args, **kwargs):
        raise RuntimeError("inference failed")

    monkeypatch.setattr(pipeline, "process", broken)
    assert e.ask("enrol", source="test")
    e.handle_requests()
    steps = 0
    for frame in _frames(clips, 100):
        if not e.active:
            break
        steps += 1
        with pytest.raises(RuntimeError):
            e.step(frame, pipeline)
    assert steps == 30 and not e.active
    assert screen.snapshot()["stage"] == "failed"
    gallery.close()
    state.close()
