"""Fixtures shared by every test: where the real data and the built models are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The edge gallery and the cloud's personal data are encrypted at rest: every test process (and its
# children) gets throw-away keys.
for _var in ("DANGOL_GALLERY_KEY", "DANGOL_DATA_KEY"):
    if not os.environ.get(_var):
        import base64
        import secrets

        os.environ[_var] = base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets: ``$DANGOL_DATA`` or ``<repo>/../shared/data``; fails clearly if missing."""
    path = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    if not (path / "README.md").is_file():
        pytest.fail(f"real data not found at {path}: set DANGOL_DATA to the shared/data folder", pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Playwright) for the tests of one module."""
    from playwright.sync_api import sync_playwright

    from tests.browser import chromium_missing, launch

    if (msg := chromium_missing()):
        pytest.fail(msg, pytrace=False)
    with sync_playwright() as pw:
        chromium = launch(pw)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def models_dir(data_dir: Path) -> Path:
    """Folder with the built ``.tflite`` models (SFace and FaceNet, with their calibration files):
    ``$DANGOL_MODELS_DIR`` or ``<repo>/.cache/models``.

    Built here (idempotent; a few minutes the first time, needs the ``build`` extra) when missing.
    """
    out = Path(os.environ.get("DANGOL_MODELS_DIR") or REPO / ".cache" / "models")
    from dangol_models.build import build_all

    build_all(out, data_dir / "faces")
    return out
