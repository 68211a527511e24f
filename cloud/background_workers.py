"""The background workers the cloud's web app and MQTT listener hand work to (re-exported by
:mod:`dangol_cloud.background`): :class:`MenuRepublisher` (menus, and first menus of new regulars, published off the
request or the listener's worker, retried until sent) and :class:`ErasureResender` (a device coming online gets its
unconfirmed erasures, at most once per interval)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["ErasureResender", "MenuRepublisher"]

log = logging.getLogger("dangol_cloud.background")


class _Worker:
    """One lazily started daemon thread woken by an event, for :class:`MenuRepublisher` and
    :class:`ErasureResender`: ``_lock`` guards their pending work, ``_wake`` wakes ``_run``, ``_stopping`` ends it."""

    _thread_name = "dangol-worker"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def _start_thread(self) -> None:
        """Start the thread unless it runs (the caller holds ``_lock``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def _drop_pending(self) -> None:
        """What stopping does to the pending work (``_lock`` held); default: nothing."""

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the worker: waits up to ``timeout`` s for it (a publish blocked on a silent broker ends with its own
        timeout; the thread is a daemon)."""
        with self._lock:
            self._stopping.set()
            self._drop_pending()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError


class MenuRepublisher(_Worker):
    """Publishes customers' stored menus in the background, e.g. after a dislike took a pick off one, so a slow or
    silent broker never holds up a web request.

    One worker thread (started at the first :meth:`submit`) drains a *set* of pending customer ids guarded by a
    lock: at most one entry per customer whatever the number of requests (repeats while a publish runs coalesce
    into the next one) and calls ``publish(sorted ids)`` for all of them at once. A failure (any exception: broker
    unreachable, no acknowledgement, database error) is logged and counted (:attr:`failures`), and those ids are
    put back and tried again after ``retry_seconds`` (while they wait, the next scheduled publish of every menu
    also sends them). :meth:`stop` ends it (also called by :func:`start_background`'s stop function). With
    ``max_pending``, at most that many customers wait: further ones are dropped, counted (:attr:`dropped`) and logged.

    Args:
        publish: ``(customer ids) -> menu messages published``, e.g. ``lambda ids: republish_menus(db, settings,
            ids)`` (:func:`dangol_cloud.feedback.republish_menus`); it may block (broker timeouts) and raise.
        retry_seconds: pause after a failure before the ids are tried again (seconds, > 0).
        max_pending: most customers waiting at once (None: no limit but the number of customers).
        what: what is sent, for the log (``menus``, ``first menus``).

    Attributes:
        published: menu messages published so far. failures: failed publishes so far. dropped: customers not
        queued (``max_pending`` reached).
    """

    _thread_name = "dangol-menu-republisher"

    def __init__(self, publish: Callable[[list[str]], int], *, retry_seconds: float = 30.0,
                 max_pending: int | None = None, what: str = "menus") -> None:
        super().__init__()
        self._publish, self._retry, self._max, self._what = publish, float(retry_seconds), max_pending, what
        self._pending: set[str] = set()
        self._trying: list[str] = []  # the batch being published
        self.published = self.failures = self.dropped = 0

    def submit(self, customer_ids: str | Iterable[str]) -> None:
        """Have these customers' menus published soon; returns at once (nothing happens once stopped)."""
        ids = [customer_ids] if isinstance(customer_ids, str) else list(customer_ids)
        with self._lock:
            if self._stopping.is_set():
                return
            self._add(ids)
            self._start_thread()
        self._wake.set()

    def _add(self, ids: Iterable[str]) -> None:  # _lock held
        """Queue ``ids`` up to ``max_pending``; the rest are dropped, counted and logged."""
        for customer_id in ids:
            if self._max is not None and customer_id not in self._pending and len(self._pending) >= self._max:
                self.dropped += 1
                log.error("%s of customer %s dropped: %d customers already waiting (%d dropped so far)",
                          self._what, customer_id, self._max, self.dropped)
                continue
            self._pending.add(customer_id)

    def pending(self) -> int:
        """Number of customers waiting for a publish."""
        with self._lock:
            return len(self._pending)

    def waiting(self) -> int:
        """Customers not yet published: waiting, or in the publish under way."""
        with self._lock:
            return len(self._pending.union(self._trying))

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._pending = sorted(self._pending), set()
                self._trying = batch
            if not batch or self._stopping.is_set():
                continue
            try:
                self.published += self._publish(batch)
                with self._lock:
                    self._trying = []
            except Exception:  # kept for the next try (and the next scheduled publish); logged with traceback
                self.failures += 1
                with self._lock:
                    self._add(batch)
                    self._trying = []
                log.exception("%s of %d customer(s) not published (%d failure(s) so far); retrying in %.0f s",
                              self._what, len(batch), self.failures, self._retry)
                if self._stopping.wait(self._retry):
                    return
                self._wake.set()


class ErasureResender(_Worker):
    """Re-sends the erasures a device has not confirmed when it comes online, off the caller's thread (the MQTT
    listener's only worker) and at most once per ``min_interval`` seconds per device.

    :meth:`submit` returns at once. A device re-sent less than ``min_interval`` ago, or still waiting for its re-send,
    is skipped: counted (:attr:`skipped`) and logged once per device until its next re-send — a box flipping its
    status offline/online cannot make the cloud open a connection and send every unconfirmed erasure to its store on
    each flip. Nothing is lost: ``serve``'s schedule re-sends every unconfirmed erasure every
    ``erasure_republish_minutes`` anyway. The time of each device's last re-send is kept in memory, for the newest
    ``max_devices`` devices (the oldest is forgotten first; forgetting only allows one more re-send).

    One worker thread (started at the first accepted :meth:`submit`) calls ``resend(device id)`` for each pending
    device in turn. A failure (any exception: broker unreachable, database error) is logged and counted
    (:attr:`failures`); the erasures stay pending for the schedule. :meth:`stop` ends it.

    Args:
        resend: ``device id -> messages sent``, e.g. ``lambda d: republish_erasures(db, settings, device_id=d)``
            (:func:`dangol_cloud.publishing.republish_erasures`); it may block (broker timeouts) and raise.
        min_interval: seconds between two re-sends to one device (0: no limit, repeats still coalesce while one
            is pending).
        max_devices: devices whose last re-send is remembered.

    Attributes:
        sent: re-sends done. skipped: submits skipped. failures: re-sends that raised.

    Raises:
        ValueError: ``min_interval`` is negative or ``max_devices`` is below 1.
    """

    _thread_name = "dangol-erasure-resender"

    def __init__(self, resend: Callable[[str], object], *, min_interval: float = 0.0,
                 max_devices: int = 10_000) -> None:
        if min_interval < 0 or max_devices < 1:
            raise ValueError(f"min_interval {min_interval} must be >= 0 and max_devices {max_devices} >= 1")
        super().__init__()
        self._resend, self._interval, self._max = resend, float(min_interval), int(max_devices)
        self._last: OrderedDict[str, list] = OrderedDict()  # device -> [monotonic time of last re-send, skips since]
        self._pending: list[str] = []
        self.sent = self.skipped = self.failures = 0

    def submit(self, device_id: str) -> bool:
        """Have ``device_id``'s unconfirmed erasures re-sent soon; returns at once: True if queued, False if skipped
        (re-sent less than ``min_interval`` ago, already waiting, or stopped)."""
        now = time.monotonic()
        with self._lock:
            if self._stopping.is_set():
                return False
            last = self._last.get(device_id)
            if device_id in self._pending or (last is not None and now - last[0] < self._interval):
                self.skipped += 1
                if last is not None:
                    last[1] += 1
                    if last[1] == 1:
                        log.info("device %s came online again %.0f s after its last erasure re-send: not re-sent "
                                 "within %.0f s (the schedule re-sends them); further skips only counted",
                                 device_id, now - last[0], self._interval)
                return False
            if last is not None and last[1]:
                log.info("device %s: re-sending its unconfirmed erasures (%d come-online re-sends skipped since the "
                         "last)", device_id, last[1])
            self._last[device_id] = [now, 0]
            self._last.move_to_end(device_id)
            while len(self._last) > self._max:
                self._last.popitem(last=False)
            self._pending.append(device_id)
            self._start_thread()
        self._wake.set()
        return True

    def remembered(self) -> int:
        """Devices whose last re-send time is kept (at most ``max_devices``)."""
        with self._lock:
            return len(self._last)

    def _drop_pending(self) -> None:
        """Devices still pending at :meth:`stop` are left to the schedule."""
        self._pending.clear()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stopping.is_set():
                with self._lock:
                    if not self._pending:
                        break
                    device_id = self._pending.pop(0)
                try:
                    self._resend(device_id)
                    self.sent += 1
                except Exception:  # still pending in the database: the schedule re-sends it (logged with traceback)
                    self.failures += 1
                    log.exception("re-sending unconfirmed erasures to device %s failed (%d failure(s) so far); "
                                  "retried on the schedule", device_id, self.failures)
