"""Recognition worker: frames → :class:`~dangol_edge.recognition.Recognizer` → decisions for the arrival worker.

Health: the loop beats ``stats.last_heartbeat`` on each turn while recognition works (the housekeeping
worker feeds systemd's watchdog only then). A frame that raises counts as a failure; after
:data:`FAILING_AFTER` failures in a row ``stats.recognition`` is ``failing``, ``fps`` reads 0 and the
heartbeat stops, so systemd restarts the daemon (``WatchdogSec``). A failure streak is logged once, with
its traceback, when it starts, and once when it ends (with its length) — never one traceback per frame.

``fps`` is the rate of frames handled (recognised, or offered to a sign-up) over the last :data:`FPS_WINDOW`
of them; when no frame was handled for :data:`FPS_IDLE_S` seconds (the source ended, the camera went away) it
reads 0 instead of the rate of the last frames.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque

from ..recognition import Recognizer
from ..screen import Screen
from ..sdnotify import notify
from ..sources import Frame
from .base import Stats, Worker
from .enrolment import ButtonEnrolment

log = logging.getLogger(__name__)

#: Consecutive failed frames after which recognition is reported ``failing`` (and the watchdog starves).
FAILING_AFTER = 3
#: Frames over which ``fps`` is measured.
FPS_WINDOW = 60
#: Seconds without a handled frame after which ``fps`` reads 0 (and the window starts again). Cameras deliver
#: 15-120 frames a second and a Pi recognises several a second, so a gap this long means no frames are coming; a
#: source slower than one frame per this many seconds reads 0 between its frames.
FPS_IDLE_S = 5.0


class RecognitionWorker(Worker):
    """Take frames, recognise (or, during a sign-up, hand them to ``enrolment``), pass each arrival and
    unknown-face decision to ``decisions`` (bounded; when full the decision is dropped and counted in
    ``stats.decisions_dropped``: the screen must not wait on storage)."""

    def __init__(self, recognizer: Recognizer, frames: "queue.Queue[tuple[Frame, float]]",
                 decisions: queue.Queue, enrolment: ButtonEnrolment, screen: Screen, stats: Stats,
                 stop_event: threading.Event):
        super().__init__("recognition", stop_event)
        self.recognizer = recognizer
        self.frames = frames
        self.decisions = decisions
        self.enrolment = enrolment
        self.screen = screen
        self.stats = stats
        self.streak = 0
        self._fps_window: deque[float] = deque(maxlen=FPS_WINDOW)

    def loop(self) -> None:
        while not self.stop_event.is_set():
            if self.stats.recognition == "ok":
                self.stats.last_heartbeat = time.monotonic()
            self.enrolment.handle_requests()
            self.screen.tick()
            try:
                frame, captured = self.frames.get(timeout=0.2)
            except queue.Empty:
                self.idle(time.monotonic())
                continue
            self.step(frame, captured)

    def idle(self, now: float) -> None:
        """No frame came: once the last handled frame is :data:`FPS_IDLE_S` seconds old (``now``, monotonic
        seconds), ``fps`` reads 0 and the window starts again."""
        window = self._fps_window
        if window and now - window[-1] >= FPS_IDLE_S:
            window.clear()
            self.stats.fps = 0.0

    def step(self, frame: Frame, captured: float) -> None:
        """Process one frame captured at ``captured`` (monotonic seconds)."""
        # one clock for the tracker and cool-downs: the capture time (monotonic), also for looping files
        frame = dataclasses.replace(frame, ts=captured)
        try:
            if self.enrolment.active:
                self.enrolment.step(frame, self.recognizer.pipeline)
                result = None
            else:
                result = self.recognizer.process(frame)
        except Exception as exc:
            self._failed(frame, exc)
            return
        self._succeeded()
        self._handled(time.monotonic())  # a sign-up's frames too: the camera is delivering and the loop keeps up
        if result is None:
            return
        self.stats.frames_processed += 1
        for d in result.decisions:
            if (d.kind == "known" and d.arrival) or d.kind == "unknown":
                try:
                    self.decisions.put_nowait(d)
                except queue.Full:
                    self.stats.decisions_dropped += 1
                    log.warning("arrival worker behind: decision for %s dropped", d.customer_id or "an unknown face")

    def _handled(self, now: float) -> None:
        """One frame handled at ``now`` (monotonic seconds): ``fps`` over the window."""
        window = self._fps_window
        window.append(now)
        if len(window) > 1:
            self.stats.fps = (len(window) - 1) / max(1e-6, window[-1] - window[0])

    def _failed(self, frame: Frame, exc: Exception) -> None:
        self.streak += 1
        self.stats.recognition_failures += 1
        if self.streak == 1:
            log.error("recognition failed on frame %d; further failures in a row are counted, not logged",
                      frame.index, exc_info=exc)
        if self.streak == FAILING_AFTER:
            self.stats.recognition = "failing"
            self.stats.fps = 0.0
            self._fps_window.clear()
            notify(f"STATUS=recognition failing: {type(exc).__name__}: {exc}"[:200])
            log.error("recognition failing: %d frames in a row failed; the watchdog is no longer fed", self.streak)

    def _succeeded(self) -> None:
        if self.streak:
            log.info("recognition recovered after %d failed frame(s)", self.streak)
            if self.stats.recognition != "ok":
                notify("STATUS=recognition ok")
            self.streak = 0
            self.stats.recognition = "ok"
