"""Open-set acceptance calibrated to the gallery: a threshold from the model's impostor score distribution.

A stranger's probe is compared with every template in the gallery. If one comparison of two different
people scores at least ``s`` with probability ``p(s)`` (the upper tail of the impostor distribution),
and the ``N`` comparisons are treated as independent, the stranger is accepted as *somebody* with
probability

    FPIR(s, N) = 1 − (1 − p(s))^N

(the false-positive identification rate of ISO/IEC 19795-1 and NIST FRVT 1:N). For a target FPIR ``f``
the threshold is therefore the impostor score exceeded with probability ``p* = 1 − (1 − f)^(1/N)``.
Templates of one person are correlated, so counting every template as a comparison over-estimates the
FPIR: the rule errs on the side of strangers. The distribution is measured by ``dangol-models build``
on the different-person pairs of the shared LFW images, at most 10 images per person (1.5 million pairs), its
exceedances doubled for headroom (``dangol_models.holdout.CALIBRATION``), and stored beside the model as
``<model>.calibration.json``; beyond its last measured quantile (10 pairs; for SFace int8 past ~770 templates at
FPIR 1 %) the tail is extrapolated as log-linear in the score (exponential tail), fitted on its last decade.

The tail belongs to the whole pipeline, not to the model file alone: the same model behind another detector's
keypoints (or another alignment) scores strangers differently (methodology review: the SFace tail measured behind
YuNet, used behind MediaPipe, let 10 of 984 held-out strangers' photos through, 1.02 %, at a 1 % target; MediaPipe's
own tail, 6). So the file records the pipeline
it was measured with (:func:`pipeline_of`: detector backend and detector model file sha256, alignment crop, template,
fit and flip TTA), and :func:`load_calibration` refuses it for another (:class:`PipelineMismatch`), which the edge
treats like no calibration at all (:func:`uncalibrated`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import DetectorConfig
    from .facemodels import FaceModelSpec

log = logging.getLogger(__name__)

#: sha256 of OpenCV Zoo's ``face_detection_yunet_2023mar.onnx``, the YuNet file ``dangol-models build`` checks and
#: copies beside the models (``dangol_models.sface.SOURCES``): the detector of every calibration file written before
#: the pipeline was recorded (build recipes 3-4; see :func:`recorded_pipeline`).
YUNET_2023MAR_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"

#: BlazeFace model files inside the MediaPipe wheel that ``mp.solutions.face_detection`` loads for
#: ``model_selection`` 1 (``full``) and 0 (``short``): ``mediapipe/modules/face_detection/*.pbtxt``.
MEDIAPIPE_FILES = {"full": "face_detection_full_range_sparse.tflite", "short": "face_detection_short_range.tflite"}

#: How :func:`dangol_edge.align.alignment_matrix` fits the crop (recorded; change it when that function changes).
ALIGN_FIT = ("similarity transform, cv2.estimateAffinePartial2D LMEDS; 5 points (eyes, nose tip, mouth corners) "
             "when the detector gives mouth corners and the model has a 5-point template, else 4 (mouth centre)")

#: sha256 of the canonical JSON (:func:`_digest`) of the alignment record (:func:`alignment_record`) of build recipes
#: 3-4, per embedder: a calibration file from then (no ``pipeline`` key) is read as measured with that alignment only
#: while the code still aligns the same way.
LEGACY_ALIGNMENT_SHA256 = {
    "sface": "9afaa37f230fd02a3322f6eccc0d9ebe9738612f57c1adc53aab036816798f59",
    "facenet": "21a0f4e131b0484c568e36bbdef6d5fd01508b78fcd21b9a19ba8dcdfff818c3",
}


class CalibrationError(ValueError):
    """A calibration file is missing, unreadable or does not belong to the model; the message names the file."""


def uncalibrated(model_path: str | Path, upgrade: bool = False) -> CalibrationError:
    """The error for a model with no calibration file while no fixed ``matcher.threshold`` is configured (or, with
    ``upgrade``, for the previous model of a model upgrade, which always needs its calibration).

    There is deliberately no built-in fallback threshold: a 1:1 threshold (e.g. OpenCV's 0.363 for SFace)
    accepts a stranger as *somebody* in a large share of photos once the gallery holds hundreds of templates
    (FPIR grows with N, see the module docstring), and a device greeting strangers by a regular's name is
    worse than one that does not start and says why.
    """
    if upgrade:
        return CalibrationError(
            f"{calibration_path(model_path)}: no calibration file beside the previous model "
            "(embedder.previous_model_path); the upgrade cannot judge who to migrate: put the file `dangol-models "
            "build` wrote beside it, or remove embedder.previous_model_path (customers then re-enrol)")
    return CalibrationError(
        f"{calibration_path(model_path)}: no calibration file beside the model; build the model with "
        f"`dangol-models build` (it writes the file) or set a fixed matcher.threshold in the edge config")


class PipelineMismatch(CalibrationError):
    """The calibration file was measured with another pipeline (detector, its model file, or alignment) than the one
    the edge runs: its threshold does not hold the target FPIR here. Treated like no calibration (:func:`uncalibrated`):
    the edge refuses to start unless ``matcher.threshold`` is set."""


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def mediapipe_file(model: str) -> Path | None:
    """The BlazeFace file of the installed MediaPipe wheel for ``detector.model`` (:data:`MEDIAPIPE_FILES`), found
    without importing MediaPipe; None when MediaPipe is not installed."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "modules" / "face_detection" / MEDIAPIPE_FILES[model]


def alignment_record(spec: "FaceModelSpec") -> dict:
    """What the crops fed to the embedder depend on besides the detector: crop side, landmark templates, fit, flip TTA
    and input normalisation (:mod:`dangol_edge.facemodels`, :mod:`dangol_edge.align`)."""
    def points(t):
        return None if t is None else [[round(float(v), 3) for v in row] for row in t]

    return {"embedder": spec.name, "crop_px": int(spec.size), "template4": points(spec.template4),
            "template5": points(spec.template5),
            "fit": ALIGN_FIT, "flip": bool(spec.flip), "input": f"(pixel - {spec.mean:g}) * {spec.scale:g}"}


def pipeline_of(detector: "DetectorConfig", model_path: str | Path, spec: "FaceModelSpec") -> dict:
    """The pipeline record of an edge (or a build) running ``detector`` in front of the model ``model_path`` whose
    crops follow ``spec``: ``{"detector": {"backend", "model" (MediaPipe), "sha256" of the detector's model file, or
    None when it is missing}, "alignment": alignment_record(spec)}``. The YuNet file is the one
    :meth:`~dangol_edge.detect.FaceDetector.beside` loads (``detector.yunet_path`` or beside the model)."""
    from .detect import detector_file

    if detector.backend == "yunet":
        det = {"backend": "yunet", "sha256": _sha256_file(detector_file(detector, model_path))}
    else:
        path = mediapipe_file(detector.model)
        det = {"backend": detector.backend, "model": detector.model, "sha256": path and _sha256_file(path)}
    return {"detector": det, "alignment": alignment_record(spec)}


def describe_pipeline(p: dict) -> str:
    """One line for messages: ``yunet (sha256 8f2383e4dd3c…) → sface 112 px, 5-point alignment, flip``."""
    d, a = p["detector"], p.get("alignment")
    sha = f"sha256 {d['sha256'][:12]}…" if d.get("sha256") else "detector model file missing"
    det = d["backend"] + (f" {d['model']}" if d.get("model") else "") + f" ({sha})"
    if not a:
        return det
    return (f"{det} → {a['embedder']} {a['crop_px']} px, {5 if a['template5'] else 4}-point alignment"
            + (", flip" if a["flip"] else ""))


def recorded_pipeline(data: dict, current: dict) -> dict | None:
    """The pipeline a calibration file was measured with: its ``pipeline`` record, or for a file written before the
    record (build recipes 3-4, whose ``source`` says ``(YuNet, N pairs)``) YuNet 2023mar (:data:`YUNET_2023MAR_SHA256`)
    with the alignment of then, which is ``current``'s alignment when its digest is in :data:`LEGACY_ALIGNMENT_SHA256`.
    None when the file does not say."""
    if isinstance(data.get("pipeline"), dict):
        return data["pipeline"]
    if "(YuNet" not in str(data.get("source", "")):
        return None
    legacy = current["alignment"] if _digest(current["alignment"]) in LEGACY_ALIGNMENT_SHA256.values() else {
        "embedder": "unknown (recorded before the alignment was)", "crop_px": 0, "template5": None, "flip": None}
    return {"detector": {"backend": "yunet", "sha256": YUNET_2023MAR_SHA256}, "alignment": legacy}


def pipeline_differences(recorded: dict, current: dict) -> list[str]:
    """``["detector.backend: yunet (calibration) vs mediapipe (here)", ...]``; empty when they are the same."""
    out = []
    for part in ("detector", "alignment"):
        a, b = recorded.get(part) or {}, current.get(part) or {}
        for key in sorted(set(a) | set(b), key=lambda k: (k != "backend", k)):
            if a.get(key) != b.get(key):
                show = (lambda v: f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else v)  # noqa: E731
                if key.startswith("template"):
                    show = (lambda v: "differs" if v is not None else None)  # noqa: E731
                out.append(f"{part}.{key}: {show(a.get(key))} (calibration) vs {show(b.get(key))} (here)")
    return out


def mismatch(path: Path, recorded: dict | None, current: dict, upgrade: bool = False) -> PipelineMismatch:
    """The error for a calibration measured with ``recorded`` (None: unknown) while the edge runs ``current``; with
    ``upgrade``, of a model upgrade's previous model (no fixed threshold can stand in for it, see
    :func:`uncalibrated`)."""
    build = f"`dangol-models build --detector {current['detector']['backend']} --out DIR`"
    fix = (f"; build a calibration for this pipeline ({build}, then install that folder's files), run the pipeline "
           "the calibration was measured with, or set a fixed matcher.threshold in the edge config")
    if upgrade:
        fix = (f"; this is the previous model of a model upgrade (embedder.previous_model_path), which needs a "
               f"calibration measured with this pipeline ({build} for that model, then put its calibration file beside "
               "it), or remove embedder.previous_model_path (customers not migrated yet then re-enrol)")
    if recorded is None:
        return PipelineMismatch(f"{path}: records no pipeline (detector, alignment), so its threshold cannot be "
                                f"trusted for this edge's {describe_pipeline(current)}{fix}")
    return PipelineMismatch(
        f"{path}: measured with {describe_pipeline(recorded)}, but this edge runs {describe_pipeline(current)} ("
        + "; ".join(pipeline_differences(recorded, current))
        + f"): a threshold measured for another pipeline does not hold matcher.target_fpir here{fix}")


def calibration_path(model_path: str | Path) -> Path:
    """Where the calibration of a ``.tflite`` file lives: ``<stem>.calibration.json`` beside it."""
    p = Path(model_path)
    return p.with_name(p.stem + ".calibration.json")


@dataclass(frozen=True)
class ImpostorTail:
    """The upper tail of an impostor (different-person) cosine score distribution.

    Attributes:
        scores: ``(K,) float64`` increasing scores.
        exceed: ``(K,) float64`` decreasing ``P(impostor score >= scores[i])``.
        pairs: number of impostor pairs measured.
    """

    scores: np.ndarray
    exceed: np.ndarray
    pairs: int

    @classmethod
    def from_scores(cls, impostor: np.ndarray, points: int = 64, weights: np.ndarray | None = None) -> "ImpostorTail":
        """Summarise impostor scores at exceedance probabilities log-spaced from 0.5 down to ``10 / n``.

        Args:
            impostor: ``(n,)`` float cosine scores of different-person pairs (n ≥ 100).
            weights: optional ``(n,)`` non-negative pair weights (the bootstrap of ``dangol_models.holdout``
                re-weights identities); None weighs every pair 1.
        Raises:
            ValueError: fewer than 100 scores, or no positive weight.
        """
        s = np.asarray(impostor, dtype=np.float64)
        order = np.argsort(-s, kind="stable")
        cum = None if weights is None else np.cumsum(np.asarray(weights, dtype=np.float64)[order])
        return cls.from_descending(s[order], cum, points)

    @classmethod
    def from_descending(cls, s: np.ndarray, cum_weights: np.ndarray | None = None, points: int = 64) -> "ImpostorTail":
        """:meth:`from_scores` of scores already sorted in decreasing order; ``cum_weights`` the running sum of their
        weights in that order (None: every pair weighs 1). The table's score at exceedance ``p`` is the first score
        whose running weight reaches ``p`` × the total (unweighted: ``s[ceil(p n) - 1]``)."""
        n = len(s)
        if n < 100:
            raise ValueError(f"need at least 100 impostor scores to calibrate, got {n}")
        total = float(n) if cum_weights is None else float(cum_weights[-1])
        if total <= 0:
            raise ValueError("impostor weights sum to zero")
        p = np.logspace(np.log10(0.5), np.log10(10.0 / total), points)
        if cum_weights is None:
            at = np.ceil(p * n).astype(int) - 1
        else:
            at = np.searchsorted(cum_weights, p * total, side="left")  # first running weight >= p × total
        scores = np.asarray(s, dtype=np.float64)[np.clip(at, 0, n - 1)]
        order = np.argsort(scores, kind="stable")
        return cls(scores[order], p[order], int(round(total)))

    def exceedance(self, score: float) -> float:
        """``P(impostor score >= score)``, interpolated in log probability (extrapolated past the table)."""
        lp = np.log10(self.exceed)
        if score <= self.scores[0]:
            return float(self.exceed[0])
        if score <= self.scores[-1]:
            return float(10 ** np.interp(score, self.scores, lp))
        slope = self._tail_slope()
        return float(10 ** (lp[-1] + slope * (score - self.scores[-1])))

    def _tail_slope(self) -> float:
        """d log10(p) / d score over the last decade of the table (negative)."""
        lp = np.log10(self.exceed)
        last = lp >= lp[-1] + 1.0
        i = int(np.nonzero(last)[0].max()) if last.any() else 0
        ds = self.scores[-1] - self.scores[i]
        return float((lp[-1] - lp[i]) / ds) if ds > 1e-9 else -50.0

    def threshold(self, target_fpir: float, templates: int) -> float:
        """The smallest cosine score that keeps FPIR ≤ ``target_fpir`` against ``templates`` comparisons.

        Args:
            target_fpir: in (0, 1). templates: gallery size N (≥ 1).
        """
        n = max(int(templates), 1)
        p = -np.expm1(np.log1p(-target_fpir) / n)  # 1 - (1 - f)^(1/N), accurate for small values
        lp, target = np.log10(self.exceed), np.log10(p)
        if target >= lp[0]:
            return float(self.scores[0])
        if target >= lp[-1]:
            return float(np.interp(-target, -lp, self.scores))
        slope = self._tail_slope()
        if slope >= 0:  # a flat table (too few impostor pairs to fall a decade): nothing to extrapolate, refuse all
            return 1.0
        return float(min(1.0, self.scores[-1] + (target - lp[-1]) / slope))

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"scores": [round(float(v), 6) for v in self.scores],
                "exceed": [float(f"{v:.6g}") for v in self.exceed], "pairs": self.pairs}

    @classmethod
    def from_dict(cls, d: dict) -> "ImpostorTail":
        """Inverse of :meth:`to_dict`. Raises ValueError on a malformed table."""
        scores = np.asarray(d["scores"], dtype=np.float64)
        exceed = np.asarray(d["exceed"], dtype=np.float64)
        if (scores.ndim != 1 or scores.shape != exceed.shape or len(scores) < 2 or np.any(np.diff(scores) < 0)
                or np.any(np.diff(exceed) > 0) or np.any(exceed <= 0) or np.any(exceed > 1)):
            raise ValueError("scores must increase and exceedances decrease within (0, 1]")
        return cls(scores, exceed, int(d["pairs"]))


