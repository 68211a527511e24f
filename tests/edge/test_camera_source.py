"""``camera.source`` is parsed once (:func:`dangol_edge.camera_spec.parse_camera_spec`): a typo is refused by the
config check (``dangol-edge check-config``, and ``run`` itself at start, exit 2: no restart) instead of the daemon
retrying a camera that can never open; ``open_source`` builds its source from the same parsed spec."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from dangol_edge.camera_spec import CameraSpec, parse_camera_spec
from dangol_edge.cli import main
from dangol_edge.config import ConfigError, load_config
from dangol_edge.sources import ImageFolderSource, OpenCVSource, Picamera2Source, SourceError, open_source


def _config_file(tmp_path, source: str):
    path = tmp_path / "edge.toml"
    path.write_text(f"[camera]\nsource = {json.dumps(source)}\n")  # a JSON string is a valid TOML basic string
    return path


def _check_config(tmp_path, capsys, source: str) -> tuple[int, str]:
    """Run ``dangol-edge check-config`` on a file setting ``camera.source``; (exit status, stderr)."""
    code = main(["--home", str(tmp_path / "home"), "check-config", str(_config_file(tmp_path, source))])
    return code, capsys.readouterr().err


# --- typos are refused, naming the field and the value -----------------------------------------------
@pytest.mark.parametrize("spec, hint", [
    ("picamera2:abc", "picamera2:0"),               # camera number not a number
    ("picamera2:", "picamera2:0"),                  # number left out after the colon
    ("picamera:0", "picamera2"),                    # the module name misspelt
    ("Picamera2:0", "picamera2"),                   # wrong case
    ("rtsp:/cam", "rtsp://"),                       # one slash missing
    ("rstp://10.0.0.5/stream", "rtsp://"),          # scheme misspelt
    ("rtsp:///stream", "host"),                     # no host
    ("rtsp://10.0.0.5:99999/stream", "port"),       # port out of range
    ("/no/such/folder/entrance.mp4", "no such file or folder"),
    ("/dev/vidoe0", "no such"),                     # a /dev typo is not "a camera not plugged in yet"
    ("/dev/null", "not a video device"),            # exists, is a device, but not a camera
    ("", "empty"),
])
def test_a_bad_camera_source_is_refused_by_check_config(tmp_path, capsys, spec, hint):
    code, err = _check_config(tmp_path, capsys, spec)
    assert code == 2, err
    assert "camera.source" in err and "edge.toml" in err
    assert repr(spec) in err, f"the bad value {spec!r} is not named: {err}"
    assert hint in err
    assert "Traceback" not in err


def test_a_source_that_is_neither_folder_file_nor_device_is_refused(tmp_path, capsys):
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    code, err = _check_config(tmp_path, capsys, str(fifo))
    assert code == 2 and "camera.source" in err and str(fifo) in err
    assert "not a folder, a file or a video device" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_video_file_is_refused(tmp_path, capsys):
    clip = tmp_path / "entrance.mp4"
    clip.write_bytes(b"\0" * 16)
    clip.chmod(0)
    code, err = _check_config(tmp_path, capsys, str(clip))
    assert code == 2 and "cannot read" in err


def test_a_relative_path_that_does_not_exist_names_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _check_config(tmp_path, capsys, "clips/entrance.mp4")
    assert code == 2 and "camera.source" in err
    assert "'clips/entrance.mp4'" in err and str(tmp_path) in err


def test_commands_unrelated_to_the_camera_load_a_config_whose_video_is_missing(tmp_path, capsys):
    """Only check-config and run look on disk: ``customers list`` on a box whose demo video is on an unplugged
    USB stick still works."""
    cfg = load_config(_config_file(tmp_path, "/media/usb/entrance-loop.mp4"))
    assert cfg.camera.source == "/media/usb/entrance-loop.mp4"
    code, err = _check_config(tmp_path, capsys, "/media/usb/entrance-loop.mp4")
    assert code == 2 and "no such file or folder" in err


@pytest.mark.parametrize("spec", ["rtmp://192.168.1.20/live/cam", "udp://@:5000", "srt://10.0.0.5:9000",
                                  "file:///var/lib/dangol/loop.mp4"])
def test_other_ffmpeg_streams_are_passed_to_opencv(tmp_path, capsys, spec):
    code, err = _check_config(tmp_path, capsys, spec)
    assert code == 0, err
    assert parse_camera_spec(spec).kind == "url"


def test_the_environment_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.setenv("DANGOL_CAMERA__SOURCE", "picamera:0")
    with pytest.raises(ConfigError, match=r"environment: .*camera\.source.*'picamera:0'"):
        load_config(None, home=tmp_path)


# --- good sources are accepted -----------------------------------------------------------------------
def _good_specs(data_dir):
    clips = data_dir / "clips"
    return [
        ("picamera2", "picamera2"), ("picamera2:1", "picamera2"), ("0", "index"), ("2", "index"),
        ("rtsp://user:pw@10.0.0.5:554/stream", "url"), ("http://10.0.0.5:8080/video.mjpg", "url"),
        ("https://cam.local/stream", "url"),
        (str(clips / "face_recognition_examples" / "short_hamilton_clip.mp4"), "video"),
        (str(clips / "intel_sample_videos" / "face-demographics-walking.gif"), "video"),
        (str(clips / "face_recognition_examples" / "knn_examples" / "train" / "obama"), "images"),
        (str(clips / "face_recognition_examples" / "obama.jpg"), "images"),
        # a USB camera not plugged in when the config is checked: accepted, the daemon retries it
        ("/dev/video0", "device"), ("/dev/v4l/by-id/usb-046d_C920_1234-video-index0", "device"),
    ]


def test_good_camera_sources_pass_check_config(tmp_path, capsys, data_dir):
    for spec, kind in _good_specs(data_dir):
        code, err = _check_config(tmp_path, capsys, spec)
        assert code == 0, f"{spec}: {err}"
        assert load_config(_config_file(tmp_path, spec)).camera.source == spec
        assert parse_camera_spec(spec).kind == kind, spec


def test_surrounding_spaces_are_dropped(tmp_path):
    assert load_config(_config_file(tmp_path, "  picamera2:1 ")).camera.source == "picamera2:1"


def test_the_default_is_the_first_pi_camera():
    spec = parse_camera_spec(load_config(None).camera.source)
    assert spec == CameraSpec(kind="picamera2", text="picamera2:0", number=0)


def test_an_existing_video4linux_device_is_a_device(tmp_path):
    node = tmp_path / "video9"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(81, 9))  # 81: video4linux (Linux devices.txt)
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    spec = parse_camera_spec(str(node))
    assert spec.kind == "device" and spec.path == node and spec.live


# --- open_source builds from the same parsed spec ----------------------------------------------------
def test_open_source_builds_the_source_of_each_kind(data_dir):
    clips = data_dir / "clips" / "face_recognition_examples"
    cam = open_source("picamera2:1", size=(640, 480))
    assert isinstance(cam, Picamera2Source) and cam.camera == 1 and cam.size == (640, 480)
    assert isinstance(open_source("picamera2"), Picamera2Source)
    assert isinstance(open_source("0"), OpenCVSource) and open_source("0").live
    assert open_source("rtsp://10.0.0.5/stream").live
    video = open_source(str(clips / "short_hamilton_clip.mp4"))
    assert isinstance(video, OpenCVSource) and not video.live
    assert isinstance(open_source(str(clips / "knn_examples" / "train" / "obama")), ImageFolderSource)
    assert isinstance(open_source(str(clips / "obama.jpg")), ImageFolderSource)


@pytest.mark.parametrize("spec", ["picamera2:abc", "picamera:0", "rtsp:/cam", "/no/such/clip.mp4"])
def test_open_source_refuses_a_bad_spec_with_a_source_error(spec):
    """``--source`` on the command line and the capture worker get a SourceError (named), never a ValueError."""
    with pytest.raises(SourceError, match=re.escape(repr(spec))):
        open_source(spec)


def test_a_device_path_is_handed_to_opencv(monkeypatch):
    calls = []

    class FakeCapture:
        def __init__(self, *args):
            calls.append(args)

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr("dangol_edge.sources.cv2.VideoCapture", FakeCapture)
    src = open_source("/dev/video0")
    assert isinstance(src, OpenCVSource) and src.live
    with pytest.raises(SourceError, match="/dev/video0.*(plugged|cannot open)"):
        src.open()
    assert calls and calls[0][0] == "/dev/video0", "the device path string goes to cv2.VideoCapture"


def test_a_bad_run_source_override_exits_2_before_starting(tmp_path, capsys):
    """``dangol-edge run --source`` is checked like ``camera.source``: a typo is not retried for ever."""
    code = main(["--home", str(tmp_path / "home"), "run", "--source", "picamera:0"])
    err = capsys.readouterr().err
    assert code == 2 and "'picamera:0'" in err and "picamera2" in err and "Traceback" not in err
    assert not (tmp_path / "home" / "gallery.sqlite").exists()  # nothing was started
