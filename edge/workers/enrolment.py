"""Enrolment at the door: the sign-up state machine, started by the GPIO button or from the staff page.

``idle`` —button press or the staff page's "Start a sign-up"→ ``capturing`` (every frame goes to
:class:`~dangol_edge.enrol.SampleCollector`, the one capture rule shared with ``dangol-edge enroll --source``)
—pool full→ ``pending`` (stored unsearchable with a short code; a ``pending`` enrolment event goes to the cloud),
or ``already`` when the face is an active customer's by the door's own rule (:class:`~dangol_edge.enrol.DoorRule`:
no second record, which would keep the door from greeting either, and nothing added to theirs: a newcomer the door
falsely matched would become that regular's face; the door screen says so without a name, the staff page names them),
or —``enrol.max_frames`` first→ ``failed`` (logged with :meth:`~dangol_edge.enrol.SampleCollector.shortfall`:
no good face, faces that did not agree, or too few; the door screen and the staff page say which, with the good
snapshots taken out of the pool needed; at the deadline, :mod:`~dangol_edge.workers.signup_limits`: the camera when
under a frame a second came), or ``failed`` as "more than one face" as soon as a second good face has been beside the
first in more than :data:`~dangol_edge.workers.signup_faces.SECOND_FACE_FRAMES` frames, or when the full pool's newest
face is another person (:meth:`~dangol_edge.enrol.SampleCollector.mixed`: nothing stored), or ``not-saved`` when the
gallery cannot be written (disk full: the sign-up ends, health reports the storage, nothing half-written stays). While a
model upgrade runs, a sign-up is also checked by the previous model against the regulars the upgrade has not migrated
yet, and stored with that model's templates too (:mod:`dangol_edge.signup_previous`).
The staff page's "Cancel" (``cancel``) returns to idle from ``capturing``. Holding the button cancels the sign-up
that press started, or took over (pressed during a capture): its capture, or — once the capture has finished — the
pending customer it stored, erased as the staff page's "Discard" does (``cancelled`` on the door); a hold never starts
one. While the camera is known not to work, or sent no frame since a capture ran out of frames, no sign-up starts
(``failed``, ``why="camera"``). How a sign-up ended stays on the :class:`~dangol_edge.screen.Screen` for the staff page
until the next one starts. Steps run on the recognition thread: capture and recognition share the face pipeline, which
is not thread-safe.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

import numpy as np

from ..config import EdgeConfig
from ..enrol import DoorRule, Sample, SampleCollector, enroll
from ..events import EventFactory, EventNotSaved, Outbox
from ..gallery import Enrolled, Gallery, UnknownCustomer
from ..screen import Screen
from ..signup_previous import (PreviousSamples, embed_previous, keep_previous_or_erase, previous_crop,
                               previous_embedder)
from ..sources import Frame
from .base import storage_state
from .signup_faces import SECOND_FACE_FRAMES, SECOND_FACE_SHARE, SECOND_FACE_WIDTH, SecondFace  # noqa: F401
from .signup_discard import REPORT_RETRY_S, HeldSignups  # noqa: F401
from .signup_limits import SIGNUP_MIN_FPS, camera_problem, capture_deadline_s, deadline_failure  # noqa: F401

log = logging.getLogger(__name__)

CODE_SHOWN_S = 60.0
"""Seconds the door shows a new sign-up's short code (a welcome meanwhile does not cut it short)."""


