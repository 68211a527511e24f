"""Small helpers shared by the model build, calibration and evaluation."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dangol_edge.config import DetectorConfig

#: BlazeFace model and detector score threshold of the open-set calibration (``dangol-models build``) and of
#: ``dangol-models evaluate``: ``full`` is the edge's ``detector.model`` default
#: (:class:`dangol_edge.config.DetectorConfig`), so a MediaPipe calibration is measured, and evaluated, behind the
#: detector the edge runs (the pipeline record, :func:`dangol_edge.calibration.pipeline_of`, includes it). 0.5: the
#: score threshold every shipped calibration was measured with (``measured.detector_min_score`` of the calibration
#: file; the edge's default is 0.6).
DETECTOR_MODEL, DETECTOR_MIN_SCORE = "full", 0.5


class BuildError(RuntimeError):
    """A model cannot be built; the message names the missing or bad input."""


def detector_config(backend: str) -> DetectorConfig:
    """The detector settings of build and evaluate for ``backend`` (``yunet`` or ``mediapipe``):
    :data:`DETECTOR_MODEL`, :data:`DETECTOR_MIN_SCORE`, the edge's other defaults.

    Raises:
        pydantic.ValidationError: unknown backend.
    """
    return DetectorConfig(backend=backend, model=DETECTOR_MODEL, min_score=DETECTOR_MIN_SCORE)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def centre_face(dets, shape):
    """The detection whose box centre is nearest the image centre (LFW images are centred on the subject)."""
    h, w = shape[:2]
    if not dets:
        return None
    return min(dets, key=lambda d: ((d.box[0] + d.box[2]) / 2 - w / 2) ** 2 + ((d.box[1] + d.box[3]) / 2 - h / 2) ** 2)


def convert_float_and_int8(make_converter, rep) -> tuple[bytes, bytes]:
    """Float32 and full-integer int8 TFLite from a converter factory.

    Args:
        make_converter: returns a fresh ``tf.lite.TFLiteConverter`` for the model.
        rep: ``(N, H, W, 3) float32`` representative inputs (what the model's input tensor receives) for
            the int8 calibration (post-training quantization: int8 weights and activations, int8 input and
            output).
    Returns:
        (float32 model bytes, int8 model bytes).
    """
    import tensorflow as tf  # type: ignore[import-not-found]

    float_model = make_converter().convert()
    c = make_converter()
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(len(rep)))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8
    return float_model, c.convert()
