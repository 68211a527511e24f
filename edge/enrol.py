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
    """One accepted enrolment face: ``embedding (512,) float32``, quality in [0, 1], the aligned crop."""

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


def samples_from_source(source: FrameSource, pipeline: FacePipeline, wanted: int, max_frames: int,
                        min_gap_frames: int = 3) -> list[Sample]:
    """Capture up to ``wanted`` good samples of the largest face of a live source or video.

    Frames are taken at least ``min_gap_frames`` apart so templates are not near-duplicates.

    Raises:
        EnrolmentError: the source ended or ``max_frames`` passed without one good face.
    """
    out: list[Sample] = []
    last = -min_gap_frames
    seen = 0
    for frame in source.frames():
        seen += 1
        if seen > max_frames or len(out) >= wanted:
            break
        if frame.index - last < min_gap_frames:
            continue
        faces = pipeline.process(frame.rgb, max_faces=1)
        if faces and faces[0].embedding is not None:
            f: Face = faces[0]
            out.append(Sample(f.embedding, f.quality, f.crop))
            last = frame.index
    if not out:
        raise EnrolmentError(f"{source.spec}: no good face in {seen} frames")
    return out


def enroll(gallery: Gallery, name: str, samples: list[Sample], *, status: str = "active",
           consent: dict | None = None, keep_photos: bool = False, pending_ttl_s: float | None = None,
           customer_id: str | None = None) -> Customer:
    """Store a customer with one template per sample (one transaction)."""
    photos = None
    if keep_photos:
        photos = [cv2.imencode(".jpg", cv2.cvtColor(s.crop, cv2.COLOR_RGB2BGR))[1].tobytes() for s in samples]
    return gallery.enroll(name, np.stack([s.embedding for s in samples]), [s.quality for s in samples],
                          status=status, consent=consent, photos=photos, pending_ttl_s=pending_ttl_s,
                          customer_id=customer_id)
