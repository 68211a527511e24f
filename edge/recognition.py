"""Recognition on a stream of frames: face pipeline → 1:N gallery search → tracking and voting."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .config import EdgeConfig
from .detect import FaceDetector
from .embed import Embedder
from .faces import Face, FacePipeline
from .gallery import Gallery, Match
from .sources import Frame
from .tracker import Decision, Observation, Tracker


@dataclass
class FrameResult:
    """What recognition made of one frame: faces (with their match, None if not embedded) and decisions."""

    frame_index: int
    ts: float
    faces: list[Face]
    matches: list[Match | None]
    decisions: list[Decision]
    match_ms: float = 0.0


@dataclass
class Recognizer:
    """Runs the whole recognition step per frame.

    Build it with :meth:`from_config`; call :meth:`process` per :class:`~dangol_edge.sources.Frame`.
    """

    pipeline: FacePipeline
    gallery: Gallery
    tracker: Tracker
    threshold: float
    margin: float
    match_times: list[float] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: EdgeConfig, gallery: Gallery | None = None,
                    embedder: Embedder | None = None) -> "Recognizer":
        """Wire detector, embedder, gallery and tracker from a config (nothing is opened yet)."""
        embedder = embedder or Embedder(config.model_path, threads=config.embedder.threads)
        pipeline = FacePipeline(FaceDetector(config.detector), embedder)
        gallery = gallery or Gallery(config.gallery_path, embedder.sha256)
        return cls(pipeline, gallery, Tracker(config.tracker), config.matcher.threshold, config.matcher.margin)

    def process(self, frame: Frame) -> FrameResult:
        """Detect, embed and match every face of ``frame``; update tracks; return the result."""
        faces = self.pipeline.process(frame.rgb)
        embedded = [f for f in faces if f.embedding is not None]
        matches: list[Match | None] = [None] * len(faces)
        ms = 0.0
        if embedded:
            import numpy as np

            t0 = time.perf_counter()
            found = self.gallery.match(np.stack([f.embedding for f in embedded]), self.threshold, self.margin)
            ms = (time.perf_counter() - t0) * 1000
            self.match_times.append(ms)
            it = iter(found)
            matches = [next(it) if f.embedding is not None else None for f in faces]
        obs = [
            Observation(box=f.detection.box,
                        customer_id=m.customer_id if m and m.accepted else None,
                        score=m.score if m else -1.0, embedded=m is not None)
            for f, m in zip(faces, matches)
        ]
        decisions = self.tracker.update(frame.ts, obs)
        return FrameResult(frame.index, frame.ts, faces, matches, decisions, ms)

    def close(self) -> None:
        """Release the detector."""
        self.pipeline.close()
