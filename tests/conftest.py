"""Fixtures shared by every test: where the real data and the built models are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets: ``$DANGOL_DATA`` or ``<repo>/../shared/data``; fails clearly if missing."""
    path = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    if not (path / "README.md").is_file():
        pytest.fail(f"real data not found at {path}: set DANGOL_DATA to the shared/data folder", pytrace=False)
    return path
