"""``dangol-edge run``: the appliance daemon.

Structure (after Frigate's ``app.py``): one stop event; components started in order and stopped in reverse —
state cache → gallery → display server → MQTT sync → GPIO button → workers (:mod:`dangol_edge.workers`:
arrivals, recognition, capture, housekeeping; each one job, one thread). Capture feeds recognition through
a bounded queue that drops the oldest frame (and counts it) when recognition falls behind, so the screen
reacts to *now*, not to a backlog; recognition hands arrivals to the arrival worker through another bounded
queue. systemd gets READY=1 once everything is up and WATCHDOG=1 while recognition is alive and not failing and
no worker thread has died (health then reads camera ``error`` or recognition ``failing``).
"""

from __future__ import annotations

import logging
import queue
import signal
import sqlite3
import threading
import uuid

from .activation_reports import report_activation, report_unreported_activations
from .config import EdgeConfig, check_daemon_settings
from .embed import Embedder
from .events import EventFactory, EventNotSaved, Outbox
from .gallery import Gallery, GalleryError, UnknownCustomer
from .recognition import Recognizer
from .screen import Screen
from .sdnotify import notify
from .sources import Frame
from .reserve import SpaceReserve
from .state import StateError, StateStore
from .workers import ArrivalWorker, ButtonEnrolment, CaptureWorker, HousekeepingWorker, RecognitionWorker, Stats
from .workers.base import storage_state

__all__ = ["Appliance", "Stats"]

log = logging.getLogger(__name__)

