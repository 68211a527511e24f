"""Where each config value comes from: file < environment < command line, as the docs and ``--help`` say."""

from __future__ import annotations

from dangol_edge.cli import main
from dangol_edge.config import load_config


def test_home_option_beats_dangol_home(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DANGOL_HOME", str(tmp_path / "from-env"))
    cfg_file = tmp_path / "edge.toml"
    cfg_file.write_text(f'home = "{tmp_path / "from-file"}"\n')
    assert load_config(cfg_file).home == tmp_path / "from-env"  # environment beats the file
    assert load_config(cfg_file, home=tmp_path / "from-cli").home == tmp_path / "from-cli"
    assert main(["--home", str(tmp_path / "from-cli"), "check-config", str(cfg_file)]) == 0
    assert f"home={tmp_path / 'from-cli'}" in capsys.readouterr().out


def test_flat_mqtt_url_beats_the_file_and_the_nested_variable_beats_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DANGOL_MQTT__URL", raising=False)
    cfg_file = tmp_path / "edge.toml"
    cfg_file.write_text('[mqtt]\nurl = "mqtt://file:1883"\nkeepalive_s = 17\n')
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    assert load_config(cfg_file).mqtt.url == "mqtt://file:1883"
    monkeypatch.setenv("DANGOL_MQTT_URL", "mqtt://flat:1883")
    cfg = load_config(cfg_file)
    assert cfg.mqtt.url == "mqtt://flat:1883"
    assert cfg.mqtt.keepalive_s == 17  # the rest of the file's section is kept
    monkeypatch.setenv("DANGOL_MQTT__URL", "mqtt://nested:1883")
    assert load_config(cfg_file).mqtt.url == "mqtt://nested:1883"


def test_nested_overrides_merge_with_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DANGOL_PRIVACY__RETENTION_DAYS", "30")
    cfg = load_config(None, home=tmp_path, display={"picks": 2})
    assert cfg.home == tmp_path and cfg.display.picks == 2 and cfg.privacy.retention_days == 30


def test_a_config_file_of_the_wrong_shape_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """``check-config`` (install-edge's check; ``run`` checks the same at start) must name the file and the
    problem, exit 2, never a traceback."""
    as_list = tmp_path / "list.json"
    as_list.write_text("[1, 2]\n")
    assert main(["check-config", str(as_list)]) == 2
    assert "list.json" in capsys.readouterr().err
    mqtt_text = tmp_path / "mq.toml"
    mqtt_text.write_text('mqtt = "mqtt://broker:1883"\n')
    monkeypatch.setenv("DANGOL_MQTT_URL", "mqtt://flat:1883")
    assert main(["check-config", str(mqtt_text)]) == 2
    err = capsys.readouterr().err
    assert "mq.toml" in err and "mqtt" in err


def test_a_display_host_the_kiosk_cannot_reach_is_refused():
    """The kiosk browser opens http://127.0.0.1:<port>/ and the menu is served to this device's own screen only:
    bound to one LAN address alone the door screen stays blank, so only loopback or all addresses are accepted."""
    import pytest

    from dangol_edge.config import ConfigError

    for host in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::"):
        assert load_config(display={"host": host, "staff_pin": "246813"}).display.host == host
    with pytest.raises(ConfigError, match="display.host"):
        load_config(display={"host": "192.168.1.20", "staff_pin": "246813"})