def write_calibration(model_path: str | Path, sha256: str, tail: ImpostorTail, source: str,
                      pipeline: dict | None = None, measured: dict | None = None) -> Path:
    """Write ``<stem>.calibration.json`` beside the model (atomically). Returns its path.

    Args:
        pipeline: what the tail was measured with (:func:`pipeline_of`); :func:`load_calibration` compares it.
        measured: more about the measurement (detector score floor, images, …), recorded, not compared.
    """
    path = calibration_path(model_path)
    tmp = path.with_suffix(".tmp")
    data = {"model_sha256": sha256, "source": source, "impostor_tail": tail.to_dict()}
    if pipeline is not None:
        data["pipeline"] = pipeline
    if measured is not None:
        data["measured"] = measured
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


def load_calibration(model_path: str | Path, sha256: str, pipeline: dict | None = None,
                     upgrade: bool = False) -> ImpostorTail | None:
    """The impostor tail recorded for this model file, or None when there is no calibration file.

    Args:
        pipeline: the pipeline the caller runs (:func:`pipeline_of`); when given, the file must have been measured
            with the same detector and alignment (:func:`recorded_pipeline`).
        upgrade: the model is a model upgrade's previous model (the mismatch message says what to do then).
    Raises:
        PipelineMismatch: measured with another pipeline than ``pipeline``, or the file does not say which.
        CalibrationError: the file is unreadable, malformed, or made for another model (sha256).
    """
    path = calibration_path(model_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("model_sha256") != sha256:
            raise CalibrationError(f"{path}: made for model {str(data.get('model_sha256'))[:12]}…, "
                                   f"not {sha256[:12]}… (rebuild with `dangol-models build`)")
        tail = ImpostorTail.from_dict(data["impostor_tail"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, CalibrationError):
            raise
        raise CalibrationError(f"{path}: not a valid calibration file: {exc}") from exc
    if pipeline is not None:
        recorded = recorded_pipeline(data, pipeline)
        if recorded is None or pipeline_differences(recorded, pipeline):
            raise mismatch(path, recorded, pipeline, upgrade)
    return tail


class OpenSetRule:
    """The acceptance threshold for the current gallery size.

    Args:
        tail: the model's impostor tail, or None (then ``fixed`` is required).
        target_fpir: strangers accepted per probe photo.
        fixed: a configured threshold (cosine) that overrides calibration.

    Raises:
        ValueError: neither ``tail`` nor ``fixed`` is given.
    """

    def __init__(self, tail: ImpostorTail | None, target_fpir: float, fixed: float | None = None):
        if tail is None and fixed is None:
            raise ValueError("an open-set rule needs a calibration (impostor tail) or a fixed threshold")
        self.tail, self.target_fpir, self.fixed = tail, target_fpir, fixed
        self._cache: tuple[int, float] | None = None

    @property
    def calibrated(self) -> bool:
        """True when the threshold follows the gallery size."""
        return self.fixed is None and self.tail is not None

    def threshold(self, templates: int) -> float:
        """Cosine threshold for a gallery of ``templates`` searchable templates."""
        if self.fixed is not None:
            return self.fixed
        assert self.tail is not None  # the constructor requires one of the two
        if self._cache is None or self._cache[0] != templates:
            self._cache = (templates, self.tail.threshold(self.target_fpir, templates))
        return self._cache[1]
