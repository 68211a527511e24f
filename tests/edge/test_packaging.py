"""Installed, not only checked out: the data folder lookup and the wheel's package list."""

from __future__ import annotations

from pathlib import Path

import pytest

import dangol_models.lfw as lfw

REPO = Path(__file__).resolve().parents[2]


def test_data_root_of_an_installed_package_needs_dangol_data(tmp_path, monkeypatch):
    site = tmp_path / "venv" / "lib" / "site-packages"
    (site / "dangol_models").mkdir(parents=True)
    (tmp_path / "venv" / "lib" / "shared" / "data").mkdir(parents=True)  # a checkout's layout would find this
    monkeypatch.setattr(lfw, "__file__", str(site / "dangol_models" / "lfw.py"))
    monkeypatch.delenv("DANGOL_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="DANGOL_DATA"):
        lfw.data_root()
    monkeypatch.setenv("DANGOL_DATA", str(tmp_path))
    assert lfw.data_root() == tmp_path


def test_every_package_folder_is_in_the_distribution():
    """Each folder with an ``__init__.py`` under edge/, cloud/, models/, protocol/ is a package of the wheel
    (setup.py discovers them; a hand-written list forgot new subfolders)."""
    import runpy

    setup = runpy.run_path(str(REPO / "setup.py"), run_name="dangol_setup")
    dirs = setup["PACKAGE_DIRS"]
    expected = set()
    for name, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            expected.add(".".join([name, *rel.parts]))
    assert expected <= set(setup["discover"]())
    assert {"dangol_edge", "dangol_cloud.web", "dangol_cloud.migrations.versions"} <= expected
