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
on all different-person pairs of the shared LFW images (about 3 million) and stored beside the model as
``<model>.calibration.json``; beyond its last measured quantile the tail is extrapolated as
log-linear in the score (exponential tail), fitted on its last decade.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

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
    def from_scores(cls, impostor: np.ndarray, points: int = 64) -> "ImpostorTail":
        """Summarise impostor scores at exceedance probabilities log-spaced from 0.5 down to ``10 / n``.

        Args:
            impostor: ``(n,)`` float cosine scores of different-person pairs (n ≥ 100).
        Raises:
            ValueError: fewer than 100 scores.
        """
        s = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
        n = len(s)
        if n < 100:
            raise ValueError(f"need at least 100 impostor scores to calibrate, got {n}")
        p = np.logspace(np.log10(0.5), np.log10(10.0 / n), points)
        scores = s[np.clip(np.ceil(p * n).astype(int) - 1, 0, n - 1)]
        order = np.argsort(scores, kind="stable")
        return cls(scores[order], p[order], n)

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
        return float(min(1.0, self.scores[-1] + (target - lp[-1]) / self._tail_slope()))

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


def write_calibration(model_path: str | Path, sha256: str, tail: ImpostorTail, source: str) -> Path:
    """Write ``<stem>.calibration.json`` beside the model (atomically). Returns its path."""
    path = calibration_path(model_path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"model_sha256": sha256, "source": source, "impostor_tail": tail.to_dict()}, indent=1))
    tmp.replace(path)
    return path


def load_calibration(model_path: str | Path, sha256: str) -> ImpostorTail | None:
    """The impostor tail recorded for this model file, or None when there is no calibration file.

    Raises:
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
        return ImpostorTail.from_dict(data["impostor_tail"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, CalibrationError):
            raise
        raise CalibrationError(f"{path}: not a valid calibration file: {exc}") from exc


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
