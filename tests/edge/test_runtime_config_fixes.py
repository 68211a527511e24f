"""What health says when the camera's source ends or goes away, a source that opens but yields no frame, and config
values that ``check-config`` used to accept although ``run`` could not work with them.

* A video file or folder without ``camera.loop`` that ends reads camera ``missing`` (it read ``ok`` for ever), and
  ``fps`` falls to 0 a few seconds after the last frame (it kept its last value, also when a live camera went away).
* A file that opens but yields no frame is a camera error (counted, ``missing``, reopened after the back-off); with
  ``camera.loop`` it used to be reopened thousands of times a second, nothing counted, camera ``ok``.
* ``mqtt.tls_ca`` missing or unreadable, ``enrol.max_frames`` below what a sign-up needs, ``gpio.button_pin`` equal
  to ``gpio.led_pin`` and a broker host name no resolver accepts (``broker..lan``) are refused by the config check
  (``check-config`` exits 2 naming the setting), not found out by ``run``.
* A button that cannot be claimed at start is told on the staff page (it was only logged) and leaves no pin claimed.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import types
import urllib.request
import uuid

import cv2
import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from dangol_edge import sources
from dangol_edge.cli import main
from dangol_edge.config import ConfigError, EdgeConfig, check_daemon_settings, load_config
from dangol_edge.daemon import Appliance
from dangol_edge.enrol import SampleCollector
from dangol_edge.workers import CaptureWorker, Stats
from dangol_protocol.client import MqttUrlError, parse_url
from tests.edge.test_daemon import DEVICE, STORE, config, home  # noqa: F401
from tests.edge.test_sync import wait_for


def _folder(tmp_path, clips, n: int, name: str = "camera"):
    d = tmp_path / name
    d.mkdir()
    for i in range(n):
        shutil.copy(clips / "obama.jpg", d / f"f{i:02d}.jpg")
    return d


# --- 1. the source ends or goes away ------------------------------------------------------------------------
def test_a_source_that_ends_reads_missing_and_fps_falls_to_zero(tmp_path, home, model_path, clips,  # noqa: F811
                                                                 monkeypatch):
    monkeypatch.setattr("dangol_edge.workers.recognition.FPS_IDLE_S", 1.0, raising=False)
    cam = _folder(tmp_path, clips, 12)  # 1.2 s at the folder's 10 fps, then it ends (no camera.loop)
    app = Appliance(config(home, model_path, clips, camera={"source": str(cam), "loop": False, "realtime": True}))
    app.start()
    try:
        assert wait_for(lambda: app.health().fps > 0 and app.health().camera == "ok", timeout=20)
        capture = app.workers[2]
        assert wait_for(lambda: not capture.is_alive(), timeout=20)
        assert not capture.crashed
        assert app.health().camera == "missing", "no frame will come any more: not 'ok'"
        assert wait_for(lambda: app.health().fps == 0.0, timeout=5), "fps kept the value of the last frames"
    finally:
        app.stop()


def test_fps_falls_to_zero_when_a_live_camera_goes_away(tmp_path, home, model_path, clips,  # noqa: F811
                                                        monkeypatch):
    monkeypatch.setattr("dangol_edge.workers.recognition.FPS_IDLE_S", 1.0, raising=False)
    cam = _folder(tmp_path, clips, 5)
    app = Appliance(config(home, model_path, clips, camera={"source": str(cam), "loop": True, "realtime": True,
                                                            "retry_min_s": 0.2, "retry_max_s": 0.5}))
    app.start()
    try:
        assert wait_for(lambda: app.stats.frames_processed > 5 and app.health().fps > 0, timeout=20)
        cam.rename(tmp_path / "unplugged")
        assert wait_for(lambda: app.health().camera == "missing", timeout=10)
        assert wait_for(lambda: app.health().fps == 0.0, timeout=5)
        (tmp_path / "unplugged").rename(cam)  # plugged in again: frames and fps come back
        assert wait_for(lambda: app.health().camera == "ok" and app.health().fps > 0, timeout=20)
    finally:
        app.stop()


def test_frames_of_a_sign_up_count_in_fps(tmp_path, clips):
    """During a sign-up the frames go to the enrolment, not to recognition: fps still counts them (it read the
    rate from before the sign-up, and would now fall to 0 as if no frame came)."""
    from dangol_edge.sources import Frame
    from dangol_edge.workers.recognition import RecognitionWorker

    enrolment = types.SimpleNamespace(active=True, step=lambda frame, pipeline: None, handle_requests=lambda: None)
    stats = Stats()
    w = RecognitionWorker(types.SimpleNamespace(pipeline=None), queue.Queue(), queue.Queue(), enrolment,
                          types.SimpleNamespace(tick=lambda: None), stats, threading.Event())
    rgb = np.zeros((8, 8, 3), np.uint8)
    for i in range(5):
        w.step(Frame(rgb=rgb, ts=0.0, index=i), time.monotonic())
        time.sleep(0.02)
    assert stats.fps > 0 and stats.frames_processed == 0


@pytest.mark.parametrize("loop", [True, False])
def test_a_file_without_frames_is_a_camera_error_with_back_off(tmp_path, monkeypatch, caplog, loop):
    empty = tmp_path / "empty.avi"
    w = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    w.release()  # a valid container without a single frame (an interrupted recording)
    opens = []
    real_open = sources.OpenCVSource.open

    def counting_open(self):
        opens.append(time.monotonic())
        return real_open(self)

    monkeypatch.setattr(sources.OpenCVSource, "open", counting_open)
    caplog.set_level(logging.INFO, logger="dangol_edge")
    cfg = EdgeConfig(home=tmp_path / "home", camera={"source": str(empty), "loop": loop, "retry_min_s": 0.2,
                                                     "retry_max_s": 0.4})
    stats, stop = Stats(), threading.Event()
    worker = CaptureWorker(cfg, cfg.camera.source, queue.Queue(2), stats, stop)
    t0 = time.process_time()
    worker.start()
    time.sleep(1.5)
    alive = worker.is_alive()
    stop.set()
    worker.join(5)
    assert alive, "the worker keeps retrying the source"
    assert 2 <= len(opens) <= 8, f"{len(opens)} opens in 1.5 s: reopened without the back-off"
    assert stats.camera_errors >= 2 and stats.camera == "missing" and stats.frames_captured == 0
    assert time.process_time() - t0 < 1.0
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1 and "no frame" in tracebacks[0].getMessage()


def test_a_looping_file_with_frames_is_still_reopened_at_once(tmp_path, clips):
    """The back-off is for a pass without a frame; a short looping file still plays again without a pause."""
    cfg = EdgeConfig(home=tmp_path / "home", camera={"source": str(clips / "obama.jpg"), "loop": True,
                                                     "realtime": False, "retry_min_s": 5})
    stats, stop, frames = Stats(), threading.Event(), queue.Queue(2)
    worker = CaptureWorker(cfg, cfg.camera.source, frames, stats, stop)
    worker.start()
    try:
        for _ in range(6):
            frames.get(timeout=2)
        assert stats.camera == "ok" and stats.camera_errors == 0
    finally:
        stop.set()
        worker.join(5)


# --- 2. mqtt.tls_ca ------------------------------------------------------------------------------------------
def _edge_toml(tmp_path, model_path, clips, mqtt: str = "", extra: str = "", gpio: str = "enabled = false") -> str:
    """An edge.toml for ``check-config``: the real model, a photo as the camera, ``[mqtt]`` and ``[gpio]`` as given."""
    p = tmp_path / "edge.toml"
    p.write_text(f'[embedder]\nmodel_path = "{model_path}"\n[camera]\nsource = "{clips / "obama.jpg"}"\n'
                 f'[device]\nid = "{DEVICE}"\nstore_id = "{STORE}"\n[gpio]\n{gpio}\n[mqtt]\n{mqtt}\n{extra}')
    return str(p)


@pytest.mark.parametrize("what", ["missing", "folder", "not a certificate"])
def test_check_config_refuses_an_unusable_tls_ca(tmp_path, model_path, clips, monkeypatch, capsys, what):
    monkeypatch.setenv("DANGOL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    ca = tmp_path / "ca.crt"
    if what == "folder":
        ca.mkdir()
    elif what == "not a certificate":
        ca.write_text("not a certificate\n")
    path = _edge_toml(tmp_path, model_path, clips, f'url = "mqtts://dangol:s3cret@broker.example:8883"\n'
                                                   f'tls_ca = "{ca}"')
    assert main(["check-config", path]) == 2
    err = capsys.readouterr().err
    assert "mqtt.tls_ca" in err and str(ca) in err and "s3cret" not in err
    with pytest.raises(ConfigError, match="mqtt.tls_ca"):  # `run` checks the same before starting anything
        check_daemon_settings(load_config(path), path)


def test_a_readable_tls_ca_passes(tmp_path, model_path, clips, monkeypatch, capsys):
    from tests.edge.test_faults import _ca, _pem

    monkeypatch.setenv("DANGOL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    ca = _pem(tmp_path, "ca", _ca("Dangol test CA")[1])
    path = _edge_toml(tmp_path, model_path, clips, f'url = "mqtts://broker.example:8883"\ntls_ca = "{ca}"')
    assert main(["check-config", path]) == 0, capsys.readouterr().err


# --- 3. values that break at run time -----------------------------------------------------------------------
def _good_face(i: int):
    e = np.zeros(128, np.float32)
    e[0] = 1.0
    return types.SimpleNamespace(embedding=e, quality=0.9, crop=None)


@pytest.mark.parametrize("templates", [1, 2, 5, 50])
def test_the_frames_a_sign_up_needs_follow_the_capture_rule(templates):
    """:func:`signup_frames_needed` is what the door's :class:`SampleCollector` needs with a good face in every
    frame and none dropped: full at exactly that many frames, not one earlier."""
    from dangol_edge.config import signup_frames_needed

    col = SampleCollector(templates)  # as the door's sign-up builds it
    frames = 0
    while not col.full:
        col.offer(_good_face(frames), frames)
        frames += 1
    assert frames == signup_frames_needed(templates)


def test_enrol_max_frames_below_what_a_sign_up_needs_is_refused(tmp_path):
    from dangol_edge.config import signup_frames_needed

    need = signup_frames_needed(5)
    assert need == 29
    with pytest.raises(ConfigError) as caught:
        load_config(None, home=tmp_path, enrol={"max_frames": need - 1})
    assert "enrol.max_frames" in str(caught.value) and "enrol.templates" in str(caught.value)
    assert str(need) in str(caught.value)
    assert load_config(None, home=tmp_path, enrol={"max_frames": need}).enrol.max_frames == need
    assert load_config(None, home=tmp_path, enrol={"templates": 1, "max_frames": 5}).enrol.templates == 1
    assert EdgeConfig().enrol.max_frames >= signup_frames_needed(EdgeConfig.model_fields["enrol"].default.templates)
    with pytest.raises(ConfigError, match="enrol.max_frames"):  # the largest templates needs 299: the default fits
        load_config(None, home=tmp_path, enrol={"templates": 50, "max_frames": 298})


def test_check_config_refuses_too_few_enrol_frames(tmp_path, model_path, clips, monkeypatch, capsys):
    monkeypatch.setenv("DANGOL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    assert main(["check-config", _edge_toml(tmp_path, model_path, clips, extra="[enrol]\nmax_frames = 20\n")]) == 2
    err = capsys.readouterr().err
    assert "enrol.max_frames" in err and "enrol.templates" in err


def test_a_sign_up_succeeds_at_the_smallest_max_frames_allowed(tmp_path, model_path, clips, pipeline):
    """At ``enrol.max_frames`` = the bound, a sign-up with a good face in every frame is stored (pending)."""
    from dangol_edge.config import signup_frames_needed
    from tests.edge.test_workers import _frames, _signup

    need = signup_frames_needed(5)
    e, gallery, state, screen = _signup(tmp_path, model_path, max_frames=need)
    try:
        assert e.ask("enrol", source="test")
        e.handle_requests()
        for frame in _frames(clips, need):
            if not e.active:
                break
            e.step(frame, pipeline)
        assert screen.snapshot()["stage"] == "pending"
        assert len(gallery.customers(status="pending")) == 1
    finally:
        gallery.close()
        state.close()


def test_the_button_and_the_led_on_one_pin_are_refused(tmp_path, model_path, clips, monkeypatch, capsys):
    with pytest.raises(ConfigError) as caught:
        load_config(None, home=tmp_path, gpio={"button_pin": 17, "led_pin": 17})
    assert "gpio.button_pin" in str(caught.value) and "gpio.led_pin" in str(caught.value)
    assert load_config(None, home=tmp_path, gpio={"enabled": False, "button_pin": 17, "led_pin": 17})
    monkeypatch.setenv("DANGOL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    path = _edge_toml(tmp_path, model_path, clips, gpio="enabled = true\nbutton_pin = 17\nled_pin = 17")
    assert main(["check-config", path]) == 2
    err = capsys.readouterr().err
    assert "gpio.button_pin" in err and "gpio.led_pin" in err


def test_a_button_that_cannot_be_claimed_is_told_on_the_staff_page(home, model_path, clips):  # noqa: F811
    """The LED's pin is taken by something else: the daemon runs without the button, the staff page says so, and
    the button's own pin is not left claimed by the half-made button."""
    from gpiozero import LED, Button

    factory = MockFactory()
    other = LED(27, pin_factory=factory)
    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")},
                           gpio={"enabled": True, "button_pin": 17, "led_pin": 27}), pin_factory=factory)
    app.start()
    try:
        assert app.button is None
        assert app.button_problem and "27" in app.button_problem
        with urllib.request.urlopen(app.web.url.rstrip("/") + "/staff", timeout=5) as r:
            page = r.read().decode()
        assert 'id="button-problem"' in page and "enrol button" in page
        Button(17, pin_factory=factory).close()  # raises GPIOPinInUse if the half-made button kept it
    finally:
        app.stop()
        other.close()


