"""Enrolment: turning photos or a live source into a customer's templates.

Every input is checked before anything is written; the customer and all templates are then stored in
one transaction (:meth:`dangol_edge.gallery.Gallery.enroll`), so a bad photo never leaves a half-enrolled
customer behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from dangol_protocol import Consent

from .calibration import CalibrationError, OpenSetRule, load_calibration, uncalibrated
from .faces import Face, FacePipeline
from .gallery import Customer, Enrolled, Gallery
from .sources import FrameSource, read_image

if TYPE_CHECKING:
    from .config import EdgeConfig

log = logging.getLogger(__name__)


class EnrolmentError(ValueError):
    """A photo or source cannot be enrolled from; the message names it and says why."""


_REASONS = {
    "score": "the face detector is not confident enough",
    "size": "the face is too small",
    "pose": "the face is turned away (need a frontal face)",
    "roll": "the head is tilted too far",
    "blur": "the face is too blurred",
}


@dataclass
class Sample:
    """One accepted enrolment face: ``embedding (D,) float32``, quality in [0, 1], the aligned crop; while a model
    upgrade runs, also the face's crop aligned for the previous model (``previous_crop``, ``(S', S', 3) uint8``; None
    otherwise: :mod:`dangol_edge.signup_previous`)."""

    embedding: np.ndarray
    quality: float
    crop: np.ndarray
    previous_crop: np.ndarray | None = None


def sample_from_photo(path: str | Path, pipeline: FacePipeline) -> Sample:
    """The single good face of a photo.

    Raises:
        EnrolmentError: unreadable image, no face, several faces, or the face fails a quality gate.
    """
    try:
        rgb = read_image(path)
    except ValueError as exc:
        raise EnrolmentError(str(exc)) from exc
    min_score = pipeline.gate.config.min_score
    faces = [f for f in pipeline.process(rgb, photo=True) if f.detection.score >= min_score]
    if not faces:
        raise EnrolmentError(f"{path}: no face found")
    if len(faces) > 1:
        raise EnrolmentError(f"{path}: {len(faces)} faces found; enrol from a photo with exactly one face")
    f = faces[0]
    if f.embedding is None:
        raise EnrolmentError(f"{path}: {_REASONS.get(f.rejected or '', f.rejected)} ({f.rejected})")
    return Sample(f.embedding, f.quality, f.crop)


CONSISTENCY_MIN_SIMILARITY = 0.40
"""Lowest cosine similarity to the pool's medoid for an enrolment candidate to count as the same person.

