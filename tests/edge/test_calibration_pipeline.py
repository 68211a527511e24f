"""A calibration file says which pipeline it was measured with, and the edge refuses one measured with another.

The open-set threshold comes from the impostor tail of the whole pipeline (detector → alignment → embedder): the same
model file behind MediaPipe's keypoints scores strangers differently from behind YuNet's (reviewed: held out, 1.02 %
of strangers accepted per photo at the YuNet-calibrated threshold against the 1 % target). A calibration keyed to
the model's sha256 alone was silently reused with ``detector.backend = "mediapipe"``. Now the file records the
detector (backend, model file sha256) and the alignment (crop, template, fit, flip TTA); a different pipeline is
treated like no calibration: refused unless a fixed ``matcher.threshold`` is set, the message naming both pipelines.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dangol_edge.calibration import (
    CalibrationError,
    ImpostorTail,
    PipelineMismatch,
    calibration_path,
    load_calibration,
    pipeline_of,
    write_calibration,
)
from dangol_edge.config import DetectorConfig, EdgeConfig
from dangol_edge.detect import YUNET_FILE
from dangol_edge.embed import Embedder
from dangol_edge.recognition import rule_for


@pytest.fixture
def folder(models_dir, tmp_path) -> Path:
    """A copy of the built SFace int8 model and its YuNet file, without a calibration file."""
    out = tmp_path / "models"
    out.mkdir()
    for name in ("sface-int8.tflite", YUNET_FILE):
        shutil.copy(models_dir / name, out / name)
    return out


def _calibrate(folder: Path, models_dir: Path, detector: DetectorConfig) -> Path:
    """Write the built model's impostor tail beside the copy, as measured with ``detector``."""
    model = folder / "sface-int8.tflite"
    emb = Embedder(model)
    tail = load_calibration(models_dir / "sface-int8.tflite", emb.sha256)
    return write_calibration(model, emb.sha256, tail, "test", pipeline=pipeline_of(detector, model, emb.spec))


def test_the_pipeline_record_names_detector_and_alignment(folder):
    model = folder / "sface-int8.tflite"
    spec = Embedder(model).spec
    yunet = pipeline_of(DetectorConfig(), model, spec)
    assert yunet["detector"] == {"backend": "yunet", "sha256": yunet["detector"]["sha256"]}
    assert len(yunet["detector"]["sha256"]) == 64
    assert yunet["alignment"]["embedder"] == "sface" and yunet["alignment"]["crop_px"] == 112
    assert yunet["alignment"]["flip"] is True and len(yunet["alignment"]["template5"]) == 5
    mp = pipeline_of(DetectorConfig(backend="mediapipe"), model, spec)
    assert mp["detector"]["backend"] == "mediapipe" and mp["detector"]["model"] == "full"
    assert mp["alignment"] == yunet["alignment"]
    short = pipeline_of(DetectorConfig(backend="mediapipe", model="short"), model, spec)
    assert short["detector"]["sha256"] != mp["detector"]["sha256"]


def test_a_calibration_for_another_detector_is_refused_naming_both(folder, models_dir):
    model = folder / "sface-int8.tflite"
    _calibrate(folder, models_dir, DetectorConfig())
    assert rule_for(EdgeConfig(embedder={"model_path": model}), Embedder(model)).calibrated
    config = EdgeConfig(embedder={"model_path": model}, detector={"backend": "mediapipe"})
    with pytest.raises(PipelineMismatch) as err:
        rule_for(config, Embedder(model))
    msg = str(err.value)
    assert isinstance(err.value, CalibrationError) and str(calibration_path(model)) in msg
    assert "yunet" in msg and "mediapipe" in msg  # both pipelines
    assert "dangol-models build --detector mediapipe" in msg and "matcher.threshold" in msg
    # as without a calibration: a fixed threshold runs, the measured tail is not used
    fixed = rule_for(EdgeConfig(embedder={"model_path": model}, detector={"backend": "mediapipe"},
                                matcher={"threshold": 0.5}), Embedder(model))
    assert not fixed.calibrated and fixed.tail is None and fixed.threshold(1000) == 0.5


def test_a_calibration_for_mediapipe_runs_mediapipe_and_refuses_yunet(folder, models_dir):
    model = folder / "sface-int8.tflite"
    _calibrate(folder, models_dir, DetectorConfig(backend="mediapipe"))
    assert rule_for(EdgeConfig(embedder={"model_path": model}, detector={"backend": "mediapipe"}),
                    Embedder(model)).calibrated
    with pytest.raises(PipelineMismatch, match="mediapipe"):
        rule_for(EdgeConfig(embedder={"model_path": model}), Embedder(model))
    with pytest.raises(PipelineMismatch, match="short"):  # BlazeFace short-range is another detector model
        rule_for(EdgeConfig(embedder={"model_path": model}, detector={"backend": "mediapipe", "model": "short"}),
                 Embedder(model))


