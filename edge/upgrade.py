"""Model upgrades that keep every regular: templates move to a new embedder without re-enrolment.

Templates are tagged with the sha256 of the embedder that made them, and only the current model's are
searched. When a device gets a new model (say FaceNet → SFace), ``embedder.previous_model_path`` names
the old one. While the upgrade runs, a face that the new model does not recognise is also embedded by the
old model and searched among the old templates of active and pending customers, with the old model's own
calibrated rule at a ten times stricter FPIR, and the margin. A customer is migrated only on a *track's*
decision, the door's vote (:class:`~dangol_edge.tracker.Tracker`): the old model accepted them in at least
``tracker.min_votes`` frames of one track and in ``tracker.vote_share`` of the track's embedded frames, and at
least ``min_votes`` of the new model's embeddings of those frames agree (each ≥
:data:`~dangol_edge.enrol.CONSISTENCY_MIN_SIMILARITY` to their medoid, :func:`~dangol_edge.enrol.medoid_consistent`).
Then the best of the agreeing frames (highest quality, then old-model score) gives the customer one new-model
template; the track migrates nobody else. One frame of a stranger that the old model happens to accept never
becomes a regular's template; frames of a visit are alike, though, so a stranger the old model accepts in most
frames of a visit is migrated as the old door would have greeted them.

The upgrade ends (old templates deleted, old model released) once every customer who had an old template — active,
or a sign-up still pending (waiting for staff, at most ``enrol.pending_ttl_h``) — has a new one, or
``embedder.upgrade_days`` after it started, whichever comes first; customers not seen by then must be re-enrolled
(the log and ``dangol-edge customers list`` show who; a pending sign-up left with no template is refused at
activation: :class:`~dangol_edge.gallery_models.NoCurrentTemplate`). While it runs, a pending sign-up with only old
templates can be activated (unless it is a regular's face, see below) and is migrated at its next visit, like every
regular — but never in a regular's place: the regulars' old templates are searched first, a sign-up that is a
regular's face is not searched at all, and a sign-up is not migrated on a track where a regular was accepted
(:mod:`dangol_edge.upgrade_search`). The daemon's housekeeping calls
:meth:`ModelUpgrade.check` on every pass, so the deadline holds while the daemon keeps running; only those passes end
it by the deadline, and only on a clock retention trusts (no step just seen, NTP not still awaited). Its start moves
with each step of the wall clock the daemon sees or finds on its next start
(:meth:`~dangol_edge.gallery_expiry.GalleryExpiry.shift_stamps`, :mod:`dangol_edge.clock_anchor`): a clock ahead for
a minute, or NTP correcting a clock that was behind when the upgrade started, never ends it early (the time a box
without a clock is off may not count: it then ends later, never sooner).

An erasure while the upgrade runs (staff page, cloud, retention) drops the customer's old templates from the
upgrade's in-memory matcher too (:meth:`ModelUpgrade.forget`); one erased elsewhere (the CLI, another process)
is dropped the first time the old model's vote would migrate them.

A migration the gallery cannot write (disk full, a locked or read-only database) never costs the frame's greetings:
the recognizer logs and counts it (:meth:`ModelUpgrade.failed`) and returns the tracker's decisions; the track is
not done, so its next frames try again; and the next housekeeping pass's :meth:`ModelUpgrade.check` raises it once
(:class:`UpgradeNotSaved`, a ``sqlite3.OperationalError``), which the pass counts and reports as the daemon's
``storage`` health.

While the upgrade runs, the gallery knows the previous model and its calibrated rule at the door's FPIR
(:class:`~dangol_edge.gallery_search.PreviousModel`): the staff page's "already a regular" check of a sign-up made
before the upgrade compares its old templates with the regulars' old templates
(:meth:`~dangol_edge.gallery_search.GallerySearch.refuse_if_regular`), so a second record of a regular is refused at
activation as it is without an upgrade.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

from .align import align_face
from .calibration import OpenSetRule, load_calibration, pipeline_of, uncalibrated
from .embed import Embedder
from .enrol import medoid_consistent
from .faces import Face
from .gallery import Gallery, UnknownCustomer
from .gallery_models import UPGRADE_STARTED_KEY
from .gallery_search import PreviousModel
from .matcher import Match
from .upgrade_search import OldTemplates

log = logging.getLogger(__name__)

STARTED_KEY = UPGRADE_STARTED_KEY
#: The old model must accept a face at this fraction of the configured FPIR to migrate it.
STRICTER = 0.1


def previous_door_model(previous: Embedder, target_fpir: float, pipeline: dict | None = None) -> PreviousModel:
    """An upgrade's previous model with its calibrated open-set rule at the door's FPIR ``target_fpir``
    (``matcher.target_fpir``): the door's rule as it was with that model, for the "already a regular" checks of
    sign-ups against regulars not migrated yet (:attr:`~dangol_edge.gallery_search.GallerySearch.previous_model`).

    ``pipeline``: what the door runs in front of the previous model, ``pipeline_of(config.detector,
    config.model_path, previous.spec)`` (:func:`~dangol_edge.calibration.pipeline_of`: the configured detector, its
    YuNet file the one the door loads, and the previous model's alignment); default the default detector (YuNet)
    beside the previous model. Its calibration must have been measured with it, as the door's own model's must
    (:func:`~dangol_edge.recognition.rule_for`).

    Raises:
        CalibrationError: the previous model has no calibration file (never a fixed threshold: ``matcher.threshold``
            is on the current model's scale), or it is malformed or another model's.
        PipelineMismatch: (a ``CalibrationError``, treated the same) the file was measured with another pipeline
            than ``pipeline``, or does not say which.
    """
    if pipeline is None:
        from .config import DetectorConfig

        pipeline = pipeline_of(DetectorConfig(), previous.model_path, previous.spec)
    tail = load_calibration(previous.model_path, previous.sha256, pipeline, upgrade=True)
    if tail is None:
        raise uncalibrated(previous.model_path, upgrade=True)
    return PreviousModel(previous.sha256, OpenSetRule(tail, target_fpir))


class UpgradeNotSaved(sqlite3.OperationalError):
    """Raised by :meth:`ModelUpgrade.check` after migrations failed to be written on the recognition thread (disk full,
    a locked or read-only database): a storage error for the housekeeping pass to count and report (``str()`` keeps
    SQLite's message, e.g. "database or disk is full")."""


class UpgradeFailed(RuntimeError):
    """Raised by :meth:`ModelUpgrade.check` after :meth:`ModelUpgrade.observe` failed on frames for another reason."""


@dataclass
class _TrackVotes:
    """What the old model made of one track's faces so far (memory only, dropped when the track ends).

    Attributes:
        frames: embedded faces of the track (whatever the new model made of them): the vote share's denominator.
        votes: customer id → frames the old model accepted as them.
        faces: customer id → ``(old-model score, quality, new-model embedding (D,) float32)`` of their latest
            accepted frames (bounded).
        done: the track migrated somebody (or its customer was erased): nothing more to do for it.
        disagreed: the elected customer's faces were found not to agree once (logged once per track).
        beside_regular: a pending sign-up was elected on a track where a regular was accepted too (not migrated;
            logged once per track).
    """

    frames: int = 0
    votes: Counter = field(default_factory=Counter)
    faces: dict = field(default_factory=dict)
    done: bool = False
    disagreed: bool = False
    beside_regular: bool = False


class ModelUpgrade:
    """Migrates customers from a previous embedder's templates to the current one's.

    Args:
        gallery: the open gallery (its ``model_sha256`` is the new model's).
        previous: the old embedder (its file must still be on the device).
        target_fpir, margin: the matcher settings; the old model must pass ``target_fpir × STRICTER``.
        max_days: how long the upgrade may run.
        max_templates: new-model templates kept per customer.
        min_votes, vote_share: the tracker's vote (``tracker.min_votes``, ``tracker.vote_share``) that a track's
            old-model matches must win to migrate (see the module docstring).
        pipeline: what the door runs in front of the old model (:func:`previous_door_model`), which its calibration
            must have been measured with.

    Raises (from :meth:`start`):
        CalibrationError: the old model has no calibration file, or one measured with another pipeline than
            ``pipeline`` (:class:`~dangol_edge.calibration.PipelineMismatch`). A migration is never judged on a fixed
            threshold: ``matcher.threshold`` is on the *new* model's scale, and a wrong one migrates a stranger's
            face into a regular's templates.

    Attributes:
        erased_dropped: customers the old model recognised after they were erased from the gallery (dropped
            from the matcher instead of migrated).
        reload_failures: reloads of the old templates after an erasure that failed (see :meth:`forget`).
        failures: frames on which :meth:`observe` failed (:meth:`failed`; e.g. a migration the gallery could not
            write: the track tries again at its next frames).
    """

    def __init__(self, gallery: Gallery, previous: Embedder, target_fpir: float, margin: float,
                 max_days: float, max_templates: int = 5, *, min_votes: int = 3, vote_share: float = 0.6,
                 pipeline: dict | None = None):
        self.gallery, self.previous, self.pipeline = gallery, previous, pipeline
        self.target_fpir, self.margin = target_fpir, margin
        self.max_days, self.max_templates = max_days, max_templates
        self.min_votes, self.vote_share = min_votes, vote_share
        self._tracks: dict[int, _TrackVotes] = {}  # live track id -> its old-model votes (recognition thread only)
        self.matcher = OldTemplates()  # regulars first, then sign-ups pending staff (dangol_edge.upgrade_search)
        self.migrated: list[str] = []
        self.done = False
        self.erased_dropped = 0
        self.reload_failures = 0
        self.failures = 0
        self._unreported: tuple[int, Exception] | None = None  # failures since the last check(), and the latest
        self._loaded: frozenset[str] = frozenset()
        self._rule: OpenSetRule | None = None
        self._door_rule: OpenSetRule | None = None  # the old model's rule at the door's FPIR (duplicate sign-ups)
        # check() runs on the recognition and housekeeping threads, forget() on whichever erased: reloads and the
        # end of the upgrade are serialised, so a reload read before an erasure never lands after its forget()
        self._lock = threading.RLock()

    def start(self, now: datetime | None = None) -> "ModelUpgrade":
        """Load the old templates and record when the upgrade started (first run only). Raises what
        :func:`previous_door_model` raises, before anything is recorded."""
        now = now or datetime.now(timezone.utc)
        door = previous_door_model(self.previous, self.target_fpir, self.pipeline)
        if self.gallery.meta(STARTED_KEY) is None:
            self.gallery.set_meta(STARTED_KEY, now.isoformat(timespec="seconds"))
        self._rule = OpenSetRule(door.rule.tail, self.target_fpir * STRICTER)
        self._door_rule = door.rule
        # the staff page's "already a regular" check of sign-ups with only old templates: the door's rule as it was
        self.gallery.previous_model = door
        self._reload()
        self.check(now, deadline=False)  # the deadline is the housekeeping pass's, on a clock it trusts
        return self

    def _reload(self) -> None:
        """Load the old-model templates of the active and pending customers (a sign-up waiting for staff is
        migrated like a regular, but never in a regular's place: :mod:`dangol_edge.upgrade_search`; the matrices are
        swapped in whole, so a search on the recognition thread meanwhile sees the old set or the new one)."""
        with self._lock:
            if self.done:
                return
            self.matcher.load(self.gallery, self.previous.sha256, self._door_rule, self.margin, self.min_votes,
                              self.vote_share)
            self._loaded = self.matcher.ids

    @property
    def loaded(self) -> frozenset[str]:
        """Customers whose old-model templates are in memory (searched by :meth:`observe`)."""
        return self._loaded

    def forget(self, customer_id: str) -> None:
        """Drop an erased customer's old templates from memory (call after the gallery erased them). Never
        raises: when the gallery cannot be read back, every old template leaves memory (the erasure wins;
        counted in ``reload_failures``) and the next :meth:`observe` reloads them."""
        with self._lock:
            if self.done or customer_id not in self._loaded:
                return
            try:
                self._reload()
            except Exception:
                self.matcher.clear()
                self._loaded = frozenset()
                self.reload_failures += 1
                log.exception("model upgrade: cannot reload the old templates after erasing %s; all dropped "
                              "from memory until the next frame reloads them", customer_id)
                return
        log.info("model upgrade: erased customer %s dropped from the old model's templates", customer_id)

    def pending(self) -> set[str]:
        """Customers (active, and sign-ups pending staff's activation) with an old-model template and no
        new-model template: the upgrade waits for them until its deadline."""
        models = self.gallery.template_models()
        old, new = self.previous.sha256, self.gallery.model_sha256
        return {cid for cid, m in models.items() if m.get(old) and not m.get(new)}

    def check(self, now: datetime | None = None, deadline: bool = True) -> bool:
        """End the upgrade when everyone is migrated or (``deadline``) the period is over by the wall clock ``now``
        (default: now). Returns True when done. The daemon's housekeeping pass calls it, with ``deadline`` False while
        its clock is not trusted (a step just seen, NTP still awaited): then only an upgrade with nobody left to
        migrate ends. It also reports, once, the frames :meth:`observe` failed on since the last check
        (:meth:`failed`), by raising after its work.

        Raises:
            sqlite3.Error: the gallery cannot be read or written (the upgrade goes on; the next check retries).
            UpgradeNotSaved: (a ``sqlite3.OperationalError``) migrations could not be written since the last check.
            UpgradeFailed: :meth:`observe` failed on frames since the last check for another reason.
        """
        with self._lock:
            done = self._check(now, deadline)
            held, self._unreported = self._unreported, None
        if held is not None:
            n, exc = held
            what = f"model upgrade: {n} frame(s) failed since the last check (the last: {exc})"
            if isinstance(exc, sqlite3.OperationalError):
                raise UpgradeNotSaved(f"{what}; their tracks try again at their next frames") from exc
            raise UpgradeFailed(what) from exc
        return done

    def failed(self, exc: Exception) -> None:
        """Count a frame on which :meth:`observe` raised ``exc`` (the recognizer logs it and goes on with its
        decisions); the next :meth:`check` reports it."""
        with self._lock:
            self.failures += 1
            n = self._unreported[0] if self._unreported else 0
            self._unreported = (n + 1, exc)

    def _check(self, now: datetime | None, deadline: bool = True) -> bool:
        if self.done:
            return True
        now = now or datetime.now(timezone.utc)
        started = datetime.fromisoformat(self.gallery.meta(STARTED_KEY) or now.isoformat())
        left = self.pending()
        if left and (not deadline or now - started < timedelta(days=self.max_days)):
            return False
        if left:
            log.warning("model upgrade ended after %.0f days: %d customers (sign-ups still pending included: they are "
                        "refused at activation) not seen were not migrated and must be re-enrolled: %s", self.max_days,
                        len(left), ", ".join(sorted(left)))
        dropped = self.gallery.drop_other_models()
        self.gallery.set_meta(STARTED_KEY, None)
        self.gallery.previous_model = None
        log.info("model upgrade finished: %d customers migrated, %d old templates deleted", len(self.migrated), dropped)
        self.done = True
        self.matcher.clear()
        self._loaded = frozenset()
        return True

    def observe(self, rgb: np.ndarray, faces: list[Face], matches: list[Match | None], tracks: list[int | None],
                live: Collection[int]) -> list[str]:
        """Try the old model on the faces the new model embedded but did not accept; migrate on a track's vote.

        Args:
            rgb: the frame, ``(H, W, 3) uint8`` RGB; faces/matches: the new model's results for it.
            tracks: each face's track id (:attr:`~dangol_edge.tracker.Observation.track_id`, after the tracker's
                update of this frame).  live: the ids of the tracker's live tracks (the others' votes are dropped).
        Returns:
            ids of the customers who got a new-model template from this frame (their track's decision).
        Raises:
            Exception: what the old model or the gallery raised, e.g. ``sqlite3.OperationalError`` when a migration
                cannot be written; that track is not done and tries again at its next frames, and the other tracks'
                migrations of this frame are made first.
        """
        if self.done:
            return []
        self._tracks = {tid: tv for tid, tv in self._tracks.items() if tid in live}
        todo = []
        for face, m, tid in zip(faces, matches, tracks):
            if face.embedding is None or tid is None:
                continue
            tv = self._tracks.setdefault(tid, _TrackVotes())
            tv.frames += 1
            if not tv.done and not (m and m.accepted):
                todo.append((face, tid))
        if not todo:
            return []
        if not self.matcher.loaded:  # emptied by a failed forget()
            self._reload()
        if self.matcher.size == 0:
            return []
        spec = self.previous.spec
        crops = np.stack([align_face(rgb, f.detection.keypoints, spec, f.detection.corners) for f, _ in todo])
        old = self.matcher.match(self.previous.embed(crops), self._rule.threshold(self.matcher.size), self.margin)
        voted = []
        for (face, tid), m in zip(todo, old):
            if not m.accepted:
                continue
            tv = self._tracks[tid]
            tv.votes[m.customer_id] += 1
            kept = tv.faces.setdefault(m.customer_id, deque(maxlen=max(2 * self.min_votes, 8)))
            kept.append((m.score, face.quality, face.embedding))
            voted.append(tid)
        added, error = [], None
        for tid in dict.fromkeys(voted):
            try:
                if (cid := self._decide(tid)) is not None:
                    added.append(cid)
            except Exception as exc:  # the other tracks still migrate; raised below
                error = error or exc
        if added:
            self.migrated += [c for c in added if c not in self.migrated]
        if error is not None:
            raise error
        if added:
            with self._lock:
                self._check(None, deadline=False)
        return added

    def _decide(self, tid: int) -> str | None:
        """Migrate the customer a track's old-model votes elect (see the module docstring); returns their id."""
        tv = self._tracks[tid]
        cid, n = tv.votes.most_common(1)[0]
        if n < self.min_votes or n < self.vote_share * tv.frames:
            return None
        signups = self.matcher.signups
        if cid in signups and any(c not in signups for c in tv.votes):  # never in a regular's place
            if not tv.beside_regular:
                tv.beside_regular = True
                log.info("model upgrade: sign-up %s (pending) not migrated: the old model also accepted a regular in "
                         "this track", cid)
            return None
        kept = list(tv.faces[cid])
        keep, _ = medoid_consistent(np.stack([e for _, _, e in kept]), np.array([q for _, q, _ in kept]))
        if int(keep.sum()) < min(self.min_votes, len(kept)):
            if not tv.disagreed:
                tv.disagreed = True
                log.info("model upgrade: customer %s not migrated yet: the new model's faces of the %d frames the old "
                         "model accepted do not agree (only %d of them similar to their medoid)", cid, len(kept),
                         int(keep.sum()))
            return None
        score, quality, emb = max((k for k, ok in zip(kept, keep) if ok), key=lambda k: (k[1], k[0]))
        try:  # a write that fails (disk full, locked) raises with the track not done: its next frames try again
            self.gallery.add_templates(cid, emb[None], [quality], max_per_model=self.max_templates)
        except UnknownCustomer:  # erased since the old templates were loaded (e.g. by the CLI)
            tv.done = True
            self.erased_dropped += 1
            log.warning("model upgrade: customer %s was erased; dropped from the old model's templates "
                        "(%d so far)", cid, self.erased_dropped)
            self._reload()
            return None
        tv.done = True
        log.info("model upgrade: customer %s migrated (%d of %d frames of the track, old model score %.3f)",
                 cid, n, tv.frames, score)
        return cid