#: Decisions waiting for the arrival worker (beyond: dropped and counted; a person arrives at most every
#: few seconds, so this only fills when storage hangs).
DECISIONS_QUEUED = 64


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
        self.decisions: queue.Queue = queue.Queue(maxsize=DECISIONS_QUEUED)
        self.device_id = config.device.id or uuid.UUID(int=0)
        self.store_id = config.device.store_id or uuid.UUID(int=0)
        self.events = EventFactory(self.device_id)
        self.workers: list = []
        self._stoppers: list = []
        self._outside_lock = threading.Lock()  # _on_outside_write: one check thread at a time, repeats folded
        self._outside_running = self._outside_again = False
        self.state: StateStore | None = None
        self.gallery: Gallery | None = None
        self.outbox: Outbox | None = None
        self.sync = None
        self.web = None
        self.button = None
        #: Why the GPIO enrolment button could not be claimed at start (None: it works, or ``gpio.enabled`` is off);
        #: logged, sent to systemd's ``STATUS=`` and shown on the staff page.
        self.button_problem: str | None = None
        self.recognizer: Recognizer | None = None
        self.enrolment: ButtonEnrolment | None = None
        self.arrivals: ArrivalWorker | None = None
        self.housekeeping: HousekeepingWorker | None = None
        #: disk space held back for a start on a full disk (:mod:`dangol_edge.reserve`)
        self.reserve = SpaceReserve(config.home)

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
        check_daemon_settings(cfg, camera_source=self.source_spec)
        # a damaged state file is moved aside (its queued events and erasures copied): the door never stays dark
        self.state = self._open_on_full_disk(lambda: StateStore(cfg.state_path).open(recover=True))
        self._stoppers.append(self.state.close)
        embedder = Embedder(cfg.model_path, threads=cfg.embedder.threads).open()
        self.gallery = self._open_on_full_disk(lambda: Gallery(cfg.gallery_path, embedder.sha256).open())
        self._stoppers.append(self.gallery.close)
        self.reserve.ensure()
        self.gallery.on_outside_write = self._on_outside_write  # a CLI erasure takes its welcome off the door
        if self.gallery.stale_templates:
            log.warning("%d templates were made by another model and are ignored; re-enrol those customers",
                        self.gallery.stale_templates)
        self.recognizer = Recognizer.from_config(cfg, gallery=self.gallery, embedder=embedder)
        self._stoppers.append(self.recognizer.close)

        from .web import DisplayServer, create_app

        app = create_app(screen=self.screen, state=self.state, gallery=self.gallery, config=cfg,
                         on_activate=self._on_activate, on_erase=self._on_staff_erase, on_signup=self._on_signup,
                         storage=self.storage, button_problem=lambda: self.button_problem)
        self.web = DisplayServer(app, cfg.display.host, cfg.display.port)
        self.web.start()
        self._stoppers.append(self.web.stop)

        if cfg.mqtt.url:
            from .sync import MQTTSync

            self.sync = MQTTSync(cfg.mqtt, self.device_id, self.store_id, self.state, on_erasure=self._on_erasures,
                                 stats=self.stats)
            self.sync.start()
            self._stoppers.append(self.sync.stop)
        else:
            log.warning("no broker configured: running offline on the cached catalogue and menus")
        self.outbox = Outbox(self.device_id, self.state, self.sync)
        report_unreported_activations(self.gallery, self.outbox, self.events)  # lost by an earlier run: never raises

        self.enrolment = ButtonEnrolment(cfg, self.gallery, self.screen, self.events, self.outbox, stats=self.stats,
                                         upgrade=self.recognizer.upgrade)
        if cfg.gpio.enabled:
            from .buttons import EnrolButton

            try:
                self.button = EnrolButton(cfg.gpio, self.enrolment.request("enrol"), self.enrolment.request("cancel"),
                                          pin_factory=self.pin_factory).open()
                self.enrolment.button = self.button
                self._stoppers.append(self.button.close)
            except Exception as exc:  # gpiozero raises its own hierarchy; no GPIO is not fatal
                self.button = None
                self.button_problem = f"{type(exc).__name__}: {exc}"[:300]
                log.error("enrolment button unavailable (%s): staff can start sign-ups on the staff page or enrol "
                          "from the CLI", self.button_problem)
                notify(f"STATUS=enrolment button unavailable: {self.button_problem}"[:200])

        stop = self.stop_event
        self.arrivals = ArrivalWorker(cfg, self.gallery, self.state, self.screen, self.events, self.outbox,
                                      self.decisions, self.stats, stop)
        self.housekeeping = HousekeepingWorker(cfg, self.gallery, self.state, self.outbox, self.sync, self.stats,
                                               self._on_erase_local, self.health, stop, upgrade=self.recognizer.upgrade,
                                               reserve=self.reserve)
        self.workers = [
            self.arrivals,
            RecognitionWorker(self.recognizer, self.frames, self.decisions, self.enrolment, self.screen, self.stats,
                              stop),
            CaptureWorker(cfg, self.source_spec, self.frames, self.stats, stop),
            self.housekeeping,
        ]
        for w in self.workers:
            w.start()
        notify("READY=1")
        log.info("dangol-edge running (device %s, store %s, source %s)", self.device_id, self.store_id,
                 self.source_spec)

    def _open_on_full_disk(self, open_file):
        """``open_file()``; when it fails with a storage error (on a full disk SQLite cannot create the ``-wal``/``-shm``
        files: "disk I/O error") and the space reserve is there, give the reserve back and try once more
        (:mod:`dangol_edge.reserve`: health then reads ``storage: full`` until the reserve is allocated again).

        Raises:
            GalleryError, StateError: as ``open_file`` does.
        """
        try:
            return open_file()
        except (GalleryError, StateError) as exc:
            if not isinstance(exc.__cause__, (sqlite3.OperationalError, OSError)) or not self.reserve.release():
                raise
            log.error("%s; released the space reserve %s (%d bytes) to start: the disk is full", exc,
                      self.reserve.path, self.reserve.size)
            return open_file()

    def stop(self) -> None:
        """Set the stop event, join the workers and close components in reverse order. Idempotent."""
        self.stop_event.set()
        notify("STOPPING=1")
        for w in reversed(self.workers):
            w.join(timeout=5)
        if self.workers:
            st = self.stats
            log.info("stopped: frames captured %d, dropped %d, processed %d; arrivals %d, unknown faces %d",
                     st.frames_captured, st.frames_dropped, st.frames_processed, st.arrivals, st.unknown)
        self.workers = []
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

    # --- what the web app, MQTT and tests use -------------------------------------------------------
    def picks_for(self, customer_id: str) -> list:
        """See :meth:`ArrivalWorker.picks_for`."""
        return self.arrivals.picks_for(customer_id)

    def _on_signup(self, what: str) -> bool:
        """The staff page starts (``"enrol"``) or cancels a sign-up: queued for the recognition thread, as a
        button press is. False before the enrolment worker exists or when the request was dropped."""
        enrolment = self.enrolment
        return enrolment is not None and enrolment.ask(what, source="staff page")

    def _on_activate(self, customer) -> None:
        """Staff recorded consent: tell the cloud (:func:`~dangol_edge.activation_reports.report_activation`: raises
        :class:`~dangol_edge.events.EventNotSaved` when the event is held for a retry, else what failed)."""
        report_activation(self.gallery, self.outbox, self.events, customer)

    def _on_erase_local(self, customer_id: str) -> None:
        """Erased from the gallery here (staff page, expired sign-up, retention): forget it, and in one transaction
        of the state file drop its cached menu and every queued event about it and report it to the cloud, which
        records a request an owner confirms or dismisses (:meth:`~dangol_edge.events.Outbox.erase`).

        Raises:
            sqlite3.Error: the state file cannot be written (nothing there changed; the caller retries).
        """
        self._forget(customer_id)
        self.outbox.erase([customer_id], [self.events.erasure_done([customer_id])])

    def _on_staff_erase(self, customer_id: str) -> None:
        """The staff page erased or discarded a customer: :meth:`_on_erase_local`; when the state file cannot be
        written the housekeeping worker retries it on its next passes, and the page is told (``EventNotSaved``)."""
        try:
            self._on_erase_local(customer_id)
        except sqlite3.Error as exc:
            self.stats.storage = storage_state(exc)
            if self.housekeeping is None:
                raise
            self.housekeeping.report_later(customer_id)
            raise EventNotSaved(f"the erasure of {customer_id} was not recorded ({exc}); retried") from exc

    def _on_erasures(self, erasures) -> list[str]:
        """The cloud's erasure: delete each customer from the gallery and forget them; returns the ids erased here.
        Raises on a storage error (:class:`~dangol_edge.erasures.CloudErasures` holds and retries the erasure)."""
        done = []
        for cid in map(str, erasures.customer_ids):
            try:
                self.gallery.delete(cid)
                done.append(cid)
            except UnknownCustomer:
                pass
            self._forget(cid)
        return done

    def _on_outside_write(self) -> None:
        """``GallerySearch.on_outside_write``: another process changed the gallery. The check runs on a thread of its
        own (:meth:`_outside_writes`), never on the thread that noticed the write: that one may hold the gallery's
        lock (a sign-up's activation check reads the gallery size under it), and forgetting a customer takes the
        model upgrade's lock, which the upgrade's check holds while it reads the gallery (a deadlock). Writes noticed
        while a check runs are folded into one more check."""
        with self._outside_lock:
            if self._outside_running:
                self._outside_again = True
                return
            self._outside_running = True
        threading.Thread(target=self._outside_writes, name="dangol-outside-write", daemon=True).start()

    def _outside_writes(self) -> None:
        while True:
            try:
                self._check_shown_customer()
            except sqlite3.Error as exc:  # the welcome stays until its time is up; the next write checks again
                self.stats.storage = storage_state(exc)
                log.exception("could not check the door screen after another process changed the gallery")
            with self._outside_lock:
                if not self._outside_again:
                    self._outside_running = False
                    return
                self._outside_again = False

    def _check_shown_customer(self) -> None:
        """Another process changed the gallery (``dangol-edge customers delete`` beside the daemon): a welcome on the
        door screen of a customer no longer active there leaves it, and the customer is forgotten like a cloud
        erasure (:meth:`_forget`). Runs on the thread of :meth:`_on_outside_write`.

        Raises:
            sqlite3.Error: the gallery cannot be read.
        """
        shown = self.screen.snapshot()
        customer_id = shown.get("customer_id") if shown.get("screen") == "welcome" else None
        if customer_id is None:
            return
        try:
            active = self.gallery.customer(customer_id).status == "active"
        except UnknownCustomer:
            active = False
        if not active:
            self._forget(customer_id)

    def _forget(self, customer_id: str) -> None:
        """Drop an erased customer from memory and from the door screen (their welcome, if showing): the tracker's
        votes and cool-down, and a running model upgrade's old-model templates
        (see :meth:`~dangol_edge.upgrade.ModelUpgrade.forget`)."""
        self.recognizer.tracker.forget(customer_id)
        if self.screen.forget(customer_id):
            log.info("erased customer %s: their welcome left the door screen", customer_id)
        upgrade = self.recognizer.upgrade
        if upgrade is not None:
            upgrade.forget(customer_id)

    def storage(self) -> str:
        """``stats.storage``, but ``full`` while the space reserve given back at start is not allocated again."""
        return "full" if self.reserve.spent else self.stats.storage

    def health(self):
        """Current :class:`dangol_protocol.Health` (camera, fps, gallery size, outbox depth, storage (:meth:`storage`), frame counters,
        recognition, and whether the cached catalogue is readable). A source that ended (a file without
        ``camera.loop``) or went away reads camera ``missing``, and ``fps`` 0 once no frame came for
        :data:`~dangol_edge.workers.recognition.FPS_IDLE_S` seconds. A worker thread that died on an error is never
        reported ``ok``: a dead capture worker makes ``camera`` read ``error``, any other dead worker makes
        ``recognition`` read ``failing`` (the housekeeping worker also stops feeding the watchdog). ``arrivals`` and
        ``housekeeping`` read ``failing`` while that worker's last decision (pass) failed, or it died;
        ``refused_events`` counts the events the broker refused, held for a retry, ``undelivered_events`` those it
        delivered to no subscriber (PUBACK 0x10), held for a retry (both None offline)."""
        from dangol_protocol import Health
        from dangol_protocol.models import MAX_COUNT, MAX_FPS

        st = self.stats
        crashed = set(st.crashed) | {w.name for w in self.workers if getattr(w, "crashed", False)}
        camera = st.camera if st.camera in ("ok", "missing") else "error"
        recognition = st.recognition
        if "capture" in crashed:  # a dead capture thread: no frame will ever come
            camera = "error"
        if crashed - {"capture"}:  # recognition, arrivals or housekeeping died: the door no longer greets anyone
            recognition = "failing"
        return Health(camera=camera,
                      fps=round(min(st.fps, MAX_FPS), 2), gallery_size=self.gallery.size,
                      queue_depth=self.state.outbox_depth() + (self.outbox.held if self.outbox else 0),
                      storage=self.storage(), frames_captured=st.frames_captured, frames_dropped=st.frames_dropped,
                      recognition=recognition, catalogue=self._catalogue_health(),
                      arrivals=_failing(self.arrivals, "arrivals" in crashed),
                      housekeeping=_failing(self.housekeeping, "housekeeping" in crashed),
                      refused_events=(min(self.sync.refused_held, MAX_COUNT) if self.sync is not None else None),
                      undelivered_events=(min(self.sync.unheard_held, MAX_COUNT) if self.sync is not None else None))

    def _catalogue_health(self) -> str | None:
        """``unreadable`` while the cached catalogue cannot be parsed, ``ok`` once one is, None before any."""
        try:
            return self.state.catalogue_status()
        except sqlite3.Error as exc:  # the database itself failed: reported as storage, not as the catalogue
            self.stats.storage = "error"
            log.error("health: cannot read the edge database (%s)", exc)
            return None


def _failing(worker, crashed: bool) -> str | None:
    """``failing`` while ``worker`` (an arrival or housekeeping worker) is in a streak of failures or died, else
    ``ok``; None before the daemon started it."""
    if worker is None:
        return None
    return "failing" if crashed or worker.failing else "ok"
