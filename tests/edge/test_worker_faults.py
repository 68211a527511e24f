"""Worker faults: a camera read error is retried (never fatal), a crashed worker fails health and starves the
watchdog, erasures during a model upgrade leave its old-model matcher, the upgrade ends on time while the daemon
runs, and a housekeeping pass survives any error without losing an erasure report."""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
import types
import uuid
from datetime import datetime, timedelta, timezone

import cv2
import numpy as np
import pytest

from dangol_edge.config import EdgeConfig
from dangol_edge.daemon import Appliance
from dangol_edge.embed import Embedder, file_sha256
from dangol_edge.enrol import sample_from_photo
from dangol_edge.events import EventFactory, Outbox
from dangol_edge.gallery import Gallery
from dangol_edge.sources import Frame, Picamera2Source, SourceError, read_image
from dangol_edge.state import StateStore
from dangol_edge.upgrade import STARTED_KEY
from dangol_edge.workers import ArrivalWorker, CaptureWorker, HousekeepingWorker, Stats
from dangol_protocol import Consent
from tests.edge.test_daemon import DEVICE, STORE, config, home  # noqa: F401
from tests.edge.test_sync import wait_for
from tests.edge.test_workers import notify_socket  # noqa: F401

CONSENT = Consent(recorded_by="test", recorded_at=datetime.now(timezone.utc), text_version="1")


# --- capture -------------------------------------------------------------------------------------------------
def test_a_camera_read_error_is_retried_and_reported_not_fatal(tmp_path, clips, monkeypatch, caplog):
    cam = tmp_path / "camera"
    cam.mkdir()
    img = cv2.imread(str(clips / "obama.jpg"))
    for i in range(3):
        cv2.imwrite(str(cam / f"f{i}.jpg"), img)
    broken = threading.Event()
    reads = []

    def flaky_read(path):  # the driver raises something that is not a SourceError (libcamera: RuntimeError)
        reads.append(path)
        if broken.is_set():
            raise RuntimeError("Camera frontend has timed out!")
        return read_image(path)

    monkeypatch.setattr("dangol_edge.sources.read_image", flaky_read)
    caplog.set_level(logging.INFO, logger="dangol_edge")
    cfg = EdgeConfig(camera={"source": str(cam), "loop": True, "realtime": True, "retry_min_s": 0.05,
                             "retry_max_s": 0.1})
    stats, stop, frames = Stats(), threading.Event(), queue.Queue(maxsize=2)
    w = CaptureWorker(cfg, str(cam), frames, stats, stop)
    w.start()
    try:
        assert wait_for(lambda: stats.frames_captured >= 3 and stats.camera == "ok", timeout=10)
        broken.set()
        wait_for(lambda: not w.is_alive() or getattr(stats, "camera_errors", 0) >= 3, timeout=10)
        assert w.is_alive() and not w.crashed
        assert stats.camera_errors >= 3, "the source is reopened after each error"
        assert stats.camera == "error"
        tracebacks = [r for r in caplog.records if r.exc_info is not None]
        assert len(tracebacks) == 1, "one traceback per error streak"
        broken.clear()  # the camera works again
        n = stats.frames_captured
        assert wait_for(lambda: stats.camera == "ok" and stats.frames_captured > n + 3, timeout=10)
        assert any("camera recovered" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        w.join(5)


class _FakeCamera:
    """Stands in for picamera2.Picamera2 (the one piece of hardware faked): capture_array fails like libcamera."""

    error: Exception = RuntimeError("Camera frontend has timed out!")

    def __init__(self, num):
        self.num = num

    def create_video_configuration(self, **kw):
        return kw

    def configure(self, cfg):
        pass

    def start(self):
        pass

    def stop(self):
        pass

    def close(self):
        pass

    def capture_array(self, stream):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("Camera frontend has timed out!"), IndexError("list index")])