Source: the LFW embeddings the build stores for int8 SFace (``sface-int8.lfw-embeddings.npz``, 2,452 images of
1,211 people). For the 982 photos of people with ≥ 5 photos, the similarity to their own medoid is ≥ 0.459 (1st
percentile 0.52, median 0.77): 0.40 drops none of them, so genuine pose, expression and light variety is kept.
Another person's photo reaches 0.40 against a medoid in 0.03 % of 101,960 pairs (99th percentile 0.31, 99.9th
0.38; at 0.35, 0.3 % would still pass). It is above the calibrated single-template open-set threshold (0.31 at
1 % FPIR, N = 1), so a candidate kept is one the recognizer would match to the medoid anyway; erring high only
costs a varied frame, erring low enrols a stranger. On the real Hamilton clip the largest face of every frame is
0.40-1.0 from the whole clip's medoid for Lin-Manuel Miranda (0.40-0.48 only for frames 82-87) and
≤ 0.14 for the other people
(tests/edge/test_enrol_consistency.py)."""


def medoid_consistent(emb: np.ndarray, quality: np.ndarray,
                      min_similarity: float = CONSISTENCY_MIN_SIMILARITY) -> tuple[np.ndarray, np.ndarray]:
    """Which candidates are the same person as the pool's medoid.

    Args:
        emb: ``(N, D) float32`` unit embeddings, N ≥ 1.
        quality: ``(N,)`` qualities in [0, 1] (break ties between equally central candidates, e.g. N = 2).
        min_similarity: the consistency bound (:data:`CONSISTENCY_MIN_SIMILARITY`).

    Returns:
        ``(keep (N,) bool, sim (N,) float32)``: ``sim`` is each candidate's cosine similarity to the medoid (the
        candidate with the highest mean similarity to the others), ``keep`` is ``sim >= min_similarity``.
    """
    n = len(emb)
    s = emb @ emb.T
    mean = (s.sum(axis=1) - np.diag(s)) / max(n - 1, 1)
    m = int(np.lexsort((-np.asarray(quality, float), -np.round(mean, 6)))[0])
    sim = s[m]
    keep = sim >= min_similarity
    keep[m] = True
    return keep, sim


def samples_from_photos(paths: list[str | Path], pipeline: FacePipeline,
                        min_similarity: float = CONSISTENCY_MIN_SIMILARITY) -> list[Sample]:
    """One sample per photo (:func:`sample_from_photo`), all of one person: every photo's face must be at least
    ``min_similarity`` (cosine) to the photos' medoid (:func:`medoid_consistent`), else the customer would be stored
    with somebody else's face (greeted as them for good). Two photos: each must be that similar to the other.

    Raises:
        EnrolmentError: a photo fails :func:`sample_from_photo` (named), or one or more photos are not the same person
            as the others: each such photo is named with its similarity and the medoid photo it was compared to.
    """
    samples = [sample_from_photo(p, pipeline) for p in paths]
    if len(samples) < 2:
        return samples
    keep, sim = medoid_consistent(np.stack([s.embedding for s in samples]), np.array([s.quality for s in samples]),
                                  min_similarity)
    if keep.all():
        return samples
    medoid = paths[int(np.argmax(sim))]  # its similarity to itself is 1
    odd = "; ".join(f"{p}: not the same person as {medoid} (similarity {sim[i]:.2f}, below {min_similarity:.2f})"
                    for i, p in enumerate(paths) if not keep[i])
    raise EnrolmentError(f"{odd}; enrol one person's photos only")


STRANGER_SIMILARITY = 0.315
"""Below this cosine similarity to the pool's medoid, a sign-up's newest good face is another person
(:meth:`SampleCollector.mixed`); between it and :data:`CONSISTENCY_MIN_SIMILARITY` it may be either, so the capture
goes on (:attr:`SampleCollector.full`). Source: the calibrated single-template open-set threshold, N = 1 at the default
1 % FPIR (``sface-int8.calibration.json``, :class:`~dangol_edge.calibration.OpenSetRule`; checked in
tests/edge/test_signup_review_dec7b.py): the door would not take a face this far from a one-template gallery for its
person; about 1 % of others' photos reach it against a medoid (LFW, :data:`CONSISTENCY_MIN_SIMILARITY`). One person's
own face falls between the two on a head turn or a new shot: Lin-Manuel Miranda's frames 82-86 of the Hamilton clip
are 0.34-0.39 to a pool of his frames 0-19."""


class SampleCollector:
    """The one capture rule for enrolment from a live source (CLI and the daemon's button flow).

    Good faces (every quality gate passed) at least ``min_gap_frames`` apart are kept as candidates, up
    to ``pool`` of them. The pool is the largest face of each frame, so it may hold a passer-by or a
    misaligned crop: only the candidates *consistent* with the pool's medoid (cosine similarity ≥
    ``min_similarity``, see :func:`medoid_consistent` and :data:`CONSISTENCY_MIN_SIMILARITY`) are ever
    selected. :meth:`select` then picks ``wanted`` of those for variety: the best-quality consistent
    candidate first, then repeatedly the one with the largest quality × cosine distance to the nearest
    one already chosen (quality-weighted farthest-point sampling in the embedding space, which spreads
    the templates over pose, expression and light rather than taking near-identical frames).

    The collector is :attr:`full` once ``pool`` candidates are gathered *and* at least ``wanted`` of them
    are consistent. Until then it keeps collecting (the caller stops at its ``max_frames``): when the pool
    is at its size, a new good face replaces the candidate least similar to the medoid, so memory stays
    bounded at ``pool`` samples. Nor is it full while its newest candidate is inconsistent but not clearly another
    person (``stranger_similarity``): the customer on a head turn. A full pool whose newest candidate is clearly
    another person is two people one after the other: :meth:`mixed` (store nothing).

    Args:
        wanted: templates to keep; pool: candidates to gather first (≥ wanted); min_gap_frames: frames
            between two candidates; min_similarity: the consistency bound; stranger_similarity: the stranger bound
            (:data:`STRANGER_SIMILARITY`).
    """

    def __init__(self, wanted: int, pool: int | None = None, min_gap_frames: int = 2,
                 min_similarity: float = CONSISTENCY_MIN_SIMILARITY,
                 stranger_similarity: float = STRANGER_SIMILARITY):
        self.wanted = wanted
        self.pool = max(pool or 3 * wanted, wanted)
        self.min_gap_frames = min_gap_frames
        self.min_similarity = min_similarity
        self.stranger_similarity = stranger_similarity
        self.candidates: list[Sample] = []
        self._last = -min_gap_frames

    def _consistency(self) -> tuple[np.ndarray, np.ndarray]:
        """``(keep (N,) bool, sim (N,) float32)`` of the current candidates (:func:`medoid_consistent`)."""
        c = self.candidates
        return medoid_consistent(np.stack([s.embedding for s in c]), np.array([s.quality for s in c]),
                                 self.min_similarity)

    def consistent(self) -> list[Sample]:
        """The candidates that are the same person as the pool's medoid, in capture order."""
        if not self.candidates:
            return []
        keep, _ = self._consistency()
        return [s for s, k in zip(self.candidates, keep) if k]

    @property
    def full(self) -> bool:
        """True when ``pool`` candidates were gathered, at least ``wanted`` of them are consistent, and the newest is
        consistent or clearly another person (below ``stranger_similarity`` to the medoid: :meth:`mixed`)."""
        if len(self.candidates) < self.pool:
            return False
        keep, sim = self._consistency()
        return int(keep.sum()) >= self.wanted and bool(keep[-1] or sim[-1] < self.stranger_similarity)

    def mixed(self) -> str | None:
        """Why the full pool is two people one after the other, or None (call once :attr:`full`): its newest candidate,
        the face in front of the camera when the code would show, is another person than its medoid, whose faces would
        be stored under that code. A stranger seen first (staff leaning in to press the button) is not: the faces
        stored (:meth:`select`) are the medoid's, the person in front."""
        keep, sim = self._consistency()
        if keep[-1] or sim[-1] >= self.stranger_similarity:
            return None
        return (f"the newest good face is another person than the others (similarity {sim[-1]:.2f} to their medoid, "
                f"below {self.stranger_similarity:.3f})")

    def due(self, frame_index: int) -> bool:
        """True when the frame is far enough from the last candidate to be worth processing, or numbered before
        it (a looping clip or folder, or a camera that reconnected, counts from 0 again)."""
        return frame_index < self._last or frame_index - self._last >= self.min_gap_frames

    def offer(self, face: Face | None, frame_index: int, previous_crop: np.ndarray | None = None) -> bool:
        """Keep the face if it passed every gate and the collector is not :attr:`full` (at the pool size, it
        replaces the candidate least similar to the medoid), with ``previous_crop`` (:class:`Sample`). Returns True
        when kept."""
        if self.full or face is None or face.embedding is None or not self.due(frame_index):
            return False
        if len(self.candidates) >= self.pool:  # not full: fewer than `wanted` consistent, make room
            _, sim = self._consistency()
            del self.candidates[int(np.argmin(sim))]
        self.candidates.append(Sample(face.embedding, face.quality, face.crop, previous_crop))
        self._last = frame_index
        return True

    def shortfall(self, frames: int) -> str:
        """Why the collector is not :attr:`full` after ``frames`` frames, in words for staff and the log (the
        sign-up ended at ``enrol.max_frames``):

        * ``no good face in {frames} frames``: no candidate at all;
        * ``faces did not agree: only {k} of the {n} good faces in {frames} frames are one person (more than one
          person in front of the camera?)``: enough good faces (``n ≥ wanted``), but fewer than ``wanted`` of
          them consistent with the medoid, or ``pool`` of them but the newest not clearly the same person;
        * ``too few good faces: {n} in {frames} frames, {pool} needed``: otherwise.
        """
        n, kind = len(self.candidates), self.shortfall_kind()
        if kind == "none":
            return f"no good face in {frames} frames"
        if kind == "several":
            return disagreement(len(self.consistent()), n, frames)
        return f"too few good faces: {n} in {frames} frames, {self.pool} needed"

    def shortfall_kind(self) -> str:
        """The kind of :meth:`shortfall`: ``none`` (no good face), ``several`` (the good faces did not agree:
        more than one person?) or ``few`` (too few good faces); for the door screen's words."""
        n = len(self.candidates)
        if n == 0:
            return "none"
        return "several" if len(self.consistent()) < self.wanted <= n or n >= self.pool else "few"

    def select(self) -> list[Sample]:
        """Up to ``wanted`` varied, good, consistent candidates (see the class doc), best quality first.

        Never a candidate inconsistent with the medoid: fewer than ``wanted`` samples when fewer are
        consistent (callers that wait for :attr:`full` always get ``wanted``)."""
        c = self.consistent()
        if len(c) <= self.wanted:
            return sorted(c, key=lambda s: -s.quality)
        emb = np.stack([s.embedding for s in c])
        q = np.array([s.quality for s in c])
        chosen = [int(np.argmax(q))]
        dist = 1.0 - emb @ emb[chosen[0]]
        while len(chosen) < self.wanted:
            score = q * np.maximum(dist, 0.0)
            score[chosen] = -1.0
            j = int(np.argmax(score))
            chosen.append(j)
            dist = np.minimum(dist, 1.0 - emb @ emb[j])
        return [c[i] for i in chosen]


