"""Detect → quality gates → align → embed: the per-frame face pipeline shared by enrolment,
identification, evaluation and the daemon.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .align import align_face, sharpness
from .config import DetectorConfig
from .detect import Detection, FaceDetector, QualityGate
from .embed import Embedder


@dataclass
class Face:
    """One face found in a frame.

    Attributes:
        detection: the detector's detection (box, score, keypoints in px; YuNet also mouth corners).
        crop: aligned ``(S, S, 3) uint8`` RGB crop for the embedder (S = 112 SFace, 160 FaceNet) (kept in memory only, never written to disk
            unless enrolment photos are enabled).
        sharpness: variance of the Laplacian of the crop.
        rejected: the failed quality gate (``score``, ``size``, ``pose``, ``roll``, ``blur``) or None.
        embedding: ``(D,) float32`` unit vector (D = the embedder's size), or None when rejected.
    """

    detection: Detection
    crop: np.ndarray | None = None
    sharpness: float = 0.0
    rejected: str | None = None
    embedding: np.ndarray | None = None

    @property
    def quality(self) -> float:
        """A [0, 1] quality score for templates: detector score × frontal-ness × sharpness saturation."""
        d = self.detection
        frontal = max(0.0, 1.0 - d.yaw * 2)
        sharp = min(1.0, self.sharpness / 200.0)
        return float(d.score * (0.5 + 0.5 * frontal) * (0.5 + 0.5 * sharp))


#: Per-stage latencies kept (the most recent ones): enough for percentiles, bounded for a 15-hour day.
TIMES_KEPT = 4096


def _recent() -> deque:
    return deque(maxlen=TIMES_KEPT)


@dataclass
class StageTimes:
    """Recent per-stage latencies, ms, for benchmarks and health (the last :data:`TIMES_KEPT` calls)."""

    detect: deque = field(default_factory=_recent)
    align: deque = field(default_factory=_recent)
    embed: deque = field(default_factory=_recent)


class FacePipeline:
    """Runs detection, the quality gates, alignment and embedding on RGB frames.

    Args:
        detector: a :class:`FaceDetector` (opened lazily).
        embedder: an :class:`Embedder` (opened lazily).
        config: the gate thresholds; defaults to the detector's config.
        gates: False to embed every detection (evaluation of the raw model on curated photos).
    """

    def __init__(self, detector: FaceDetector, embedder: Embedder,
                 config: DetectorConfig | None = None, gates: bool = True):
        self.detector = detector
        self.embedder = embedder
        self.gate = QualityGate(config or detector.config)
        self.gates = gates
        self.times = StageTimes()

    def close(self) -> None:
        """Release the detector."""
        self.detector.close()

    def process(self, rgb: np.ndarray, max_faces: int | None = None, photo: bool = False) -> list[Face]:
        """Find, gate, align and embed the faces of one RGB ``(H, W, 3) uint8`` frame, largest first.

        Rejected faces are returned too (``rejected`` set, ``embedding`` None), so callers can tell
        "no face" from "a face, but not good enough".

        Args:
            photo: True for a still photo given for enrolment: detection also finds faces that fill the photo
                (:meth:`~dangol_edge.detect.FaceDetector.detect_photo`); False for camera frames.

        Raises:
            ValueError: the array is not ``(H, W, 3) uint8``.
        """
        t0 = time.perf_counter()
        dets = self.detector.detect_photo(rgb) if photo else self.detector.detect(rgb)
        self.times.detect.append((time.perf_counter() - t0) * 1000)
        if max_faces is not None:
            dets = dets[:max_faces]
        faces: list[Face] = []
        to_embed: list[Face] = []
        for det in dets:
            face = Face(detection=det)
            faces.append(face)
            if self.gates and (reason := self.gate.check(det)):
                face.rejected = reason
                continue
            t1 = time.perf_counter()
            face.crop = align_face(rgb, det.keypoints, self.embedder.spec, det.corners)
            face.sharpness = sharpness(face.crop)
            self.times.align.append((time.perf_counter() - t1) * 1000)
            if self.gates and (reason := self.gate.check_sharpness(face.sharpness)):
                face.rejected = reason
                continue
            to_embed.append(face)
        if to_embed:
            t2 = time.perf_counter()
            embs = self.embedder.embed(np.stack([f.crop for f in to_embed]))
            self.times.embed.append((time.perf_counter() - t2) * 1000)
            for f, e in zip(to_embed, embs):
                f.embedding = e
        return faces