def test_picamera2_read_errors_are_source_errors(monkeypatch, error):
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=_FakeCamera))
    monkeypatch.setattr(_FakeCamera, "error", error)
    src = Picamera2Source(0, (64, 48)).open()
    try:
        with pytest.raises(SourceError, match="picamera2:0"):
            next(src.frames())
    finally:
        src.close()


# --- a crashed worker ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("worker", [CaptureWorker, ArrivalWorker])
def test_a_crashed_worker_fails_health_and_starves_the_watchdog(home, model_path, clips, monkeypatch,  # noqa: F811
                                                                notify_socket, worker):  # noqa: F811
    def crash(self):
        raise RuntimeError("a bug in the worker")

    monkeypatch.setattr(worker, "loop", crash)
    app = Appliance(config(home, model_path, clips, camera={"loop": True, "realtime": True}))
    app.start()
    try:
        assert wait_for(lambda: any(w.crashed for w in app.workers), timeout=10)
        h = app.health()
        if worker is CaptureWorker:
            assert h.camera == "error"
        else:
            assert h.recognition == "failing"
        notify_socket()
        time.sleep(1.5)
        assert "WATCHDOG=1" not in notify_socket(), "the watchdog was fed while a worker was dead"
    finally:
        app.stop()


# --- model upgrades ------------------------------------------------------------------------------------------
@pytest.fixture
def upgrade_home(tmp_path, clips, facenet_path):
    """A home whose gallery has only FaceNet templates (Lin-Manuel and Obama): the device now runs SFace."""
    from dangol_edge.detect import FaceDetector
    from dangol_edge.faces import FacePipeline

    h = tmp_path / "home"
    old = Embedder(facenet_path)
    with Gallery(h / "gallery.sqlite", old.sha256) as g:
        p = FacePipeline(FaceDetector.beside(facenet_path), old)
        lin = g.enroll("Lin-Manuel Miranda", sample_from_photo(clips / "lin-manuel-miranda.png", p).embedding[None],
                       consent=CONSENT)
        obama = g.enroll("Barack Obama", sample_from_photo(clips / "obama.jpg", p).embedding[None], consent=CONSENT)
        p.close()
    return h, lin.id, obama.id


def _upgrade_config(h, model_path, facenet_path, clips, **extra):
    return config(h, model_path, clips, embedder={"previous_model_path": facenet_path},
                  camera={"source": str(clips / "biden.jpg")}, **extra)  # a stranger at the door


def test_erasures_during_an_upgrade_leave_its_matcher(upgrade_home, model_path, facenet_path, clips):
    from dangol_protocol import Erasures

    h, lin, obama = upgrade_home
    app = Appliance(_upgrade_config(h, model_path, facenet_path, clips))
    app.start()
    try:
        up = app.recognizer.upgrade
        assert up is not None and up.matcher.customers == 2
        app.gallery.delete(lin)  # the staff page's "Erase": delete, then the daemon's callback
        app._on_erase_local(lin)
        assert up.matcher.customers == 1 and lin not in up.loaded
        app._on_erasures(Erasures(store_id=STORE, erasure_id=uuid.uuid4(), requested_at=datetime.now(timezone.utc),
                                  customer_ids=[uuid.UUID(obama)]))  # erased by the cloud
        assert up.matcher.customers == 0
    finally:
        app.stop()


def test_an_erased_customer_seen_during_an_upgrade_does_not_fail_the_frame(upgrade_home, model_path, facenet_path,
                                                                           clips, caplog):
    from dangol_edge.recognition import Recognizer

    h, lin, obama = upgrade_home
    cfg = _upgrade_config(h, model_path, facenet_path, clips)
    gallery = Gallery(cfg.gallery_path, file_sha256(model_path)).open()
    rec = Recognizer.from_config(cfg, gallery=gallery)
    try:
        assert rec.upgrade.matcher.customers == 2
        Gallery(cfg.gallery_path, file_sha256(model_path)).open().delete(lin)  # `dangol-edge customers delete`
        rgb = read_image(clips / "lin-manuel-miranda.png")
        for i in range(cfg.tracker.min_votes):  # he walks in: the old model still knows him (its vote), the gallery not
            rec.process(Frame(rgb=rgb, ts=i * 0.1, index=i))
        assert rec.upgrade.erased_dropped == 1
        assert lin not in rec.upgrade.loaded and rec.upgrade.matcher.customers == 1
        assert any("erased" in r.getMessage() for r in caplog.records)
        assert gallery.template_models().get(lin) is None
        rec.process(Frame(rgb=rgb, ts=1.0, index=10))  # and again: nothing left to fail on
        assert rec.upgrade.erased_dropped == 1
    finally:
        rec.close()
        gallery.close()


