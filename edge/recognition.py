"""Recognition on a stream of frames: face pipeline → 1:N gallery search → tracking and voting."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from .calibration import OpenSetRule, PipelineMismatch, load_calibration, pipeline_of, uncalibrated
from .config import EdgeConfig
from .detect import FaceDetector
from .embed import Embedder
from .faces import Face, FacePipeline
from .gallery import Gallery
from .gallery_models import previous_embedder
from .matcher import Match
from .sources import Frame
from .tracker import Decision, Observation, Tracker
from .upgrade import ModelUpgrade

log = logging.getLogger(__name__)


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
    rule: OpenSetRule
    margin: float
    match_times: deque = field(default_factory=lambda: deque(maxlen=4096))
    upgrade: ModelUpgrade | None = None
    #: frames on which the model upgrade failed (e.g. a migration the gallery could not write); see :meth:`process`
    upgrade_failures: int = 0
    _upgrade_streak: int = field(default=0, repr=False)

    @classmethod
    def from_config(cls, config: EdgeConfig, gallery: Gallery | None = None,
                    embedder: Embedder | None = None) -> "Recognizer":
        """Wire detector, embedder, gallery, open-set rule and tracker from a config.

        Reads the model's calibration file (:func:`~dangol_edge.calibration.load_calibration`); the
        detector and embedder are opened on first use.

        A model upgrade runs while ``embedder.previous_model_path`` is set and the gallery holds templates of
        another model (:func:`~dangol_edge.gallery_models.previous_embedder`): only then is the previous model's file
        opened, so one deleted after its upgrade ended does not stop the door.

        Raises:
            CalibrationError: the calibration file beside the model (or the previous model, while an upgrade runs) is
                missing while ``matcher.threshold`` is unset, malformed, or made for another model; or was measured
                with another pipeline (:class:`~dangol_edge.calibration.PipelineMismatch`; for the previous model,
                whatever ``matcher.threshold`` says).
            ModelError: an upgrade has templates to migrate and the previous model's file is missing (named).
        """
        embedder = embedder or Embedder(config.model_path, threads=config.embedder.threads)
        pipeline = FacePipeline(FaceDetector.beside(config.model_path, config.detector), embedder)
        gallery = gallery or Gallery(config.gallery_path, embedder.sha256)
        rec = cls(pipeline, gallery, Tracker(config.tracker), rule_for(config, embedder), config.matcher.margin)
        prev = config.embedder.previous_model_path
        if prev is not None:  # the gallery's template models first: the file is needed only while old ones remain
            old = previous_embedder(config, gallery.open().other_models())
            if old is not None and old.sha256 != embedder.sha256:
                rec.upgrade = ModelUpgrade(gallery, old, config.matcher.target_fpir, config.matcher.margin,
                                           config.embedder.upgrade_days, config.enrol.templates,
                                           min_votes=config.tracker.min_votes, vote_share=config.tracker.vote_share,
                                           pipeline=pipeline_of(config.detector, config.model_path, old.spec)).start()
        return rec

    @property
    def threshold(self) -> float:
        """The acceptance threshold for the gallery's current size."""
        return self.rule.threshold(self.gallery.size)

    def process(self, frame: Frame) -> FrameResult:
        """Detect, embed and match every face of ``frame``; update tracks; return the result.

        A running model upgrade sees the frame after the tracker (it migrates on the tracks' votes). When it fails
        (a migration the gallery cannot write: disk full, a locked database), the frame's decisions are still
        returned — a regular decided in it is greeted —; the failure is counted (:attr:`upgrade_failures`, and
        :meth:`~dangol_edge.upgrade.ModelUpgrade.failed`, which the housekeeping pass reports as storage), logged with
        its traceback once per streak of failing frames, and once when a frame succeeds again.

        Raises:
            Exception: what the face pipeline, the gallery's search or the tracker raised (the frame failed).
        """
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
                        score=m.score if m else -1.0, embedded=m is not None, embedding=f.embedding)
            for f, m in zip(faces, matches)
        ]
        decisions = self.tracker.update(frame.ts, obs)
        if self.upgrade is not None and not self.upgrade.done:  # migrates on the tracks' votes: after the update
            self._observe_upgrade(frame, faces, matches, [o.track_id for o in obs])
        return FrameResult(frame.index, frame.ts, faces, matches, decisions, ms)

    def _observe_upgrade(self, frame: Frame, faces: list[Face], matches: list[Match | None],
                         tracks: list[int | None]) -> None:
        """The model upgrade's turn on a frame (:meth:`process`); never raises."""
        try:
            self.upgrade.observe(frame.rgb, faces, matches, tracks, {t.id for t in self.tracker.tracks})
        except Exception as exc:
            self.upgrade_failures += 1
            self._upgrade_streak += 1
            self.upgrade.failed(exc)
            if self._upgrade_streak == 1:
                log.error("model upgrade failed on frame %d (its decisions still count); further failures in a row "
                          "are counted, not logged", frame.index, exc_info=exc)
            return
        if self._upgrade_streak:
            log.info("model upgrade recovered after %d failed frame(s)", self._upgrade_streak)
            self._upgrade_streak = 0

    def close(self) -> None:
        """Release the detector."""
        self.pipeline.close()


def rule_for(config: EdgeConfig, embedder: Embedder) -> OpenSetRule:
    """The open-set rule for an embedder: the configured ``matcher.threshold`` when set, else calibrated to
    the gallery from the model's calibration file, which must have been measured with this edge's pipeline
    (:func:`~dangol_edge.calibration.pipeline_of`: ``detector`` backend and model file — YuNet's from
    ``detector.yunet_path`` or beside the embedder's model, as :meth:`~dangol_edge.detect.FaceDetector.beside` — and
    the model's alignment).

    A calibration measured with another pipeline counts as none: with ``matcher.threshold`` set the fixed threshold
    runs (logged), else the edge refuses, as without a calibration file.

    Raises:
        CalibrationError: no calibration file beside the model and no ``matcher.threshold`` (a fixed fallback
            accepts strangers as regulars far too often at a real gallery's size), or the file is malformed.
        PipelineMismatch: the file was measured with another detector, detector file or alignment (both named),
            and no ``matcher.threshold`` is set.
    """
    m = config.matcher
    try:
        tail = load_calibration(embedder.model_path, embedder.sha256,
                                pipeline_of(config.detector, embedder.model_path, embedder.spec))
    except PipelineMismatch as exc:
        if m.threshold is None:
            raise
        log.warning("%s; running on the fixed matcher.threshold %.3f", exc, m.threshold)
        tail = None
    if tail is None and m.threshold is None:
        raise uncalibrated(embedder.model_path)
    return OpenSetRule(tail, m.target_fpir, fixed=m.threshold)
