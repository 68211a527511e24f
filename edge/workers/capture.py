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

#: An error streak ends once the source delivered this many frames since the last error (a camera that fails
#: after every few frames stays one streak: one traceback, and the back-off keeps growing).
RECOVERED_AFTER = 10


class CaptureWorker(Worker):
    """Open the source (retrying with exponential back-off ``camera.retry_min_s`` … ``retry_max_s`` while it
    is missing) and feed ``frames`` with ``(Frame, capture time in monotonic seconds)``.

    A live source, or a file read in real time, never blocks: when recognition falls behind, the oldest
    queued frame is dropped (``stats.frames_dropped``) so the screen reacts to *now*. A file read as fast
    as possible (batch) waits for room instead. A file that ends without ``camera.loop`` ends the worker (the
    display keeps running) and sets ``stats.camera`` to ``missing``: no frame will come any more (the recognition
    worker lets ``fps`` fall to 0 too, see :data:`~dangol_edge.workers.recognition.FPS_IDLE_S`).

    Any error opening or reading the source is retried, never fatal: a :class:`~dangol_edge.sources.SourceError`
    (no such device or file, the camera stopped delivering) sets ``stats.camera`` to ``missing``, anything else
    (a driver bug, libcamera's ``RuntimeError``) to ``error``; each is counted in ``stats.camera_errors``, the
    source is closed and reopened after the back-off. A source that opens but ends without delivering a single
    frame (an empty or corrupt recording, a folder of unreadable images) is such an error too — a
    :class:`~dangol_edge.sources.SourceError`, ``missing`` —, looping or not: reopening it at once would spin a
    core. An error streak is logged once with its traceback (the further errors in a row as one line each) and
    once when frames flow again (:data:`RECOVERED_AFTER` frames without an error).
    """

    def __init__(self, config: EdgeConfig, source_spec: str, frames: "queue.Queue[tuple[Frame, float]]",
                 stats: Stats, stop_event: threading.Event):
        super().__init__("capture", stop_event)
        self.config = config
        self.source_spec = source_spec
        self.frames = frames
        self.stats = stats
        self.streak = 0  # camera errors since frames last flowed
        self.delay = config.camera.retry_min_s  # the back-off before the next reopen
        self._flowing = 0  # frames delivered since the last error

    def loop(self) -> None:
        cam = self.config.camera
        while not self.stop_event.is_set():
            src = None
            try:
                src = self._make_source()
                src.open()
                ended, delivered = self._pump(src)
                if not delivered and not self.stop_event.is_set():
                    raise SourceError(f"{self.source_spec}: the source opened but delivered no frame (an empty or "
                                      "corrupt recording?)")
            except Exception as exc:  # SourceError, or whatever a driver raises: retried, never fatal
                self._failed(exc, self.delay)
                ended = False
                self.stop_event.wait(self.delay)
                self.delay = min(self.delay * 2, cam.retry_max_s)
            finally:
                if src is not None:
                    self._close(src)
            if ended and not cam.loop:
                log.info("video source ended (camera.loop is off): camera reads 'missing'; the display keeps running")
                self.stats.camera = "missing"
                return

    def _failed(self, exc: Exception, delay: float) -> None:
        """Count and report one failed open or read; the first of a streak is logged with its traceback."""
        expected = isinstance(exc, SourceError)
        self.stats.camera = "missing" if expected else "error"
        self.stats.camera_errors += 1
        self.streak += 1
        self._flowing = 0
        if self.streak == 1:
            log.error("camera: %s; retrying in %.1f s (further errors in a row are logged without a traceback)",
                      exc if expected else f"{type(exc).__name__}: {exc}", delay, exc_info=exc)
        else:
            log.error("camera: %s (error %d in a row); retrying in %.1f s",
                      exc if expected else f"{type(exc).__name__}: {exc}", self.streak, delay)

    def _recovered(self) -> None:
        """A frame arrived: after :data:`RECOVERED_AFTER` of them, end an error streak and reset the back-off."""
        self._flowing += 1
        if self._flowing < RECOVERED_AFTER:
            return
        if self.streak:
            log.info("camera recovered after %d error(s) in a row", self.streak)
            self.streak = 0
            self.stats.camera = "ok"
        self.delay = self.config.camera.retry_min_s

    def _close(self, src) -> None:
        try:
            src.close()
        except Exception as exc:  # a driver failing to release: counted, the next open retries
            self.stats.camera_errors += 1
            log.error("camera: closing %s failed: %s: %s", self.source_spec, type(exc).__name__, exc)

    def _make_source(self):
        cam = self.config.camera
        return open_source(self.source_spec, size=(cam.width, cam.height))

    def _pump(self, src) -> tuple[bool, int]:
        """Move frames from an open source into the queue.

        Returns:
            ``(ended, delivered)``: ``ended`` is True when a file source came to its end (False for a live source
            and when the stop event was set), ``delivered`` the number of frames the source yielded in this pass.

        Raises:
            Exception: whatever the source raises while reading (the caller counts it and backs off).
        """
        realtime = self.config.camera.realtime and not src.live
        t0 = time.monotonic()
        first_ts = None
        delivered = 0
        for frame in src.frames():
            delivered += 1
            if delivered == 1 and not self.streak:  # during an error streak it is ok again once frames flow
                self.stats.camera = "ok"
            if self.stop_event.is_set():
                return False, delivered
            self._recovered()
            if realtime:
                first_ts = frame.ts if first_ts is None else first_ts
                wait = (frame.ts - first_ts) - (time.monotonic() - t0)
                if wait > 0 and self.stop_event.wait(wait):
                    return False, delivered
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
        return not src.live, delivered
