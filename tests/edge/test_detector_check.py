"""A box whose YuNet face detector file is missing is refused before it runs, not on every frame after.

The detector opens lazily (:class:`dangol_edge.detect.FaceDetector`): without this check ``check-config`` said ok,
the daemon sent READY=1, then every frame failed, the watchdog restarted it ten times and the unit stayed failed.
Now ``check-config`` (install-edge's check) and the daemon's start (:func:`dangol_edge.config.check_daemon_settings`)
refuse with exit 2, naming the file and what to do; ``scripts/install-edge --model`` warns when the file is not
beside the model, as it does for the calibration file (and its check-config then fails the install).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dangol_edge.config import ConfigError, EdgeConfig, check_daemon_settings
from dangol_edge.detect import YUNET_FILE, FaceDetector
from tests.edge.test_install_key import VENV, _function
from tests.edge.test_systemd import INSTALL_EDGE, REPO, _tool


@pytest.fixture
def no_detector(models_dir, tmp_path) -> Path:
    """A model folder with the embedder and its calibration (links to the built ones) but no YuNet file."""
    folder = tmp_path / "home" / "models"
    folder.mkdir(parents=True)
    for name in ("sface-int8.tflite", "sface-int8.calibration.json"):
        (folder / name).symlink_to(models_dir / name)
    return folder


@pytest.fixture
def clean_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith("DANGOL_") and k != "DANGOL_GALLERY_KEY"]:
        monkeypatch.delenv(k)


def _check_config(tmp_path, capsys, toml: str = "") -> tuple[int, str]:
    from dangol_edge.cli import main

    cfg = tmp_path / "edge.toml"
    cfg.write_text("[gpio]\nenabled = false\n" + toml)
    code = main(["--home", str(tmp_path / "home"), "check-config", str(cfg)])
    return code, capsys.readouterr().err


def test_check_config_refuses_a_missing_detector_and_says_what_to_do(no_detector, models_dir, tmp_path, capsys,
                                                                       clean_env):
    code, err = _check_config(tmp_path, capsys)
    assert code == 2, err
    assert str(no_detector / YUNET_FILE) in err and "edge.toml" in err
    assert "dangol-models build" in err and "detector.yunet_path" in err and "Traceback" not in err
    (no_detector / YUNET_FILE).symlink_to(models_dir / YUNET_FILE)
    code, err = _check_config(tmp_path, capsys)
    assert code == 0, err


def test_a_configured_detector_path_must_be_there(no_detector, models_dir, tmp_path, capsys, clean_env):
    elsewhere = tmp_path / "detectors" / YUNET_FILE
    code, err = _check_config(tmp_path, capsys, f'[detector]\nyunet_path = "{elsewhere}"\n')
    assert code == 2 and str(elsewhere) in err and "detector.yunet_path" in err, err
    elsewhere.parent.mkdir()
    elsewhere.symlink_to(models_dir / YUNET_FILE)
    code, err = _check_config(tmp_path, capsys, f'[detector]\nyunet_path = "{elsewhere}"\n')
    assert code == 0, err


def test_mediapipe_needs_no_detector_file_but_its_own_calibration(no_detector, tmp_path, capsys, clean_env):
    """The built calibration was measured behind YuNet: behind MediaPipe it is refused, naming both pipelines (not the
    YuNet file, which MediaPipe does not need); with a fixed threshold MediaPipe runs without the YuNet file."""
    code, err = _check_config(tmp_path, capsys, '[detector]\nbackend = "mediapipe"\n')
    assert code == 2, err
    assert "sface-int8.calibration.json" in err and "yunet" in err and "mediapipe" in err, err
    assert "dangol-models build --detector mediapipe" in err and "matcher.threshold" in err
    assert "is missing" not in err and "Traceback" not in err
    code, err = _check_config(tmp_path, capsys, '[detector]\nbackend = "mediapipe"\n[matcher]\nthreshold = 0.5\n')
    assert code == 0, err


@pytest.mark.parametrize("damage", ["directory", "empty", "truncated", "unreadable"])
def test_a_detector_path_that_cannot_be_loaded_is_refused(no_detector, models_dir, damage, tmp_path):
    target = no_detector / YUNET_FILE
    if damage == "directory":
        target.mkdir()
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "truncated":  # an interrupted copy: the real file's first 50 kB
        target.write_bytes((models_dir / YUNET_FILE).read_bytes()[:50_000])
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        target.write_bytes(b"\x08\x07")
        target.chmod(0)
    with pytest.raises(ConfigError) as err:
        check_daemon_settings(EdgeConfig(home=tmp_path / "home", gpio={"enabled": False}), "edge.toml")
    assert str(target) in str(err.value)


def test_the_daemon_refuses_to_start_before_ready(no_detector, tmp_path, clean_env, clips):
    """``dangol-edge run`` stops with exit 2 (the unit does not restart it) and never opens its web server."""
    from dangol_edge.daemon import Appliance

    from tests.broker import free_port

    cfg = EdgeConfig(home=tmp_path / "home", gpio={"enabled": False}, display={"port": free_port()},
                     camera={"source": str(clips / "biden.jpg")})
    app = Appliance(cfg)
    try:
        with pytest.raises(ConfigError, match=YUNET_FILE):
            app.start()
        assert app.web is None and app.state is None
    finally:
        app.stop()


def test_the_detector_the_daemon_loads_is_the_one_checked(no_detector, tmp_path):
    cfg = EdgeConfig(home=tmp_path / "home")
    assert FaceDetector.beside(cfg.model_path, cfg.detector).yunet_path == no_detector / YUNET_FILE
    other = tmp_path / "x.onnx"
    cfg = EdgeConfig(home=tmp_path / "home", detector={"yunet_path": other})
    assert FaceDetector.beside(cfg.model_path, cfg.detector).yunet_path == other


# --- install-edge --------------------------------------------------------------------------------------------
def _install_model(tmp_path: Path, model: Path) -> subprocess.CompletedProcess:
    """install-edge's install_model, as a dry run (it prints the commands) with ``tmp_path/state`` as STATE."""
    script = INSTALL_EDGE.read_text()
    harness = "\n".join([
        "set -euo pipefail", 'B="" Y="" N=""',
        f"DRY_RUN=1 SRC={REPO} STATE={tmp_path / 'state'} USER_NAME=dangol VENV={VENV}",
        *(_function(script, name) for name in ("log", "warn", "run", "install_model")),
        f'install_model "{model}"',
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANGOL_")}
    return subprocess.run([_tool("bash", "bash"), "-c", harness], capture_output=True, text=True, env=env,
                          timeout=60)


def _built_model(tmp_path: Path) -> tuple[Path, Path]:
    """``(folder, model)``: a stand-in built-model folder with the model and its calibration, no detector."""
    built = tmp_path / "built"
    built.mkdir()
    model = built / "sface-int8.tflite"
    model.write_bytes(b"model")
    (built / "sface-int8.calibration.json").write_text("{}")
    return built, model


def test_install_edge_warns_when_the_detector_is_not_beside_the_model(tmp_path):
    built, model = _built_model(tmp_path)
    proc = _install_model(tmp_path, model)
    assert proc.returncode == 0, proc.stderr
    assert YUNET_FILE in proc.stderr and "warning" in proc.stderr and "check-config" in proc.stderr
    assert "calibration" not in proc.stderr  # only what is missing

    (built / YUNET_FILE).write_bytes(b"onnx")
    proc = _install_model(tmp_path, model)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert f"{built / YUNET_FILE}" in proc.stdout and f"{tmp_path / 'state' / 'models' / YUNET_FILE}" in proc.stdout


def test_install_edge_keeps_quiet_when_an_earlier_install_left_the_detector(tmp_path):
    built, model = _built_model(tmp_path)
    (tmp_path / "state" / "models").mkdir(parents=True)
    (tmp_path / "state" / "models" / YUNET_FILE).write_bytes(b"onnx")
    proc = _install_model(tmp_path, model)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_install_edge_dry_run_with_a_model_alone_warns_and_plans_the_check(tmp_path):
    model = tmp_path / "sface-int8.tflite"
    model.write_bytes(b"not really a model")
    (tmp_path / "sface-int8.calibration.json").write_text("{}")
    proc = subprocess.run([str(INSTALL_EDGE), "--dry-run", "--no-apt", "--model", str(model)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"no {YUNET_FILE} beside {model}" in proc.stderr
    assert "check-config" in proc.stdout