def test_the_upgrade_ends_on_time_while_the_daemon_runs(upgrade_home, model_path, facenet_path, clips):
    h, lin, obama = upgrade_home
    app = Appliance(_upgrade_config(h, model_path, facenet_path, clips))
    app.start()
    try:
        up = app.recognizer.upgrade
        assert up is not None and not up.done and app.gallery.stale_templates == 2
        # 31 days later, the daemon still running and neither regular back: the upgrade period is over
        past = (datetime.now(timezone.utc) - timedelta(days=31)).isoformat(timespec="seconds")
        app.gallery.set_meta(STARTED_KEY, past)
        assert wait_for(lambda: up.done, timeout=10), "upgrade.check() must run periodically"
        assert app.gallery.stale_templates == 0 and app.gallery.meta(STARTED_KEY) is None
    finally:
        app.stop()


# --- housekeeping --------------------------------------------------------------------------------------------
def test_a_housekeeping_pass_survives_any_error_and_keeps_erasure_reports(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dangol_edge")
    cfg = EdgeConfig(home=tmp_path, mqtt={"status_interval_s": 1})
    gallery = Gallery(cfg.gallery_path, "sha-a").open()
    state = StateStore(cfg.state_path).open()
    emb = np.eye(1, 128, dtype=np.float32)
    pending = [gallery.enroll("", emb, status="pending", pending_ttl_s=3600).id for _ in range(2)]
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat(timespec="seconds")
    gallery.db.execute("UPDATE customers SET expires_at = ?", [past])
    events, outbox = EventFactory(DEVICE), Outbox(DEVICE, state)
    menu_fails = [True]

    def on_erased(cid):  # what the daemon does: forget the menu, report to the cloud
        if menu_fails[0]:
            raise RuntimeError("delete_menu: database disk image is malformed")
        state.delete_menu(cid)
        outbox.send(events.erasure_done([cid]))

    health_fails = [True]

    def health():
        if health_fails[0]:
            raise RuntimeError("health: a bug")
        return None

    class Sync:
        published = []

        def publish_status(self, h):
            self.published.append(h)

        def retry_erasures(self):
            return 0

    stats, stop = Stats(), threading.Event()
    w = HousekeepingWorker(cfg, gallery, state, outbox, Sync(), stats, on_erased, health, stop)
    w.start()
    try:
        wait_for(lambda: not w.is_alive() or getattr(stats, "housekeeping_failures", 0) >= 2, timeout=5)
        assert w.is_alive() and not w.crashed
        assert stats.housekeeping_failures >= 2
        assert not gallery.customers(status="pending")  # erased; their reports wait for the next pass
        assert state.outbox_depth() == 0
        assert any(r.exc_info is not None for r in caplog.records)
        menu_fails[0] = health_fails[0] = False
        reported = lambda: sorted(c for p in state.pending(100)  # noqa: E731
                                  for c in json.loads(p["payload"])["customer_ids"])
        assert wait_for(lambda: reported() == sorted(pending), timeout=5), "every erasure reported, once"
        assert wait_for(lambda: Sync.published, timeout=5)
        time.sleep(1.2)
        assert reported() == sorted(pending)
    finally:
        stop.set()
        w.join(5)
        gallery.close()
        state.close()