def disagreement(same: int, good: int, frames: int) -> str:
    """The reason given when only ``same`` of ``good`` good faces seen in ``frames`` frames are one person."""
    return (f"faces did not agree: only {same} of the {good} good faces in {frames} frames are one person "
            "(more than one person in front of the camera?)")


def samples_from_source(source: FrameSource, pipeline: FacePipeline, wanted: int, max_frames: int,
                        min_gap_frames: int = 3) -> list[Sample]:
    """Capture ``wanted`` varied good samples of the largest face of a live source or video
    (:class:`SampleCollector`: a pool of three times as many candidates, then the most varied of those
    that are the same person). Fewer than ``wanted`` when the source ended or ``max_frames`` passed first.

    Raises:
        EnrolmentError: the source ended or ``max_frames`` passed without one good face (``no good face in N
            frames``), or without a majority of the good faces being one person, e.g. one frame each of two
            people (``faces did not agree: …``, :func:`disagreement`), or the full pool's newest face is another
            person than its medoid (:meth:`SampleCollector.mixed`).
    """
    col = SampleCollector(wanted, min_gap_frames=min_gap_frames)
    seen = 0
    for frame in source.frames():
        seen += 1
        if seen > max_frames or col.full:
            break
        if not col.due(frame.index):
            continue
        faces = pipeline.process(frame.rgb, max_faces=1)
        col.offer(faces[0] if faces else None, frame.index)
    seen = min(seen, max_frames)  # the frame that ended the loop was not looked at
    mixed = col.mixed() if col.full else None
    if mixed:
        raise EnrolmentError(f"{source.spec}: {mixed} (more than one person in front of the camera, one after the "
                             "other); enrol with one person in front of the camera")
    if not col.candidates:
        raise EnrolmentError(f"{source.spec}: {col.shortfall(seen)}")
    same = len(col.consistent())
    if 2 * same <= len(col.candidates):
        raise EnrolmentError(f"{source.spec}: {disagreement(same, len(col.candidates), seen)}; enrol with one "
                             "person in front of the camera")
    return col.select()


