"""The cloud's data folder never depends on the working directory."""

from __future__ import annotations

from dangol_cloud.settings import Settings


def test_default_cloud_home_is_not_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("DANGOL_CLOUD_HOME", raising=False)
    monkeypatch.delenv("DANGOL_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    s = Settings(_env_file=None)
    assert s.cloud_home == tmp_path / "xdg" / "dangol-cloud"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Settings(_env_file=None).cloud_home == tmp_path / "user" / ".local" / "share" / "dangol-cloud"


def test_a_relative_cloud_home_is_fixed_when_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", "data/cloud")
    s = Settings(_env_file=None)
    monkeypatch.chdir("/")
    assert s.cloud_home == tmp_path / "data" / "cloud"
    assert s.models_dir == tmp_path / "data" / "cloud" / "models"
