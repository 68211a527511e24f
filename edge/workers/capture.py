"""Capture worker: camera or file → the bounded frame queue (drops the oldest frame when behind)."""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..config import EdgeConfig
from ..sources import Frame, SourceError, open_source
from .base import Stats, Worker

log = logging.getLogger(__name__)


class CaptureWorker(Worker):
    """Open the source (retrying with exponential back-off ``camera.retry_min_s`` … ``retry_max_s`` while it
    is missing) and feed ``frames`` with ``(Frame, capture time in monotonic seconds)``.

    A live source, or a file read in real time, never blocks: when recognition falls behind, the oldest
    queued frame is dropped (``stats.frames_dropped``) so the screen reacts to *now*. A file read as fast
    as possible (batch) waits for room instead. A file that ends without ``camera.loop`` ends the worker
    (the display keeps running).
    """

    def __init__(self, config: EdgeConfig, source_spec: str, frames: "queue.Queue[tuple[Frame, float]]",
                 stats: Stats, stop_event: threading.Event):
        super().__init__("capture", stop_event)
        self.config = config
        self.source_spec = source_spec
        self.frames = frames
        self.stats = stats

    def loop(self) -> None:
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
                return

    def _make_source(self):
        if self.source_spec.startswith("picamera2"):
            from ..sources import Picamera2Source

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
