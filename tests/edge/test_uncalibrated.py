"""A model without its calibration file: recognition refuses to start unless a threshold is configured.

With no calibration, the old fallback (SFace 0.363, OpenCV's 1:1 threshold) accepted strangers as *somebody*
in a large share of photos at 100-1,000 templates; a device greeting strangers by a regular's name is worse
than one that does not start and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from dangol_edge.calibration import CalibrationError, calibration_path
from dangol_edge.config import EdgeConfig
from dangol_edge.embed import Embedder
from dangol_edge.recognition import rule_for
from dangol_edge.upgrade import ModelUpgrade


@pytest.fixture
def bare_model(models_dir, tmp_path):
    """A copy of the int8 SFace model with no calibration file beside it (the face detector is there)."""
    model = tmp_path / "models" / "sface-int8.tflite"
    model.parent.mkdir()
    shutil.copy(models_dir / "sface-int8.tflite", model)
    shutil.copy(models_dir / "face_detection_yunet_2023mar.onnx", model.parent)
    assert not calibration_path(model).exists()
    return model


def test_no_calibration_and_no_threshold_refuses_to_start(bare_model):
    config = EdgeConfig(embedder={"model_path": bare_model})
    with pytest.raises(CalibrationError) as err:
        rule_for(config, Embedder(bare_model))
    assert str(calibration_path(bare_model)) in str(err.value)
    assert "matcher.threshold" in str(err.value) and "dangol-models build" in str(err.value)


def test_a_configured_threshold_runs_without_calibration(bare_model):
    config = EdgeConfig(embedder={"model_path": bare_model}, matcher={"threshold": 0.5})
    rule = rule_for(config, Embedder(bare_model))
    assert not rule.calibrated and rule.threshold(1) == rule.threshold(5000) == 0.5


def test_calibrated_model_still_follows_the_gallery(models_dir):
    model = models_dir / "sface-int8.tflite"
    rule = rule_for(EdgeConfig(embedder={"model_path": model}), Embedder(model))
    assert rule.calibrated and rule.threshold(1000) > rule.threshold(10)


def test_upgrade_from_an_uncalibrated_model_is_refused(bare_model, tmp_path):
    """No fixed threshold for the old model: ``matcher.threshold`` is on the new model's scale, and judging the old
    model on it would migrate strangers' faces into regulars' templates."""
    from dangol_edge.gallery import Gallery

    old = Embedder(bare_model)
    gallery = Gallery(tmp_path / "gallery.sqlite", "f" * 64).open()
    try:
        with pytest.raises(CalibrationError, match="previous_model_path"):
            ModelUpgrade(gallery, old, 0.01, 0.05, 30.0, 5).start()
    finally:
        gallery.close()


def test_identify_exits_2_naming_the_missing_calibration(edge_env, bare_model, clips, monkeypatch):
    monkeypatch.setenv("DANGOL_EMBEDDER__MODEL_PATH", str(bare_model))
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "dangol_edge.cli", "identify", "--source",
                        str(clips / "lin-manuel-miranda.png")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "calibration" in r.stderr and "matcher.threshold" in r.stderr and "Traceback" not in r.stderr


def test_check_config_refuses_a_model_without_calibration(bare_model, tmp_path, capsys):
    """The config check fails at once (instead of an install that checks "ok" and never starts)."""
    from dangol_edge.cli import main

    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[embedder]\nmodel_path = "{bare_model}"\n')
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "edge.toml" in err and str(calibration_path(bare_model)) in err and "matcher.threshold" in err
    cfg.write_text(f'[embedder]\nmodel_path = "{bare_model}"\n[matcher]\nthreshold = 0.5\n')
    assert main(["check-config", str(cfg)]) == 0, capsys.readouterr().err


def test_a_finished_upgrades_uncalibrated_old_model_does_not_stop_the_daemon(bare_model, models_dir, tmp_path):
    """``previous_model_path`` left in the config after the upgrade (no old-model templates left to migrate)."""
    from dangol_edge.config import check_daemon_settings

    config = EdgeConfig(home=tmp_path / "home", embedder={"model_path": models_dir / "sface-int8.tflite",
                                                          "previous_model_path": bare_model})
    check_daemon_settings(config)  # no error: only a running upgrade needs the old model's calibration
