"""``embedder.previous_model_path`` (a model upgrade's previous model) once the upgrade is over, and its calibration.

1. An operator who deleted the old model after the upgrade ended, leaving the config line, got a dark door: the
   daemon hashed the old file before looking whether the gallery still held templates of it ("model file not found",
   exit 2, a systemd restart loop), though ``check-config`` said ok. Now the gallery's template models are looked at
   first: with none of another model the file is never opened; with some left and the file gone, the daemon, the
   enrolment command and ``check-config`` all name the file and what to do.
2. The upgrade took the previous model's calibration without checking which pipeline it was measured on: one measured
   behind MediaPipe chose whom a YuNet door migrated (and the "already a regular" checks), while the door refuses such
   a calibration for its own model. Now it is checked against the pipeline the door runs (the configured detector in
   front of the previous model's alignment) and a mismatch counts as no calibration.

Real models (int8 SFace now, int8 FaceNet before, YuNet), real photos, real SQLite galleries.
"""

from __future__ import annotations

import json
import shutil

import pytest

from dangol_edge.calibration import (CalibrationError, PipelineMismatch, calibration_path, load_calibration,
                                     pipeline_of, write_calibration)
from dangol_edge.cli_enrol import upgrade_previous
from dangol_edge.config import ConfigError, DetectorConfig, EdgeConfig, check_daemon_settings
from dangol_edge.detect import YUNET_FILE, FaceDetector
from dangol_edge.embed import Embedder, ModelError
from dangol_edge.enrol import enroll, sample_from_photo
from dangol_edge.faces import FacePipeline
from dangol_edge.gallery import Gallery
from dangol_edge.recognition import Recognizer
from dangol_edge.upgrade import STARTED_KEY, previous_door_model


@pytest.fixture
def gone(tmp_path):
    """Where the previous model was: the file deleted after the upgrade (its folder is still there)."""
    (tmp_path / "old").mkdir()
    return tmp_path / "old" / "facenet-int8.tflite"


def config(tmp_path, model_path, previous) -> EdgeConfig:
    return EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path, "previous_model_path": previous})


def enrolled_with(cfg: EdgeConfig, facenet_path, clips) -> str:
    """Barack Obama enrolled with FaceNet in ``cfg``'s gallery (before an upgrade); his id."""
    p = FacePipeline(FaceDetector.beside(facenet_path), Embedder(facenet_path))
    try:
        with Gallery(cfg.gallery_path, p.embedder.sha256) as g:
            return enroll(g, "Barack Obama", [sample_from_photo(clips / "obama.jpg", p)]).id
    finally:
        p.close()


# --- 1. the previous model's file deleted -------------------------------------------------------------------------

def test_a_deleted_previous_model_with_no_old_templates_starts_the_door(tmp_path, model_path, gone, clips):
    cfg = config(tmp_path, model_path, gone)
    check_daemon_settings(cfg)  # check-config: ok
    rec = Recognizer.from_config(cfg)
    try:
        assert rec.upgrade is None and rec.gallery.stale_templates == 0
        assert rec.gallery.meta(STARTED_KEY) is None
    finally:
        rec.close()
        rec.gallery.close()
    with Gallery(cfg.gallery_path, Embedder(model_path).sha256) as g:  # the enrolment command's path
        assert upgrade_previous(cfg, g) is None and g.previous_model is None
    assert not gone.exists()


def test_the_enroll_command_runs_with_a_deleted_previous_model(edge_env, gone, clips, monkeypatch, capsys):
    from dangol_edge.cli import main

    monkeypatch.setenv("DANGOL_EMBEDDER__PREVIOUS_MODEL_PATH", str(gone))
    assert main(["enroll", "--name", "Barack Obama", "--image", str(clips / "obama.jpg")]) == 0, capsys.readouterr()
    assert main(["identify", "--source", str(clips / "obama2.jpg")]) == 0, capsys.readouterr()


def test_a_deleted_previous_model_with_old_templates_left_is_named(tmp_path, model_path, facenet_path, gone, clips):
    """Templates still to migrate and the file gone: the daemon cannot run the upgrade; every path says which file
    and what to do — and check-config refuses too (``run`` then exits 2 at its check: no restart loop)."""
    cfg = config(tmp_path, model_path, gone)
    enrolled_with(cfg, facenet_path, clips)
    with pytest.raises(ConfigError) as checked:
        check_daemon_settings(cfg, "edge.toml")
    with pytest.raises(ModelError) as started:
        Recognizer.from_config(cfg)
    with Gallery(cfg.gallery_path, Embedder(model_path).sha256) as g, pytest.raises(ModelError) as enrolling:
        upgrade_previous(cfg, g)
    for msg in (str(checked.value), str(started.value), str(enrolling.value)):
        assert str(gone) in msg and "embedder.previous_model_path" in msg, msg
        assert "1 template" in msg and "re-enrol" in msg, msg
    assert str(checked.value).startswith("edge.toml: ")


