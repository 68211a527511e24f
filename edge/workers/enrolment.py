"""Enrolment at the door: the sign-up state machine, started by the GPIO button or from the staff page.

``idle`` —button press or the staff page's "Start a sign-up"→ ``capturing`` (every frame goes to
:class:`~dangol_edge.enrol.SampleCollector`, the one capture rule shared with ``dangol-edge enroll --source``)
—pool full→ ``pending`` (stored unsearchable with a short code; a ``pending`` enrolment event goes to the cloud),
or ``already`` when the face is an active customer's by the door's own rule (:class:`~dangol_edge.enrol.DoorRule`:
no second record, which would keep the door from greeting either, and nothing added to theirs: a newcomer the door
falsely matched would become that regular's face; the door screen says so without a name, the staff page names them),
or —``enrol.max_frames`` first→ ``failed`` (logged with :meth:`~dangol_edge.enrol.SampleCollector.shortfall`:
no good face, faces that did not agree, or too few; the door screen and the staff page say which, with the good
snapshots taken out of the pool needed), or ``not-saved`` when the gallery cannot be written (disk
full: the sign-up ends, health reports the storage, nothing half-written stays); the button's long press or the
staff page's "Cancel" (``cancel``) returns to idle from ``capturing``. How a sign-up ended stays on the
:class:`~dangol_edge.screen.Screen` for the staff page until the next one starts. Steps run on the recognition
thread: capture and recognition share the face pipeline, which is not thread-safe.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
from collections.abc import Callable

import numpy as np

from ..config import EdgeConfig
from ..enrol import DoorRule, Sample, SampleCollector, enroll
from ..events import EventFactory, EventNotSaved, Outbox
from ..gallery import Enrolled, Gallery
from ..screen import Screen
from ..sources import Frame
from .base import storage_state

log = logging.getLogger(__name__)


class ButtonEnrolment:
    """The sign-up state machine (see the module doc).

    Args:
        config: ``enrol`` (templates, max_frames, keep_photos, pending_ttl_h).
        gallery: where the pending customer is stored.
        screen: shows progress and the short code.
        events, outbox: the ``pending`` enrolment event.
        button: the :class:`~dangol_edge.buttons.EnrolButton` (its LED), or None.
        stats: the daemon's :class:`~dangol_edge.workers.base.Stats`, whose ``storage`` this worker sets when the
            gallery or the outbox cannot be written (None: only logged, e.g. in a bench).
    """

    def __init__(self, config: EdgeConfig, gallery: Gallery, screen: Screen, events: EventFactory, outbox: Outbox,
                 button=None, stats=None):
        self.config = config
        self.gallery = gallery
        self.screen = screen
        self.events = events
        self.outbox = outbox
        self.button = button
        self.stats = stats
        self.requests: queue.Queue[str] = queue.Queue(maxsize=16)
        self.requests_dropped = 0  # requests refused because the queue was full
        self._collector: SampleCollector | None = None
        self._frames = 0
        self._rule: DoorRule | bool | None = None  # built on the first sign-up; False: no calibration, not checked

    @property
    def active(self) -> bool:
        """True while a sign-up is being captured."""
        return self._collector is not None

    def ask(self, what: str, source: str = "button") -> bool:
        """Queue a request (``"enrol"`` or ``"cancel"``) from any thread (gpiozero's, a web request's); the
        recognition thread applies it. Returns False if it was dropped (queue full: logged and counted in
        :attr:`requests_dropped`).

        Raises:
            ValueError: ``what`` is neither ``"enrol"`` nor ``"cancel"``.
        """
        if what not in ("enrol", "cancel"):
            raise ValueError(f"enrolment request {what!r}: expected 'enrol' or 'cancel'")
        try:
            self.requests.put_nowait(what)
        except queue.Full:
            self.requests_dropped += 1
            log.warning("%s request %r dropped (queue full, %d so far)", source, what, self.requests_dropped)
            return False
        log.info("%s asked to %s a sign-up", source, "start" if what == "enrol" else "cancel")
        return True

    def request(self, what: str) -> Callable[[], None]:
        """A callback for the button (``"enrol"`` or ``"cancel"``) that queues the request (any thread)."""
        return lambda: self.ask(what)

    def handle_requests(self) -> None:
        """Apply queued button requests (recognition thread)."""
        while True:
            try:
                req = self.requests.get_nowait()
            except queue.Empty:
                return
            if req == "enrol" and not self.active:
                log.info("enrolment started")
                self._collector = SampleCollector(self.config.enrol.templates)
                self._frames = 0
                self.screen.show_enrolment("capturing")
                if self.button:
                    self.button.busy()
            elif req == "cancel" and self.active:
                log.info("enrolment cancelled")
                self._finish("cancelled", seconds=3)

    def _finish(self, stage: str, code: str | None = None, seconds: float | None = None, **shown) -> None:
        """End the sign-up: the door screen shows ``stage`` for ``seconds`` (``shown``: more
        :meth:`~dangol_edge.screen.Screen.show_enrolment` arguments), the button's LED goes off."""
        self._collector = None
        self.screen.show_enrolment(stage, code, seconds=seconds, **shown)
        if self.button:
            self.button.done()

    def _fail(self, col: SampleCollector, note: str = "") -> None:
        """End the sign-up as ``failed`` at ``enrol.max_frames``: the door screen (for 5 seconds) and the staff page
        get :meth:`~dangol_edge.enrol.SampleCollector.shortfall_kind` and the good snapshots taken of the pool
        needed; the log the whole :meth:`~dangol_edge.enrol.SampleCollector.shortfall`."""
        self._finish("failed", seconds=5, why=col.shortfall_kind(), samples=len(col.candidates), wanted=col.pool)
        log.warning("enrolment failed: %s%s", col.shortfall(self.config.enrol.max_frames), note)

    def _storage(self, state: str) -> None:
        if self.stats is not None:
            self.stats.storage = state

    def step(self, frame: Frame, pipeline) -> None:
        """Offer one frame (``pipeline``: the recognizer's :class:`~dangol_edge.faces.FacePipeline`).

        Raises:
            Exception: whatever the pipeline or the gallery raised, for the recognition worker to log and count as a
                failed frame. The sign-up never stays open because of it: a save that fails ends it as ``not-saved``
                (tried once), and frames that fail still count towards ``enrol.max_frames``.
        """
        col, cfg = self._collector, self.config.enrol
        self._frames += 1
        try:
            if col.due(frame.index):
                faces = pipeline.process(frame.rgb, max_faces=1)
                if col.offer(faces[0] if faces else None, frame.index):
                    self.screen.show_enrolment("capturing", samples=len(col.candidates), wanted=col.pool)
        except Exception:
            if self._frames >= cfg.max_frames:
                self._fail(col, " (the last frames failed)")
            raise
        if col.full:
            self._save(col)
        elif self._frames >= cfg.max_frames:
            self._fail(col)

    def _regular(self, samples: list[Sample]) -> Enrolled | None:
        """The active customer these samples are (the door's rule, :class:`~dangol_edge.enrol.DoorRule`), or None."""
        if self._rule is None:
            self._rule = DoorRule.or_none(self.config, self.gallery.model_sha256) or False
        return self._rule.find(self.gallery, np.stack([s.embedding for s in samples])) if self._rule else None

    def _already(self, found: Enrolled) -> None:
        """End a sign-up of someone who is already a regular: no second record (two records of one face would
        defeat the door's margin over the runner-up, and neither would be greeted), and nothing of it is stored — not
        even in their record: the door's rule lets about one stranger in a hundred through, and a newcomer's
        snapshots added to a regular's record would make the door greet them as that regular for good. The door
        screen says so without a name; the staff page (:meth:`~dangol_edge.screen.Screen.last_signup`) names them."""
        self._finish("already", seconds=10, regular=found.customer_id)
        log.info("sign-up not stored: already a regular, customer %s (%d of %d snapshots matched them, best score "
                 "%.3f)", found.customer_id, found.votes, found.templates, found.score)

    def _save(self, col: SampleCollector) -> None:
        cfg = self.config.enrol
        samples = col.select()
        try:  # one transaction: the customer and all its templates, or nothing
            found = self._regular(samples)
            if found is not None:
                self._already(found)
                return
            c = enroll(self.gallery, "", samples, status="pending", keep_photos=cfg.keep_photos,
                       pending_ttl_s=cfg.pending_ttl_h * 3600)
        except sqlite3.OperationalError as exc:  # disk full / read-only medium
            self._storage(storage_state(exc))
            self._finish("not-saved", seconds=10)
            log.error("sign-up not saved: the gallery cannot be written (%s)", exc)
            return
        except Exception as exc:  # e.g. a corrupt page (sqlite3.DatabaseError): end the sign-up, the worker logs it
            if isinstance(exc, sqlite3.DatabaseError):
                self._storage("error")
            self._finish("not-saved", seconds=10)
            raise
        self._finish("pending", c.short_code, seconds=60)
        log.info("pending customer %s (code %s)", c.id, c.short_code)
        try:
            self.outbox.send(self.events.pending(c.id, c.short_code))
            self._storage("ok")
        except EventNotSaved as exc:  # held by the outbox and retried; the customer is stored
            self._storage("error")
            log.error("%s", exc)
