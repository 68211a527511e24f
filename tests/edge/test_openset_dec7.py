"""Open-set DET figures and ``dangol-models evaluate``'s detector (review of 7 Dec).

* ``fnir_at_fpir`` took only thresholds equal to a stranger's score, so when the next stranger down would exceed the
  target it stopped at the score above: any threshold just above that next score has the same FPIR and accepts more
  enrolled people, so FNIR was overstated.
* ``det_table`` did not cap photos per person: George W. Bush was 530 of the 1,922 strangers of the 100-person gallery.
* ``evaluate --detector mediapipe`` ran BlazeFace short-range while the build calibrates (and the edge runs)
  full-range, so the calibration was refused and the FAR = 1e-3 point silently used instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dangol_models.openset import Scores, det_table, fnir_at_fpir


def _scores(strangers, enrolled, stranger_second=None) -> Scores:
    """Strangers (truth -1) and enrolled probes each best-matching their own template (second best 0)."""
    s, e = np.asarray(strangers, np.float32), np.asarray(enrolled, np.float32)
    second = np.zeros(len(s) + len(e), np.float32)
    if stranger_second is not None:
        second[: len(s)] = stranger_second
    truth = np.concatenate([np.full(len(s), -1), np.arange(len(e))])
    top = np.concatenate([np.zeros(len(s), int), np.arange(len(e))])
    return Scores(np.concatenate([s, e]), second, top, truth)


def _fpir(sc: Scores, thr: float, margin: float) -> float:
    return float(sc.accepted(thr, margin)[sc.truth < 0].mean())


def test_the_threshold_is_the_lowest_that_meets_the_fpir_target():
    sc = _scores([0.9, 0.5], [0.6, 0.7])
    fnir, thr = fnir_at_fpir(sc, (0.5,), 0.0)[0.5]
    assert 0.5 < thr <= 0.6 and thr == float(np.nextafter(np.float32(0.5), np.float32(2)))
    assert _fpir(sc, thr, 0.0) == 0.5
    assert fnir == 0.0  # both enrolled people score above it (was 1.0 at the threshold 0.9)


def test_strangers_tied_at_the_threshold_score_are_not_accepted_past_the_target():
    sc = _scores([0.9, 0.5, 0.5, 0.3], [0.55, 0.5, 0.95])
    fnir, thr = fnir_at_fpir(sc, (0.5,), 0.0)[0.5]
    assert _fpir(sc, thr, 0.0) == 0.25  # accepting the tied pair would make 0.75
    assert 0.5 < thr < 0.55
    assert fnir == pytest.approx(1 / 3)  # only the probe at 0.5 (tied with strangers) is missed (was 2/3 at 0.9)


def test_strangers_that_fail_the_margin_do_not_count_against_the_target():
    # the 0.95 stranger is 0.02 ahead of its second: never accepted at margin 0.05, so 0.9 may be and 0.5 not
    sc = _scores([0.95, 0.9, 0.5], [0.6], stranger_second=[0.93, 0.0, 0.0])
    fnir, thr = fnir_at_fpir(sc, (1 / 3,), 0.05)[1 / 3]
    assert _fpir(sc, thr, 0.05) == pytest.approx(1 / 3) and 0.5 < thr < 0.6 and fnir == 0.0
    # too few strangers for the target, and more strangers allowed than pass the margin
    assert all(np.isnan(v) for v in fnir_at_fpir(sc, (0.1,), 0.05)[0.1])
    fnir, thr = fnir_at_fpir(_scores([0.9, 0.5], [0.3], stranger_second=[0.88, 0.48]), (0.5,), 0.05)[0.5]
    assert fnir == 0.0 and thr <= 0.3


def test_det_table_caps_each_persons_photos():
    from dangol_models.holdout import CAP

    rng = np.random.default_rng(1)
    people, rows = {}, 0
    for i, n in enumerate([40, 3, 3, 3, 2, 1, 1, 1, 25]):
        people[f"p{i}"] = list(range(rows, rows + n))
        rows += n
    emb = rng.normal(size=(rows, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    (row,) = det_table(emb, people, (2,), 0.05, fpirs=(0.1,))
    capped = {n: min(len(r), CAP) for n, r in people.items()}
    assert row["mated"] + row["non_mated"] + row["gallery"] == sum(capped.values())
    assert row["non_mated"] <= sum(capped.values()) - 2 - 2  # ≥ 2 enrolled people, each ≥ 1 mated probe


@pytest.fixture
def small_lfw(data_dir, tmp_path) -> Path:
    """An LFW-format folder of 24 people with ≥ 3 photos (≤ 4 each) and 24 with one, and a 20-pair ``pairs.txt``."""
    from dangol_models.lfw import LFWDataset

    ids = LFWDataset(data_dir / "faces").identities()
    multi = [n for n, f in ids.items() if len(f) >= 3][:24]
    single = [n for n, f in ids.items() if len(f) == 1][:24]
    root = tmp_path / "lfw"
    for n in multi + single:
        (root / n).mkdir(parents=True)
        for p in ids[n][:4]:
            shutil.copy(p, root / n / p.name)
    same = [f"{n}\t1\t2" for n in multi[:10]]
    diff = [f"{a}\t1\t{b}\t1" for a, b in zip(multi[10:20], single[:10])]
    (root / "pairs.txt").write_text("\n".join(["1\t10", *same, *diff]) + "\n")
    return root


def _evaluate(models_dir: Path, lfw_root: Path, folder: Path, calibrated_with, backend: str):
    """``evaluate_model`` on a copy of the int8 model whose calibration records ``calibrated_with``'s pipeline,
    behind the detector ``dangol-models evaluate --detector backend`` builds."""
    from dangol_edge.calibration import load_calibration, pipeline_of, write_calibration
    from dangol_edge.detect import FaceDetector
    from dangol_edge.embed import Embedder
    from dangol_models.evaluate import evaluate_model
    from dangol_models.lfw import LFWDataset
    from dangol_models.report import evaluate_detector

    model = folder / "sface-int8.tflite"
    shutil.copy(models_dir / "sface-int8.tflite", model)
    emb = Embedder(model)
    tail = load_calibration(models_dir / "sface-int8.tflite", emb.sha256)
    write_calibration(model, emb.sha256, tail, "test", pipeline=pipeline_of(calibrated_with, model, emb.spec))
    with FaceDetector.beside(model, evaluate_detector(backend)) as det:
        return evaluate_model(model, LFWDataset(lfw_root), det, progress=False)


def test_evaluate_with_mediapipe_uses_a_mediapipe_calibration(models_dir, small_lfw, tmp_path):
    from dangol_edge.config import DetectorConfig
    from dangol_models.report import evaluate_detector

    assert evaluate_detector("mediapipe").model == DetectorConfig().model == "full"  # the edge's default
    # what `dangol-models build --detector mediapipe` records, and what a MediaPipe edge (default model) runs
    report = _evaluate(models_dir, small_lfw, tmp_path, DetectorConfig(backend="mediapipe"), "mediapipe")
    assert report.extra["threshold_rule"].startswith("calibrated"), report.extra["threshold_rule"]
    assert "calibration_note" not in report.extra


def test_evaluate_says_when_the_calibration_is_for_another_detector(models_dir, small_lfw, tmp_path):
    from dangol_edge.config import DetectorConfig

    report = _evaluate(models_dir, small_lfw, tmp_path, DetectorConfig(), "mediapipe")  # a YuNet build
    assert report.extra["threshold_rule"].startswith("FAR=1e-3 point")
    note = report.extra["calibration_note"]
    assert note.startswith("calibration not used") and "yunet" in note and "mediapipe full" in note
    assert report.open_set.threshold == pytest.approx(report.threshold_far_1e3)
