"""``dangol-edge run``: the appliance daemon.

Structure (after Frigate): one stop event; components started in order and stopped in reverse —
state cache → gallery → display server → MQTT sync → GPIO button → recognition thread → capture
thread → housekeeping thread. Capture feeds recognition through a bounded queue that drops the
oldest frame (and counts it) when recognition falls behind, so the screen reacts to *now*, not to a
backlog. systemd gets READY=1 once everything is up and WATCHDOG=1 while recognition is alive.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import sqlite3
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from .config import EdgeConfig
from .embed import Embedder
from .enrol import Sample, SampleCollector
from .gallery import Gallery, UnknownCustomer
from .recognition import Recognizer
from .screen import Screen
from .sdnotify import notify, watchdog_interval
from .sources import Frame, SourceError, open_source
from .state import StateStore

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters for health and benchmarks (read from any thread)."""

    frames_captured: int = 0
    frames_dropped: int = 0
    frames_processed: int = 0
    arrivals: int = 0
    unknown: int = 0
    camera: str = "missing"
    storage: str = "ok"
    fps: float = 0.0
    last_heartbeat: float = field(default_factory=time.monotonic)
    #: (capture time of the track's first frame, decision time), monotonic seconds, per arrival
    arrival_times: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class _Enrolment:
    started: float
    collector: SampleCollector
    samples: list[Sample] = field(default_factory=list)
    frames: int = 0