def test_the_previous_model_present_still_runs_the_upgrade(tmp_path, model_path, facenet_path, clips):
    cfg = config(tmp_path, model_path, facenet_path)
    obama = enrolled_with(cfg, facenet_path, clips)
    check_daemon_settings(cfg)
    rec = Recognizer.from_config(cfg)
    try:
        assert rec.upgrade is not None and rec.upgrade.loaded == {obama}
        assert rec.gallery.previous_model is not None
    finally:
        rec.close()
        rec.gallery.close()


# --- 2. the previous model's calibration measured on another pipeline ---------------------------------------------

@pytest.fixture
def mediapipe_measured(models_dir, tmp_path):
    """A copy of the int8 FaceNet model (and YuNet) whose calibration file says it was measured behind MediaPipe
    full-range: the built tail, recorded with that pipeline (as ``dangol-models build --detector mediapipe``)."""
    folder = tmp_path / "oldmodels"
    folder.mkdir()
    for name in ("facenet-int8.tflite", YUNET_FILE):
        shutil.copy(models_dir / name, folder / name)
    model = folder / "facenet-int8.tflite"
    emb = Embedder(model)
    tail = load_calibration(models_dir / "facenet-int8.tflite", emb.sha256)
    write_calibration(model, emb.sha256, tail, "test (MediaPipe)",
                      pipeline=pipeline_of(DetectorConfig(backend="mediapipe"), model, emb.spec))
    return model


def test_previous_door_model_refuses_a_calibration_of_another_pipeline(tmp_path, model_path, mediapipe_measured,
                                                                       facenet_path):
    cfg = config(tmp_path, model_path, mediapipe_measured)  # a YuNet door
    old = Embedder(mediapipe_measured)
    door = pipeline_of(cfg.detector, cfg.model_path, old.spec)
    with pytest.raises(PipelineMismatch) as err:
        previous_door_model(old, cfg.matcher.target_fpir, door)
    msg = str(err.value)
    assert str(calibration_path(mediapipe_measured)) in msg and "mediapipe" in msg and "yunet" in msg
    assert "embedder.previous_model_path" in msg
    assert "matcher.threshold" not in msg  # the current model's scale: no fix for the previous model
    # the same file measured behind the door's pipeline is taken (the built one: YuNet)
    real = Embedder(facenet_path)
    assert previous_door_model(real, cfg.matcher.target_fpir,
                               pipeline_of(cfg.detector, cfg.model_path, real.spec)).sha256 == real.sha256


def test_an_upgrade_with_another_pipelines_calibration_is_refused_like_none(tmp_path, model_path, facenet_path,
                                                                            mediapipe_measured, clips):
    """As without a calibration file: the daemon does not start the upgrade (nor records its start), check-config says
    why while old templates remain, and the enrolment command does not use it for its "already a regular" check."""
    cfg = config(tmp_path, model_path, mediapipe_measured)
    enrolled_with(cfg, facenet_path, clips)  # same model file (sha256) as the copy
    with pytest.raises(PipelineMismatch):
        Recognizer.from_config(cfg)
    with pytest.raises(ConfigError, match="mediapipe") as checked:
        check_daemon_settings(cfg, "edge.toml")
    assert "embedder.previous_model_path" in str(checked.value)
    with Gallery(cfg.gallery_path, Embedder(model_path).sha256) as g:
        assert g.meta(STARTED_KEY) is None
        assert upgrade_previous(cfg, g) is None and g.previous_model is None
    # MediaPipe's own door takes it (its detector recorded the same): only the pipeline decided
    mp = cfg.model_copy(update={"detector": DetectorConfig(backend="mediapipe")})
    old = Embedder(mediapipe_measured)
    assert previous_door_model(old, 0.01, pipeline_of(mp.detector, mp.model_path, old.spec)).sha256 == old.sha256


def test_a_finished_upgrade_does_not_check_the_previous_calibration(tmp_path, model_path, mediapipe_measured):
    """No old templates left: the previous model's calibration is not looked at (as its file is not)."""
    cfg = config(tmp_path, model_path, mediapipe_measured)
    check_daemon_settings(cfg)
    rec = Recognizer.from_config(cfg)
    try:
        assert rec.upgrade is None
    finally:
        rec.close()
        rec.gallery.close()


def test_a_calibration_without_a_pipeline_record_is_refused_for_the_previous_model(tmp_path, model_path,
                                                                                   mediapipe_measured):
    path = calibration_path(mediapipe_measured)
    data = json.loads(path.read_text())
    del data["pipeline"]
    data["source"] = "measured somewhere"
    path.write_text(json.dumps(data))
    old = Embedder(mediapipe_measured)
    with pytest.raises(CalibrationError, match="records no pipeline"):
        previous_door_model(old, 0.01, pipeline_of(DetectorConfig(), model_path, old.spec))