def enroll(gallery: Gallery, name: str, samples: list[Sample], *, status: str = "active",
           consent: Consent | None = None, keep_photos: bool = False, pending_ttl_s: float | None = None,
           customer_id: str | None = None) -> Customer:
    """Store a customer with one template per sample (one transaction)."""
    photos = None
    if keep_photos:
        photos = [cv2.imencode(".jpg", cv2.cvtColor(s.crop, cv2.COLOR_RGB2BGR))[1].tobytes() for s in samples]
    return gallery.enroll(name, np.stack([s.embedding for s in samples]), [s.quality for s in samples],
                          status=status, consent=consent, photos=photos, pending_ttl_s=pending_ttl_s,
                          customer_id=customer_id)


@dataclass(frozen=True)
class DoorRule:
    """The door's rule for "this face is that regular", applied to a sign-up's templates
    (:meth:`~dangol_edge.gallery_search.GallerySearch.enrolled_as`): the open-set threshold for the gallery's size
    (``rule``, as :func:`dangol_edge.recognition.rule_for` builds it), ``matcher.margin``, and the tracker's vote
    (``tracker.min_votes``, ``tracker.vote_share``) with the templates as the frames."""

    rule: OpenSetRule
    margin: float
    min_votes: int
    vote_share: float

    @classmethod
    def from_config(cls, config: "EdgeConfig", model_sha256: str) -> "DoorRule":
        """The rule of ``config`` for the model ``model_sha256`` (its calibration file, or ``matcher.threshold``).

        Raises:
            CalibrationError: no calibration file and no fixed threshold (the daemon does not start then either),
                or the file is malformed or another model's.
        """
        m = config.matcher
        tail = load_calibration(config.model_path, model_sha256)
        if tail is None and m.threshold is None:
            raise uncalibrated(config.model_path)
        return cls(OpenSetRule(tail, m.target_fpir, fixed=m.threshold), m.margin, config.tracker.min_votes,
                   config.tracker.vote_share)

    @classmethod
    def or_none(cls, config: "EdgeConfig", model_sha256: str) -> "DoorRule | None":
        """:meth:`from_config`, or None (logged as a warning) when the model has no usable calibration: then
        sign-ups cannot be checked against the regulars (a daemon never runs so; a bare web app or CLI may)."""
        try:
            return cls.from_config(config, model_sha256)
        except CalibrationError as exc:
            log.warning("sign-ups are not checked against the regulars: %s", exc)
            return None

    def find(self, gallery: Gallery, embeddings: np.ndarray,
             previous: tuple[str, np.ndarray] | None = None) -> Enrolled | None:
        """The active customer whose face ``(K, D) float32`` new templates are, or None (see the class doc).

        ``previous``: while a model upgrade runs, ``(sha256, (K, D') float32)``, the same faces embedded by its
        previous model, searched among the active customers' templates of that model when the current model's search
        finds nobody (:meth:`~dangol_edge.gallery_search.GallerySearch.enrolled_as_previous`): a regular the upgrade
        has not migrated yet has no other template.

        Raises:
            sqlite3.Error: the gallery cannot be read.
        """
        found = gallery.enrolled_as(embeddings, self.rule.threshold(gallery.size), self.margin, self.min_votes,
                                    self.vote_share)
        if found is None and previous is not None:
            found = gallery.enrolled_as_previous(previous[1], previous[0], self.margin, self.min_votes,
                                                 self.vote_share)
        return found

    def check_pending(self, gallery: Gallery, pending_id: str) -> None:
        """Raise :class:`~dangol_edge.gallery_search.AlreadyRegular` when a pending customer is an active one's face
        (for :meth:`Gallery.activate`'s ``check``: run under the gallery's lock)."""
        gallery.refuse_if_regular(pending_id, self.rule.threshold(gallery.size), self.margin, self.min_votes,
                                  self.vote_share)