class Appliance:
    """The whole edge box. Nothing is opened in the constructor; call :meth:`run` (blocking) or
    :meth:`start` / :meth:`stop`.

    Args:
        config: the edge config (device ids, camera, MQTT, display, GPIO …).
        source: override ``config.camera.source``.
        pin_factory: gpiozero pin factory (tests: ``MockFactory()``); None = gpiozero's default.
    """

    def __init__(self, config: EdgeConfig, source: str | None = None, pin_factory=None):
        self.config = config
        self.source_spec = source or config.camera.source
        self.pin_factory = pin_factory
        self.stop_event = threading.Event()
        self.stats = Stats()
        self.screen = Screen()
        self.frames: queue.Queue[tuple[Frame, float]] = queue.Queue(maxsize=config.camera.queue_size)
        self.requests: queue.Queue[str] = queue.Queue(maxsize=16)
        self.device_id = config.device.id or uuid.UUID(int=0)
        self.store_id = config.device.store_id or uuid.UUID(int=0)
        self._threads: list[threading.Thread] = []
        self._stoppers: list = []
        self._enrol: _Enrolment | None = None
        self._fps_window: deque[float] = deque(maxlen=60)
        self.state: StateStore | None = None
        self.gallery: Gallery | None = None
        self.sync = None
        self.web = None
        self.button = None
        self.recognizer: Recognizer | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every component in order; on failure, stop what was started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        self.state = StateStore(cfg.state_path).open()
        self._stoppers.append(self.state.close)
        embedder = Embedder(cfg.model_path, threads=cfg.embedder.threads).open()
        self.gallery = Gallery(cfg.gallery_path, embedder.sha256).open()
        self._stoppers.append(self.gallery.close)
        if self.gallery.stale_templates:
            log.warning("%d templates were made by another model and are ignored; re-enrol those customers",
                        self.gallery.stale_templates)
        self.recognizer = Recognizer.from_config(cfg, gallery=self.gallery, embedder=embedder)
        self._stoppers.append(self.recognizer.close)

        from .web import DisplayServer, create_app

        app = create_app(screen=self.screen, state=self.state, gallery=self.gallery, config=cfg,
                         on_activate=self._on_activate, on_erase=self._on_erase_local)
        self.web = DisplayServer(app, cfg.display.host, cfg.display.port)
        self.web.start()
        self._stoppers.append(self.web.stop)
        log.info("menu display on %s", self.web.url)

        if cfg.mqtt.url:
            from .sync import MQTTSync

            if cfg.device.id is None or cfg.device.store_id is None:
                from .config import ConfigError

                raise ConfigError("device.id and device.store_id are required when mqtt.url is set")
            self.sync = MQTTSync(cfg.mqtt, self.device_id, self.store_id, self.state,
                                 on_erasure=self._on_erasures, on_change=self._on_cache_change)
            self.sync.start()
            self._stoppers.append(self.sync.stop)
        else:
            log.warning("no broker configured: running offline on the cached catalogue and menus")

        if cfg.gpio.enabled:
            from .buttons import EnrolButton

            try:
                self.button = EnrolButton(cfg.gpio, self._request("enrol"), self._request("cancel"),
                                          pin_factory=self.pin_factory).open()
                self._stoppers.append(self.button.close)
            except Exception as exc:  # gpiozero raises its own hierarchy; no GPIO is not fatal
                log.error("enrolment button unavailable (%s): staff can still enrol from the CLI", exc)
                self.button = None

        for target, name in ((self._recognition_loop, "recognition"), (self._capture_loop, "capture"),
                             (self._housekeeping_loop, "housekeeping")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        notify("READY=1")
        log.info("dangol-edge running (device %s, store %s, source %s)", self.device_id, self.store_id, self.source_spec)

    def stop(self) -> None:
        """Set the stop event, join the threads and close components in reverse order. Idempotent."""
        self.stop_event.set()
        notify("STOPPING=1")
        for t in reversed(self._threads):
            t.join(timeout=5)
        if self._threads:
            st = self.stats
            log.info("stopped: frames captured %d, dropped %d, processed %d; arrivals %d, unknown faces %d",
                     st.frames_captured, st.frames_dropped, st.frames_processed, st.arrivals, st.unknown)
        self._threads.clear()
        while self._stoppers:
            fn = self._stoppers.pop()
            try:
                fn()
            except Exception:  # keep closing the rest; report each failure
                log.exception("error while stopping %s", getattr(fn, "__qualname__", fn))

    def run(self) -> int:
        """Start, wait for SIGTERM/SIGINT (or :attr:`stop_event`), stop. Returns the exit status."""
        def handler(signum, frame):
            log.info("signal %d: stopping", signum)
            self.stop_event.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.stop()
        return 0

    # --- capture -----------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        cam = self.config.camera
        delay = cam.retry_min_s
        while not self.stop_event.is_set():
            src = None
            try:
                src = self._make_source()
                src.open()
                self.stats.camera = "ok"
                delay = cam.retry_min_s
                ended = self._pump(src)
            except SourceError as exc:
                self.stats.camera = "missing"
                log.error("camera: %s; retrying in %.0f s", exc, delay)
                ended = False
                self.stop_event.wait(delay)
                delay = min(delay * 2, cam.retry_max_s)
            finally:
                if src is not None:
                    src.close()
            if ended and not cam.loop:
                log.info("video source ended; display keeps running")
                self.stats.camera = "ok"
                self.stop_event.wait()
                return

    def _make_source(self):
        if self.source_spec.startswith("picamera2"):
            from .sources import Picamera2Source

            cam = self.config.camera
            return Picamera2Source(int(self.source_spec.partition(":")[2] or 0), (cam.width, cam.height))
        return open_source(self.source_spec)

    def _pump(self, src) -> bool:
        """Move frames from an open source into the queue; True when a file source ended."""
        realtime = self.config.camera.realtime and not src.live
        t0 = time.monotonic()
        first_ts = None
        for frame in src.frames():
            if self.stop_event.is_set():
                return False
            if realtime:
                first_ts = frame.ts if first_ts is None else first_ts
                wait = (frame.ts - first_ts) - (time.monotonic() - t0)
                if wait > 0 and self.stop_event.wait(wait):
                    return False
            self.stats.frames_captured += 1
            item = (frame, time.monotonic())
            if not src.live and not realtime:
                # a file read as fast as possible: back-pressure instead of dropping (batch mode)
                while not self.stop_event.is_set():
                    try:
                        self.frames.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                continue
            try:
                self.frames.put_nowait(item)
            except queue.Full:
                try:
                    self.frames.get_nowait()  # drop the oldest: the screen must react to now
                    self.stats.frames_dropped += 1
                except queue.Empty:
                    pass
                self.frames.put_nowait(item)
        return not src.live

    # --- recognition -------------------------------------------------------------------------------
    def _recognition_loop(self) -> None:
        while not self.stop_event.is_set():
            self.stats.last_heartbeat = time.monotonic()
            self._handle_requests()
            self.screen.tick()
            try:
                frame, captured = self.frames.get(timeout=0.2)
            except queue.Empty:
                continue
            # one clock for the tracker and cool-downs: the capture time (monotonic), also for looping files
            frame = dataclasses.replace(frame, ts=captured)
            try:
                if self._enrol is not None:
                    self._enrol_step(frame)
                    continue
                res = self.recognizer.process(frame)
            except Exception:
                log.exception("recognition failed on frame %d", frame.index)
                continue
            self.stats.frames_processed += 1
            now = time.monotonic()
            self._fps_window.append(now)
            if len(self._fps_window) > 1:
                self.stats.fps = (len(self._fps_window) - 1) / max(1e-6, self._fps_window[-1] - self._fps_window[0])
            for d in res.decisions:
                try:
                    if d.kind == "known" and d.arrival:
                        self._arrival(d.customer_id, d.score, d.first_ts)
                    elif d.kind == "unknown":
                        self.stats.unknown += 1
                        self._send_arrival(None, None, [])
                    self.stats.storage = "ok"
                except sqlite3.OperationalError as exc:
                    # disk full / read-only medium: keep greeting people, report it, write nothing partial
                    self.stats.storage = "full" if "full" in str(exc) else "error"
                    log.error("cannot write the edge database (%s): event for %s not queued",
                              exc, d.customer_id or "an unknown face")

    def _arrival(self, customer_id: str, score: float, first_seen: float) -> None:
        try:
            customer = self.gallery.customer(customer_id)
        except UnknownCustomer:
            return  # erased meanwhile
        picks = self.picks_for(customer_id)
        decided = time.monotonic()
        self.screen.show_welcome(customer.first_name, picks, customer_id, self.config.display.welcome_s,
                                 arrival_ts=decided)
        self.gallery.touch(customer_id)
        self.stats.arrivals += 1
        self.stats.arrival_times.append((first_seen, decided))
        log.info("arrival: %s (score %.3f, %d picks)", customer_id, score, len(picks))
        self._send_arrival(customer_id, score, [p["id"] for p in picks])

    def picks_for(self, customer_id: str) -> list[dict]:
        """The customer's cached picks that the cached catalogue has and marks available, best first,
        at most ``display.picks``; without a menu, the catalogue's first available items (cold start)."""
        catalogue = self.state.catalogue() or {"items": []}
        items = {i["id"]: i for i in catalogue["items"] if i.get("available", True)}
        menu = self.state.menu(customer_id)
        ids = [p["item_id"] for p in menu["items"]] if menu else list(items)
        out = []
        for iid in ids:
            if iid in items:
                it = items[iid]
                out.append({k: it.get(k) for k in ("id", "name", "price", "category", "description")})
            if len(out) >= self.config.display.picks:
                break
        return out

    def _send_arrival(self, customer_id: str | None, score: float | None, shown: list[str]) -> None:
        if self.sync is None and self.state is None:
            return
        from dangol_protocol import ArrivalEvent, new_event_id

        ev = ArrivalEvent(event_id=new_event_id(), device_id=self.device_id, ts=datetime.now(timezone.utc),
                          customer_id=uuid.UUID(customer_id) if customer_id else None,
                          confidence=None if score is None else float(np.clip(score, 0.0, 1.0)), shown_items=shown)
        self._send(ev)

    def _send(self, event) -> None:
        if self.sync is not None:
            self.sync.send_event(event)
        else:  # offline box: keep it in the outbox for when a broker is configured
            from dangol_protocol import dump_payload
            from dangol_protocol.topics import events_topic

            self.state.enqueue(str(event.event_id), events_topic(self.device_id), dump_payload(event))

    # --- enrolment (GPIO button) --------------------------------------------------------------------
    def _request(self, what: str):
        def cb() -> None:
            try:
                self.requests.put_nowait(what)
            except queue.Full:
                log.warning("button request %r dropped (queue full)", what)
        return cb

    def _handle_requests(self) -> None:
        while True:
            try:
                req = self.requests.get_nowait()
            except queue.Empty:
                return
            if req == "enrol" and self._enrol is None:
                log.info("enrolment started")
                self._enrol = _Enrolment(started=time.monotonic(),
                                         collector=SampleCollector(self.config.enrol.templates))
                self.screen.show_enrolment("capturing")
                if self.button:
                    self.button.busy()
            elif req == "cancel" and self._enrol is not None:
                log.info("enrolment cancelled")
                self._enrol = None
                self.screen.show_enrolment("cancelled", seconds=3)
                if self.button:
                    self.button.done()

    def _enrol_step(self, frame: Frame) -> None:
        e = self._enrol
        cfg = self.config.enrol
        e.frames += 1
        col = e.collector
        if col.due(frame.index):
            faces = self.recognizer.pipeline.process(frame.rgb, max_faces=1)
            if col.offer(faces[0] if faces else None, frame.index):
                self.screen.show_enrolment("capturing", samples=len(col.candidates), wanted=col.pool)
        if col.full:
            e.samples = col.select()
        if e.samples:
            from .enrol import enroll

            c = enroll(self.gallery, "", e.samples, status="pending", keep_photos=cfg.keep_photos,
                       pending_ttl_s=cfg.pending_ttl_h * 3600)
            self._enrol = None
            self.screen.show_enrolment("pending", c.short_code, seconds=60)
            if self.button:
                self.button.done()
            log.info("pending customer %s (code %s)", c.id, c.short_code)
            from dangol_protocol import EnrolmentEvent, new_event_id

            self._send(EnrolmentEvent(event_id=new_event_id(), device_id=self.device_id,
                                      ts=datetime.now(timezone.utc), customer_id=uuid.UUID(c.id),
                                      status="pending", short_code=c.short_code))
        elif e.frames >= cfg.max_frames:
            self._enrol = None
            self.screen.show_enrolment("failed", seconds=5)
            if self.button:
                self.button.done()
            log.warning("enrolment failed: no good face in %d frames", cfg.max_frames)

    # --- callbacks from the web app and MQTT --------------------------------------------------------
    def _on_activate(self, customer) -> None:
        from dangol_protocol import Consent, EnrolmentEvent, new_event_id

        consent = customer.consent or {}
        self._send(EnrolmentEvent(
            event_id=new_event_id(), device_id=self.device_id, ts=datetime.now(timezone.utc),
            customer_id=uuid.UUID(customer.id), status="active", display_name=customer.display_name,
            consent=Consent(recorded_by=consent.get("recorded_by", "staff"),
                            recorded_at=consent.get("recorded_at") or datetime.now(timezone.utc),
                            text_version=str(consent.get("text_version", "1")))))

    def _on_erase_local(self, customer_id: str) -> None:
        """Erased here (staff page or retention): forget it and tell the cloud, which erases it everywhere."""
        self.recognizer.tracker.forget(customer_id)
        self.state.delete_menu(customer_id)
        from dangol_protocol import ErasureDoneEvent, new_event_id

        self._send(ErasureDoneEvent(event_id=new_event_id(), device_id=self.device_id, ts=datetime.now(timezone.utc),
                                    erasure_id=None, customer_ids=[uuid.UUID(customer_id)]))

    def _on_erasures(self, erasures) -> list[str]:
        done = []
        for cid in map(str, erasures.customer_ids):
            try:
                self.gallery.delete(cid)
                done.append(cid)
            except UnknownCustomer:
                pass
            self.recognizer.tracker.forget(cid)
        return done

    def _on_cache_change(self, what: str) -> None:
        bump = getattr(self.screen, "bump", None)
        if bump:
            bump()

    # --- housekeeping ------------------------------------------------------------------------------
    def _housekeeping_loop(self) -> None:
        wd = watchdog_interval()
        next_status = 0.0
        next_wd = 0.0
        while not self.stop_event.wait(0.5):
            now = time.monotonic()
            if wd and now >= next_wd and now - self.stats.last_heartbeat < 10:
                notify("WATCHDOG=1")
                next_wd = now + wd
            if now >= next_status:
                next_status = now + self.config.mqtt.status_interval_s
                try:
                    self.gallery.expire_pending()
                    for cid in self.gallery.expire_unseen(self.config.privacy.retention_days):
                        log.info("retention: erased customer %s (not seen for %d days)", cid,
                                 self.config.privacy.retention_days)
                        self._on_erase_local(cid)
                    self.state.prune_sent()
                except sqlite3.OperationalError as exc:
                    self.stats.storage = "full" if "full" in str(exc) else "error"
                    log.error("housekeeping cannot write the edge database: %s", exc)
                if self.sync is not None:
                    self.sync.publish_status(self.health())

    def health(self):
        """Current :class:`dangol_protocol.Health` (camera, fps, gallery size, outbox depth)."""
        from dangol_protocol import Health
        from dangol_protocol.models import MAX_FPS

        n = self.gallery.db.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        return Health(camera=self.stats.camera if self.stats.camera in ("ok", "missing") else "error",
                      fps=round(min(self.stats.fps, MAX_FPS), 2), gallery_size=int(n), queue_depth=self.state.outbox_depth(),
                      storage=self.stats.storage, frames_captured=self.stats.frames_captured,
                      frames_dropped=self.stats.frames_dropped)
