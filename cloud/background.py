"""Background work of ``dangol-cloud serve``: the MQTT consumer, scheduled retraining, re-publishing of
unconfirmed erasures and the daily sweep (retention, old device events); the app's menu republisher
(:class:`MenuRepublisher`: a dislike's menu goes to the stores without holding up the web request) and welcomer
(:func:`welcomer`: a new regular's first menu, retried until sent); the listener's erasure re-sender
(:class:`ErasureResender`: a device coming online gets its unconfirmed erasures off the listener's worker, at most
once per ``erasure_republish_minutes``). Each retention sweep and scheduled training leaves an audit entry in its
own transaction (:data:`RUN_ACTIONS`, success or failure), shown on the owner's home page when failing."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from flask import Flask

__all__ = ["RUN_ACTIONS", "ErasureResender", "MenuRepublisher", "record_run", "start_background", "welcomer"]

log = logging.getLogger(__name__)

#: Audit actions of background runs: ``retention-run`` (by :func:`dangol_cloud.erasure.run_retention`, in the sweep's
#: transaction), the others by :func:`record_run` in a transaction of their own; ``training-run`` is a training
#: started by hand that succeeded (Retrain now, ``dangol-cloud train``).
RUN_ACTIONS = ("retention-run", "retention-failed", "training-scheduled", "training-failed", "training-run")
#: Seconds between two tries of a new regular's first menu (:func:`welcomer`).
WELCOME_RETRY_SECONDS = 30.0
#: Customers whose first menu may wait for a retry at once (:func:`welcomer`); more are dropped, counted and logged.
WELCOME_MAX_PENDING = 10_000


def record_run(db, action: str, actor: str, detail: str) -> bool:
    """Write one audit entry about a background run (``action`` of :data:`RUN_ACTIONS`, ``actor`` ``retention``,
    ``schedule``, ``cli`` or the owner's e-mail; ``detail`` cut to 300 characters, never a name) in a transaction of
    its own, so a run that rolled back is still on record. Returns False if even that failed (logged with
    traceback: the database is down)."""
    from dangol_cloud.erasure import audit

    try:
        with db.transaction() as session:
            audit(session, actor, action, detail=detail[:300])
        return True
    except Exception:  # the database itself is down: the counters on the home page still show the failure
        log.exception("could not record %s in the audit log", action)
        return False


def _short(exc: BaseException) -> str:  # "Type: first line of the message", for the audit log
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]


def welcomer(app: Flask) -> "MenuRepublisher":
    """The app's retrying welcomer (``app.extensions["dangol_welcomer"]``, made at the first use): a
    :class:`MenuRepublisher` whose work is :func:`dangol_cloud.services.welcome` (write the customers' first menus
    with the newest model, then publish them), tried again every :data:`WELCOME_RETRY_SECONDS` until it succeeds —
    broker down, or the model cannot be loaded (then not even the menu is written). At most
    :data:`WELCOME_MAX_PENDING` customers wait (more are dropped and counted: their menus come with the next
    training). Stopped by :func:`start_background`'s stop function."""
    found = app.extensions.get("dangol_welcomer")
    if found is not None:
        return found
    from dangol_cloud.services import welcome

    db, settings = app.extensions["dangol_db"], app.extensions["dangol_settings"]
    made = MenuRepublisher(lambda ids: welcome(db, settings, ids), retry_seconds=WELCOME_RETRY_SECONDS,
                           max_pending=WELCOME_MAX_PENDING, what="first menus")
    return app.extensions.setdefault("dangol_welcomer", made)  # atomic: two first uses keep one


def start_background(app: Flask) -> Callable[[], None]:
    """Start the MQTT listener (if a broker is configured and ``listen`` is on; ``app.extensions["dangol_listener"]``;
    a device coming online gets its unconfirmed erasures re-sent by its :class:`ErasureResender`, at most once per
    ``erasure_republish_minutes``), the training schedule (if ``train_interval_hours`` is set), the erasure
    re-publisher (every ``erasure_republish_minutes``, with a broker) and the daily sweep (at start, then every
    24 h): retention, then device events older than ``device_event_days``. Failures of each (and of scheduled
    training) are counted in ``app.extensions["dangol_sweep_failures"]`` (``retention``, ``device-events``,
    ``training``); each retention and scheduled training run is recorded in the audit log (:func:`record_run`),
    success or failure. A newly active customer whose welcome fails is retried by the listener
    (:attr:`~dangol_cloud.events.Listener.follow_ups`). Returns a function that stops them, the app's
    :class:`MenuRepublisher` (``app.extensions["dangol_republisher"]``) and its welcomer (:func:`welcomer`).

    Raises:
        MqttError: the MQTT URL is malformed. An unreachable broker is retried in the background.
    """
    from dangol_cloud.events import Listener
    from dangol_cloud.services import retrain_and_publish
    from dangol_cloud.training import NotEnoughData

    settings = app.extensions["dangol_settings"]
    db = app.extensions["dangol_db"]
    stopping = threading.Event()
    listener = None
    if settings.mqtt_url and settings.listen:
        from dangol_cloud.publishing import republish_erasures
        from dangol_cloud.training import welcome_regulars

        listener = Listener(db, settings.mqtt_url, client_id=f"{settings.mqtt_client_id}-listener",
                            on_activated=lambda customer_id: welcome_regulars(db, settings, [customer_id]),
                            on_erasures=lambda device: republish_erasures(db, settings, device_id=device),
                            erasure_interval=settings.erasure_republish_minutes * 60).start()
        app.extensions["dangol_listener"] = listener
        if listener.subscribed.is_set():
            log.info("MQTT listener subscribed to device events and status")

    def schedule() -> None:
        interval = settings.train_interval_hours * 3600
        while not stopping.wait(interval):
            try:
                result = retrain_and_publish(db, settings)
                log.info("scheduled training: model %s", result.model_version)
                record_run(db, "training-scheduled", "schedule", f"model {result.model_version}; "
                                                                 f"{result.menus} menus")
            except NotEnoughData as exc:
                log.info("scheduled training skipped: %s", exc)  # nothing to train on: not a failure
            except Exception as exc:  # keep the schedule alive; logged with traceback, recorded, retried next interval
                sweep_failures["training"] += 1
                log.exception("scheduled training failed; retrying in %.1f h", settings.train_interval_hours)
                trained = getattr(getattr(exc, "result", None), "model_version", None)  # PublishFailed: menus saved
                record_run(db, "training-failed", "schedule",
                           (f"model {trained} trained, menus not sent: " if trained else "") + _short(exc))

    if settings.train_interval_hours:
        threading.Thread(target=schedule, name="dangol-train-schedule", daemon=True).start()

    def erasures() -> None:
        from dangol_cloud.publishing import republish_erasures

        while not stopping.wait(settings.erasure_republish_minutes * 60):
            try:
                sent = republish_erasures(db, settings)
                if sent:
                    log.info("re-published %d erasure messages to devices that have not confirmed", sent)
            except Exception:  # broker down etc.: still pending, retried next interval (logged with traceback)
                log.exception("re-publishing unconfirmed erasures failed; retrying in %.0f min",
                              settings.erasure_republish_minutes)

    if settings.mqtt_url:
        threading.Thread(target=erasures, name="dangol-erasures", daemon=True).start()

    def retention() -> None:
        from dangol_cloud.erasure import prune_device_events, run_retention
        from dangol_cloud.publishing import republish_erasures

        while True:
            ids: list[str] = []
            try:  # a success is recorded by run_retention ("retention-run") in this very transaction
                with db.transaction() as session:
                    ids = run_retention(session, settings.retention_days)
            except Exception as exc:  # retried in 24 h; recorded on its own, shown on the owner's home page
                sweep_failures["retention"] += 1
                log.exception("retention sweep failed (%d so far); retrying in 24 h", sweep_failures["retention"])
                record_run(db, "retention-failed", "retention", _short(exc))
            if ids:
                log.info("retention: erased %d customers not seen for %d days", len(ids), settings.retention_days)
                try:
                    republish_erasures(db, settings)
                except Exception:  # committed; the erasures are re-published by their own loop (logged)
                    log.exception("retention's erasures not sent now; re-sent every %.0f min",
                                  settings.erasure_republish_minutes)
            try:
                with db.transaction() as session:
                    prune_device_events(session, settings.device_event_days)
            except Exception:  # retried in 24 h; until then the table only holds a day more
                sweep_failures["device-events"] += 1
                log.exception("pruning device events failed (%d so far); retrying in 24 h",
                              sweep_failures["device-events"])
            if stopping.wait(24 * 3600):
                return

    sweep_failures = {"retention": 0, "device-events": 0, "training": 0}
    app.extensions["dangol_sweep_failures"] = sweep_failures

    threading.Thread(target=retention, name="dangol-retention", daemon=True).start()

    def stop() -> None:
        stopping.set()
        if listener is not None:
            listener.stop()
        for name in ("dangol_republisher", "dangol_welcomer"):
            worker = app.extensions.get(name)
            if worker is not None:
                worker.stop()

    return stop


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