class ButtonEnrolment(HeldSignups):
    """The sign-up state machine (see the module doc).

    Args:
        config: ``enrol`` (templates, max_frames, keep_photos, pending_ttl_h).
        gallery: where the pending customer is stored.
        screen: shows progress and the short code.
        events, outbox: the ``pending`` enrolment event.
        button: the :class:`~dangol_edge.buttons.EnrolButton` (its LED), or None.
        stats: the daemon's :class:`~dangol_edge.workers.base.Stats`, whose ``storage`` this worker sets when the
            gallery or the outbox cannot be written (None: only logged, e.g. in a bench).
        upgrade: the running :class:`~dangol_edge.upgrade.ModelUpgrade` (the recognizer's), or None: while it runs,
            a sign-up is checked and stored with its previous model's templates too (:mod:`dangol_edge.signup_previous`)
            and a held press's erasure drops it from the upgrade's memory.
        clock: monotonic seconds (``time.monotonic``; tests pass their own) for the capture's deadline
            (:data:`~.signup_limits.SIGNUP_MIN_FPS`).
    """

    def __init__(self, config: EdgeConfig, gallery: Gallery, screen: Screen, events: EventFactory, outbox: Outbox,
                 button=None, stats=None, upgrade=None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.gallery = gallery
        self.screen = screen
        self.events = events
        self.outbox = outbox
        self.button = button
        self.stats = stats
        self.upgrade = upgrade
        #: ``(what, press)``: ``press`` is the number of the button press a button request belongs to, None for the
        #: staff page's requests.
        self.requests: queue.Queue[tuple[str, int | None]] = queue.Queue(maxsize=16)
        self.requests_dropped = 0  # requests refused because the queue was full
        self._collector: SampleCollector | None = None
        self._frames = 0
        self._faces = SecondFace()  # this sign-up's "more than one face" count
        self._rule: DoorRule | bool | None = None  # built on the first sign-up; False: no calibration, not checked
        self._presses = 0  # button presses so far (gpiozero's thread numbers them)
        self._press_lock = threading.Lock()
        self._press: int | None = None  # the press that started the current or last sign-up (None: the staff page)
        self._stored: str | None = None  # the pending customer that sign-up stored, until a hold erases it
        self._unreported: dict[str, None] = {}  # erased by a hold, erasure not yet recorded for the cloud
        self._retry_at = 0.0  # monotonic seconds
        self._clock = clock
        self._deadline = 0.0  # when the capture in progress ends as failed, on ``clock``
        self._stalled_at: int | None = None  # stats.frames_captured when a capture ran out of frames

    @property
    def active(self) -> bool:
        """True while a sign-up is being captured."""
        return self._collector is not None

    def ask(self, what: str, source: str = "button", press: int | None = None) -> bool:
        """Queue a request (``"enrol"`` or ``"cancel"``) from any thread (gpiozero's, a web request's); the
        recognition thread applies it. ``press``: the button press it belongs to (:meth:`request`), None for the
        staff page. Returns False if it was dropped (queue full: logged and counted in :attr:`requests_dropped`).

        Raises:
            ValueError: ``what`` is neither ``"enrol"`` nor ``"cancel"``.
        """
        if what not in ("enrol", "cancel"):
            raise ValueError(f"enrolment request {what!r}: expected 'enrol' or 'cancel'")
        try:
            self.requests.put_nowait((what, press))
        except queue.Full:
            self.requests_dropped += 1
            log.warning("%s request %r dropped (queue full, %d so far)", source, what, self.requests_dropped)
            return False
        log.info("%s asked to %s a sign-up", source, "start" if what == "enrol" else "cancel")
        return True

    def request(self, what: str) -> Callable[[], None]:
        """The GPIO button's callback (any thread): ``"enrol"`` for a press, ``"cancel"`` for a hold. Each press is
        numbered; a hold belongs to the latest press (the one still held), so it cancels what that press started.

        Raises:
            ValueError: ``what`` is neither ``"enrol"`` nor ``"cancel"``.
        """
        if what not in ("enrol", "cancel"):
            raise ValueError(f"button request {what!r}: expected 'enrol' or 'cancel'")

        def callback() -> None:
            with self._press_lock:
                if what == "enrol":
                    self._presses += 1
                press = self._presses
            self.ask(what, "button", press)
        return callback

    def handle_requests(self) -> None:
        """Apply queued requests, end a capture past its deadline (:data:`~.signup_limits.SIGNUP_MIN_FPS`) and retry
        erasure records a hold could not write (recognition thread, also while no frame comes). Never raises: a request
        that fails is logged with its traceback (the recognition loop must go on)."""
        self._retry_reports()
        while True:
            try:
                what, press = self.requests.get_nowait()
            except queue.Empty:
                break
            try:
                if what == "enrol":
                    self._start(press)
                elif press is not None:
                    self._hold(press)
                elif self.active:  # the staff page's "Cancel": the capture in progress
                    log.info("enrolment cancelled")
                    self._finish("cancelled", seconds=3)
            except Exception as exc:
                if isinstance(exc, sqlite3.Error):
                    self._storage(storage_state(exc))
                log.exception("enrolment request %r (press %s) failed", what, press)
        if self.active and self._clock() >= self._deadline:
            self._fail(self._collector, deadline=True)

    def _start(self, press: int | None) -> None:
        """Start a sign-up for ``press`` (None: the staff page). While one is being captured, a button press takes it
        over (its hold cancels it, or discards what it stores: :meth:`_hold`) and the staff page's request starts
        nothing. While the camera is known not to work (:func:`~.signup_limits.camera_problem`) nothing starts:
        ``failed`` with ``why="camera"`` on the door and the staff page."""
        if self.active:
            if press is not None:
                self._press = press  # the latest press owns the running sign-up: its hold cancels it
            log.info("a sign-up is already being captured: %s", "the new request starts nothing" if press is None
                     else "this press takes it over (holding the button cancels it)")
            return
        problem = camera_problem(self.stats, self._stalled_at)
        if problem is not None:
            self.screen.show_enrolment("failed", seconds=5, why="camera")
            log.warning("sign-up not started: the camera does not work (%s)", problem)
            return
        log.info("enrolment started")
        self._collector = SampleCollector(self.config.enrol.templates)
        self._frames, self._faces = 0, SecondFace()
        self._press, self._stored = press, None
        self._deadline = self._clock() + capture_deadline_s(self.config.enrol.max_frames)
        self.screen.show_enrolment("capturing")
        if self.button:
            self.button.busy()

    def _hold(self, press: int) -> None:
        """The button was held after ``press``: cancel the capture in progress (this press's, or one it found
        running); else, if this press started the last sign-up, discard the pending customer it stored
        (:meth:`_discard`) or, when it stored nothing, just say "cancelled". Never starts a sign-up."""
        mine = press == self._press
        if self.active:
            log.info("enrolment cancelled (button held)")
            self._finish("cancelled", seconds=3)
        elif mine and self._stored is not None:
            self._discard(self._stored)
        elif mine:
            self._press = None
            log.info("button held: its sign-up had already ended with nothing stored")
            self._finish("cancelled", seconds=3)
        else:
            log.info("button held: no sign-up of this press to cancel")

    def _finish(self, stage: str, code: str | None = None, seconds: float | None = None, **shown) -> None:
        """End the sign-up: the door screen shows ``stage`` for ``seconds`` (``shown``: more
        :meth:`~dangol_edge.screen.Screen.show_enrolment` arguments), the button's LED goes off."""
        self._collector = None
        self.screen.show_enrolment(stage, code, seconds=seconds, **shown)
        if self.button:
            self.button.done()

    def _fail(self, col: SampleCollector, note: str = "", deadline: bool = False) -> None:
        """End the sign-up as ``failed`` at ``enrol.max_frames`` or at its ``deadline``: the door (5 s) and staff page
        get why (:meth:`~dangol_edge.enrol.SampleCollector.shortfall_kind`, or ``camera`` and no start until a frame
        comes: :func:`~.signup_limits.deadline_failure`) and the good snapshots of the pool needed."""
        frames, why = (self._frames if deadline else self.config.enrol.max_frames), col.shortfall_kind()
        if deadline:
            why, note = deadline_failure(frames, self.config.enrol.max_frames, why)
            if why == "camera" and self.stats is not None:
                self._stalled_at = self.stats.frames_captured
        self._finish("failed", seconds=5, why=why, samples=len(col.candidates), wanted=col.pool)
        log.warning("enrolment failed: %s%s", col.shortfall(frames), note)

    def _several(self, col: SampleCollector, mixed: str | None = None) -> None:
        """End the sign-up as ``failed`` with ``why="several"``: nothing is stored. ``mixed``: the full pool's newest
        face is another person (:meth:`~dangol_edge.enrol.SampleCollector.mixed`); else a second face was beside the
        first (:data:`SECOND_FACE_FRAMES`)."""
        self._finish("failed", seconds=5, why="several", samples=len(col.candidates), wanted=col.pool)
        if mixed:
            log.warning("enrolment failed: %s (more than one person in front of the camera, one after the other)",
                        mixed)
            return
        log.warning("enrolment failed: a second good face beside the first in %d of %d frames with a good face "
                    "(more than one person in front of the camera)", self._faces.second, self._faces.looked)

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
                faces = pipeline.process(frame.rgb, max_faces=2)  # the largest is offered, the next one counted
                if self._faces.several(faces):
                    self._several(col)
                    return
                face = faces[0] if faces else None
                old = previous_crop(previous_embedder(self.upgrade, self.gallery), frame.rgb, face)
                if col.offer(face, frame.index, old):
                    self.screen.show_enrolment("capturing", samples=len(col.candidates), wanted=col.pool)
        except Exception:
            if self._frames >= cfg.max_frames:
                self._fail(col, " (the last frames failed)")
            raise
        if col.full:
            mixed = col.mixed()
            if mixed:
                self._several(col, mixed)
            else:
                self._save(col)
        elif self._frames >= cfg.max_frames:
            self._fail(col)

    def _still_pending(self, customer_id: str) -> Callable[[], bool]:
        """For the door screen: whether the sign-up ``customer_id`` still waits for staff (not activated, discarded or
        expired), so its code is never shown again after that. Raises what the gallery raises (the screen logs it)."""
        def check() -> bool:
            try:
                return self.gallery.customer(customer_id).status == "pending"
            except UnknownCustomer:
                return False
        return check

    def _regular(self, samples: list[Sample], old: PreviousSamples | None) -> Enrolled | None:
        """The active customer these samples are (the door's rule, :class:`~dangol_edge.enrol.DoorRule`; during a model
        upgrade also by the previous model, ``old``: a regular not migrated yet), or None."""
        if self._rule is None:
            self._rule = DoorRule.or_none(self.config, self.gallery.model_sha256) or False
        return self._rule.find(self.gallery, np.stack([s.embedding for s in samples]),
                               old.pair if old is not None else None) if self._rule else None

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
            old = embed_previous(self.upgrade, self.gallery, samples)  # a model upgrade runs: its previous model's
            found = self._regular(samples, old)
            if found is not None:
                self._already(found)
                return
            c = enroll(self.gallery, "", samples, status="pending", keep_photos=cfg.keep_photos,
                       pending_ttl_s=cfg.pending_ttl_h * 3600)
            if old is not None:
                keep_previous_or_erase(self.gallery, c.id, old)  # never left without them
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
        self._stored = c.id
        self._finish("pending", c.short_code, seconds=CODE_SHOWN_S, still_pending=self._still_pending(c.id))
        log.info("pending customer %s (code %s)", c.id, c.short_code)
        try:
            self.outbox.send(self.events.pending(c.id, c.short_code))
            self._storage("ok")
        except EventNotSaved as exc:  # held by the outbox and retried; the customer is stored
            self._storage("error")
            log.error("%s", exc)