def test_a_working_button_is_not_reported(home, model_path, clips):  # noqa: F811
    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")},
                           gpio={"enabled": True, "button_pin": 17, "led_pin": 27}), pin_factory=MockFactory())
    app.start()
    try:
        assert app.button is not None and app.button_problem is None
        with urllib.request.urlopen(app.web.url.rstrip("/") + "/staff", timeout=5) as r:
            assert 'id="button-problem"' not in r.read().decode()
    finally:
        app.stop()


@pytest.mark.parametrize("host", ["broker..lan", ".broker.lan", "a" * 64 + ".lan", "bro\x00ker.lan"])
def test_a_host_name_no_resolver_takes_is_refused_without_the_password(host):
    url = f"mqtt://dangol:s3cret@{host}:1883"
    with pytest.raises(MqttUrlError) as caught:
        parse_url(url)
    assert isinstance(caught.value, ValueError)
    assert "s3cret" not in str(caught.value) and "host name" in str(caught.value)


def test_a_host_name_is_idna_encoded():
    assert parse_url("mqtt://café.example:1883").host == "xn--caf-dma.example"
    assert parse_url("mqtt://broker.lan.").host == "broker.lan."
    assert parse_url("mqtt://[::1]:1883").host == "::1"
    assert parse_url("mqtts://u:p@127.0.0.1").host == "127.0.0.1"


def test_check_config_refuses_a_broker_host_typo(tmp_path, model_path, clips, monkeypatch, capsys):
    monkeypatch.setenv("DANGOL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    path = _edge_toml(tmp_path, model_path, clips, 'url = "mqtt://dangol:s3cret@broker..lan:1883"')
    assert main(["check-config", path]) == 2
    err = capsys.readouterr().err
    assert "mqtt.url" in err and "broker..lan" in err and "s3cret" not in err


def test_the_sync_refuses_a_host_typo_at_start_instead_of_losing_its_network_thread(tmp_path):
    from dangol_edge.config import MQTTConfig
    from dangol_edge.state import StateStore
    from dangol_edge.sync import MQTTConfigError, MQTTSync

    state = StateStore(tmp_path / "state.sqlite").open()
    try:
        sync = MQTTSync(MQTTConfig(url="mqtt://dangol:s3cret@broker..lan:1883"), uuid.uuid4(), uuid.uuid4(), state)
        with pytest.raises(MQTTConfigError, match="broker..lan") as caught:
            sync.start()
        assert "s3cret" not in str(caught.value)
    finally:
        state.close()