def test_another_yunet_file_is_another_pipeline(folder, models_dir, tmp_path):
    model = folder / "sface-int8.tflite"
    _calibrate(folder, models_dir, DetectorConfig())
    other = tmp_path / "yunet-other.onnx"
    other.write_bytes((folder / YUNET_FILE).read_bytes() + b"\0")
    with pytest.raises(PipelineMismatch, match="sha256"):
        rule_for(EdgeConfig(embedder={"model_path": model}, detector={"yunet_path": other}), Embedder(model))


def test_another_alignment_is_another_pipeline(folder, models_dir):
    model = folder / "sface-int8.tflite"
    path = _calibrate(folder, models_dir, DetectorConfig())
    data = json.loads(path.read_text())
    data["pipeline"]["alignment"]["flip"] = False  # measured without the mirror image
    path.write_text(json.dumps(data))
    with pytest.raises(PipelineMismatch, match="flip"):
        rule_for(EdgeConfig(embedder={"model_path": model}), Embedder(model))


def test_a_file_written_before_the_record_counts_as_yunet_2023mar(folder, models_dir):
    """Build recipes 3-4 measured every calibration with YuNet 2023mar and the alignment of today's code; their files
    (no ``pipeline`` key, source "... (YuNet, N pairs)") keep working with that pipeline and no other."""
    model = folder / "sface-int8.tflite"
    shutil.copy(calibration_path(models_dir / "sface-int8.tflite"), calibration_path(model))
    data = json.loads(calibration_path(model).read_text())
    if "pipeline" in data:
        del data["pipeline"]
        data["source"] = "all different-person pairs of faces (YuNet, 2,857,963 pairs)"
        calibration_path(model).write_text(json.dumps(data))
    assert rule_for(EdgeConfig(embedder={"model_path": model}), Embedder(model)).calibrated
    with pytest.raises(PipelineMismatch, match="mediapipe"):
        rule_for(EdgeConfig(embedder={"model_path": model}, detector={"backend": "mediapipe"}), Embedder(model))
    data["source"] = "all different-person pairs of faces (12 pairs)"  # says nothing of its detector
    calibration_path(model).write_text(json.dumps(data))
    with pytest.raises(PipelineMismatch, match="records no pipeline"):
        rule_for(EdgeConfig(embedder={"model_path": model}), Embedder(model))


def test_check_config_refuses_the_mismatch_before_the_daemon_starts(folder, models_dir, tmp_path, capsys):
    from dangol_edge.cli import main

    model = folder / "sface-int8.tflite"
    _calibrate(folder, models_dir, DetectorConfig())
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[gpio]\nenabled = false\n[embedder]\nmodel_path = "{model}"\n[detector]\nbackend = "mediapipe"\n')
    assert main(["--home", str(tmp_path / "home"), "check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "edge.toml" in err and str(calibration_path(model)) in err and "mediapipe" in err and "yunet" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_the_build_calibrates_for_the_detector_it_is_given(models_dir, data_dir, tmp_path):
    """``dangol-models build --detector mediapipe``'s calibration step, on 40 LFW people: the file it writes records
    MediaPipe, so the edge runs it behind MediaPipe and refuses it behind YuNet."""
    from dangol_models.build import write_open_set_calibration
    from dangol_models.lfw import LFWDataset

    faces = tmp_path / "faces"
    faces.mkdir()
    src = LFWDataset(data_dir / "faces")
    for name in list(src.identities())[:40]:
        (faces / name).symlink_to(src.images / name)
    model = tmp_path / "models" / "sface-int8.tflite"
    model.parent.mkdir()
    shutil.copy(models_dir / "sface-int8.tflite", model)
    shutil.copy(models_dir / YUNET_FILE, model.parent / YUNET_FILE)
    path, tail = write_open_set_calibration(model, LFWDataset(faces), "mediapipe")
    assert isinstance(tail, ImpostorTail) and path == calibration_path(model)
    data = json.loads(path.read_text())
    assert data["pipeline"]["detector"]["backend"] == "mediapipe" and "MediaPipe" in data["source"]
    assert rule_for(EdgeConfig(embedder={"model_path": model}, detector={"backend": "mediapipe"}),
                    Embedder(model)).calibrated
    with pytest.raises(PipelineMismatch):
        rule_for(EdgeConfig(embedder={"model_path": model}), Embedder(model))
