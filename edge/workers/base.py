"""What every worker shares: the :class:`Stats` counters and the :class:`Worker` thread."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: Arrivals whose (first seen, decided) times are kept for the latency benchmark (bench/bench_loop.py).
ARRIVAL_TIMES_KEPT = 1000


def _recent_arrivals() -> deque:
    return deque(maxlen=ARRIVAL_TIMES_KEPT)


def storage_state(exc: Exception) -> str:
    """``Stats.storage`` for a failed write of the edge databases: ``full`` when SQLite says the database or disk
    is full, else ``error`` (e.g. a medium remounted read-only)."""
    return "full" if "full" in str(exc) else "error"


@dataclass
class Stats:
    """Counters for health and benchmarks (written by one worker each, read from any thread).

    Attributes:
        recognition: ``ok``, or ``failing`` while recognition has failed on
            :data:`~dangol_edge.workers.recognition.FAILING_AFTER` frames in a row (the watchdog is then
            no longer fed and ``fps`` reads 0).
        last_heartbeat: monotonic seconds of the recognition loop's last healthy turn.
        camera_errors: failed opens or reads of the camera (each one retried after a back-off).
        housekeeping_failures: housekeeping steps that raised (one per step and per erasure report); the next
            pass retries them.
        arrival_failures: decisions the arrival worker failed to handle (logged; the next one is handled).
        crashed: names of the workers whose thread died on an error (health is then not ``ok`` and the
            watchdog is no longer fed).
        clock_steps: steps of the wall clock housekeeping saw (:mod:`dangol_edge.clock`; each logged).
        retention_held: housekeeping passes whose retention did not run because of the clock (a recent step, NTP
            not synchronised yet, or too many regulars due at once on a clock not yet trusted; logged).
        arrival_times: (capture time of the track's first frame, decision time), monotonic seconds, of the
            newest :data:`ARRIVAL_TIMES_KEPT` arrivals.
    """

    frames_captured: int = 0
    frames_dropped: int = 0
    frames_processed: int = 0
    decisions_dropped: int = 0
    arrivals: int = 0
    unknown: int = 0
    recognition_failures: int = 0
    camera_errors: int = 0
    housekeeping_failures: int = 0
    arrival_failures: int = 0
    clock_steps: int = 0
    retention_held: int = 0
    camera: str = "missing"
    storage: str = "ok"
    recognition: str = "ok"
    fps: float = 0.0
    last_heartbeat: float = field(default_factory=time.monotonic)
    arrival_times: deque = field(default_factory=_recent_arrivals)
    crashed: list = field(default_factory=list)


class Worker(threading.Thread):
    """A daemon thread that runs :meth:`loop` until ``stop_event`` is set. An exception escaping
    :meth:`loop` is logged (with its traceback, once) and ends the worker; ``crashed`` is then True and,
    for a worker with a ``stats`` attribute (every daemon worker), its name is added to ``stats.crashed``,
    which the daemon's health and the watchdog read.

    Args:
        name: thread name (also in log lines).
        stop_event: the daemon's one stop event.
    """

    def __init__(self, name: str, stop_event: threading.Event):
        super().__init__(name=name, daemon=True)
        self.stop_event = stop_event
        self.crashed = False

    def run(self) -> None:
        try:
            self.loop()
        except Exception:
            self.crashed = True
            stats = getattr(self, "stats", None)
            if isinstance(stats, Stats):
                stats.crashed.append(self.name)
            log.exception("the %s worker stopped on an error; health reports it and the watchdog is no longer "
                          "fed", self.name)

    def loop(self) -> None:  # pragma: no cover - every worker overrides it
        raise NotImplementedError
