"""Enrolment: turning photos or a live source into a customer's templates.

Every input is checked before anything is written; the customer and all templates are then stored in
one transaction (:meth:`dangol_edge.gallery.Gallery.enroll`), so a bad photo never leaves a half-enrolled
customer behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dangol_protocol import Consent

from .faces import Face, FacePipeline
from .gallery import Customer, Gallery
from .sources import FrameSource, read_image

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
    """One accepted enrolment face: ``embedding (D,) float32``, quality in [0, 1], the aligned crop."""

    embedding: np.ndarray
    quality: float
    crop: np.ndarray


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
    faces = [f for f in pipeline.process(rgb) if f.detection.score >= min_score]
    if not faces:
        raise EnrolmentError(f"{path}: no face found")
    if len(faces) > 1:
        raise EnrolmentError(f"{path}: {len(faces)} faces found; enrol from a photo with exactly one face")
    f = faces[0]
    if f.embedding is None:
        raise EnrolmentError(f"{path}: {_REASONS.get(f.rejected or '', f.rejected)} ({f.rejected})")
    return Sample(f.embedding, f.quality, f.crop)


class SampleCollector:
    """The one capture rule for enrolment from a live source (CLI and the daemon's button flow).

    Good faces (every quality gate passed) at least ``min_gap_frames`` apart are kept as candidates, up
    to ``pool`` of them; :meth:`select` then picks ``wanted`` of them for variety: the best-quality
    candidate first, then repeatedly the candidate with the largest quality × cosine distance to the
    nearest one already chosen (quality-weighted farthest-point sampling in the embedding space, which
    spreads the templates over pose, expression and light rather than taking near-identical frames).

    Args:
        wanted: templates to keep; pool: candidates to gather first (≥ wanted); min_gap_frames: frames
            between two candidates.
    """

    def __init__(self, wanted: int, pool: int | None = None, min_gap_frames: int = 2):
        self.wanted = wanted
        self.pool = max(pool or 3 * wanted, wanted)
        self.min_gap_frames = min_gap_frames
        self.candidates: list[Sample] = []
        self._last = -min_gap_frames

    @property
    def full(self) -> bool:
        """True when enough candidates were gathered."""
        return len(self.candidates) >= self.pool

    def due(self, frame_index: int) -> bool:
        """True when the frame is far enough from the last candidate to be worth processing."""
        return frame_index - self._last >= self.min_gap_frames

    def offer(self, face: Face | None, frame_index: int) -> bool:
        """Keep the face if it passed every gate and the pool is not full. Returns True when kept."""
        if self.full or face is None or face.embedding is None or not self.due(frame_index):
            return False
        self.candidates.append(Sample(face.embedding, face.quality, face.crop))
        self._last = frame_index
        return True

    def select(self) -> list[Sample]:
        """Up to ``wanted`` varied, good candidates (see the class doc), best quality first."""
        c = self.candidates
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


def samples_from_source(source: FrameSource, pipeline: FacePipeline, wanted: int, max_frames: int,
                        min_gap_frames: int = 3) -> list[Sample]:
    """Capture ``wanted`` varied good samples of the largest face of a live source or video
    (:class:`SampleCollector`: a pool of three times as many candidates, then the most varied).

    Raises:
        EnrolmentError: the source ended or ``max_frames`` passed without one good face.
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
    if not col.candidates:
        raise EnrolmentError(f"{source.spec}: no good face in {seen} frames")
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
