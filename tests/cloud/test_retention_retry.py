"""A failed retention sweep is retried within the hour, not a day later (customers past their retention are then
kept a day longer than the owner promised). Real app factory, SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

from dangol_cloud import background
from dangol_cloud.app import create_app
from dangol_cloud.background import start_background
from dangol_cloud.models import Customer, ModelVersion, utcnow
from dangol_cloud.settings import Settings

from .conftest import add_owner
from .test_background_outcomes_dec7b import _audits, _wait


def test_a_failed_sweep_is_retried_after_the_short_delay_without_a_restart(db, tmp_path, monkeypatch):
    """The first sweep fails (a saved model that is not a model archive); once the cause is gone, the retry after
    ``SWEEP_RETRY_S`` (shortened here) erases the stale customer while the daily interval is still far off."""
    monkeypatch.setattr(background, "SWEEP_RETRY_S", 0.5)
    assert background.SWEEP_INTERVAL_S == 24 * 3600
    add_owner(db)
    folder = tmp_path / "home" / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "arrays.npz").write_bytes(b"this is not a saved model")
    stale = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(ModelVersion(version="broken", path=str(folder)))
        s.add(Customer(id=stale, status="active", source="edge", created_at=utcnow() - timedelta(days=400)))
    settings = Settings(database_url=db.url, cloud_home=tmp_path / "home", secret_key="k", listen=False,
                        retention_days=30, _env_file=None)
    app = create_app(settings, db=db, TESTING=True)
    stop = start_background(app)
    try:
        assert _wait(lambda: _audits(db, "retention-failed"))
        (folder / "arrays.npz").unlink()
        assert _wait(lambda: _audits(db, "retention-run")), "the failed sweep was not retried before the next day"
    finally:
        stop()
    with db.sessions() as s:
        assert s.get(Customer, stale) is None
    assert app.extensions["dangol_sweep_failures"]["retention"] == 1


def test_the_retry_delay_is_an_hour_and_shorter_than_the_daily_interval():
    """The constants the loop uses (seconds)."""
    assert background.SWEEP_RETRY_S == 3600
    assert background.SWEEP_RETRY_S < background.SWEEP_INTERVAL_S
