"""Edge fixtures: the real built face models (SFace by default, FaceNet for upgrades), a detector/embedder
pair, and per-test homes."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest



@pytest.fixture
def door_with_mina(tmp_path, monkeypatch):
    """A door with no DANGOL_* overrides: ``(config, state, gallery, Mina's customer id)``, ``display.picks`` 6,
    Mina Park enrolled with a consent record (a random unit template: no face model needed); the state cache is
    empty (the test puts its catalogue and menu)."""
    import numpy as np

    from dangol_edge.config import DisplayConfig, EdgeConfig
    from dangol_edge.gallery import Gallery
    from dangol_edge.state import StateStore
    from dangol_protocol import Consent

    for k in ("DANGOL_HOME", "DANGOL_MQTT_URL", "DANGOL_DISPLAY__PICKS"):
        monkeypatch.delenv(k, raising=False)
    config = EdgeConfig(home=tmp_path / "home", display=DisplayConfig(picks=6))
    state = StateStore(config.state_path).open()
    gallery = Gallery(config.gallery_path, "0" * 64).open()
    e = np.random.default_rng(1).standard_normal((1, 128)).astype(np.float32)
    mina = gallery.enroll("Mina Park", e / np.linalg.norm(e),
                          consent=Consent(recorded_by="Jo", recorded_at=datetime.now(timezone.utc), text_version="1"))
    yield config, state, gallery, mina.id
    gallery.close()
    state.close()


@pytest.fixture(scope="session")
def model_path(models_dir: Path) -> Path:
    """The default embedder: int8 SFace."""
    return models_dir / "sface-int8.tflite"


@pytest.fixture(scope="session")
def facenet_path(models_dir: Path) -> Path:
    """The previous default embedder: int8 FaceNet (model upgrades)."""
    return models_dir / "facenet-int8.tflite"


@pytest.fixture(scope="session")
def clips(data_dir: Path) -> Path:
    return data_dir / "clips" / "face_recognition_examples"


@pytest.fixture(scope="session")
def pipeline(model_path: Path):
    """A real YuNet + int8 SFace pipeline with the default config, shared by the session."""
    from dangol_edge.detect import FaceDetector
    from dangol_edge.embed import Embedder
    from dangol_edge.faces import FacePipeline

    p = FacePipeline(FaceDetector.beside(model_path), Embedder(model_path))
    yield p
    p.close()


@pytest.fixture
def edge_env(tmp_path: Path, model_path: Path, monkeypatch) -> Path:
    """A fresh DANGOL_HOME for a CLI run, using the built model. Returns the home folder."""
    home = tmp_path / "home"
    monkeypatch.setenv("DANGOL_HOME", str(home))
    monkeypatch.setenv("DANGOL_EMBEDDER__MODEL_PATH", str(model_path))
    return home


@pytest.fixture
def gallery(tmp_path):
    """An open, empty gallery in a fresh SQLite file (model sha ``sha-a``)."""
    from dangol_edge.gallery import Gallery

    g = Gallery(tmp_path / "g.sqlite", "sha-a").open()
    yield g
    g.close()


def live_door_page(browser, app):
    """The door's menu page of a running :class:`~dangol_edge.daemon.Appliance` in Chromium (15 s timeout), once its
    event stream is live."""
    door = browser.new_page()
    door.set_default_timeout(15_000)
    door.goto(app.web.url.rstrip("/") + "/")
    door.wait_for_function("document.body.dataset.live === '1'")
    return door


def start_signup_on_staff_page(browser, app):
    """A staff page of a running appliance (10 s timeout) on which "Start a sign-up" was just clicked."""
    page = browser.new_page()
    page.set_default_timeout(10_000)
    page.goto(app.web.url.rstrip("/") + "/staff")
    page.click("#signup-start")
    return page
