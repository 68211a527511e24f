"""Training started from the dashboard: one background run at a time, its last outcome remembered."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from dangol_cloud.db import Database
from dangol_cloud.models import utcnow
from dangol_cloud.settings import Settings

__all__ = ["TrainingJob"]

log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    """State of the dashboard's "Retrain now" (one per app).

    Attributes:
        running: a training run is in progress.
        started_at / finished_at: UTC times of the last run.
        message: outcome of the last run ("model X: ..." or the error), for the dashboard.
    """

    running: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None
    ok: bool | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def start(self, db: Database, settings: Settings) -> bool:
        """Start training (then publish menus if a broker is configured) in a thread.

        Returns:
            False if a run is already in progress (nothing started), else True.
        """
        with self._lock:
            if self.running:
                return False
            self.running, self.started_at, self.message, self.ok = True, utcnow(), None, None
        thread = threading.Thread(target=self._run, args=(db, settings), name="dangol-train-now", daemon=True)
        thread.start()
        self._thread = thread
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for the current run (tests, shutdown)."""
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout)

    def _run(self, db: Database, settings: Settings) -> None:
        from dangol_cloud.training import train_from_database

        try:
            report = train_from_database(db, settings)
            text = f"model {report.version}: {report.interactions:,} purchases, {report.menus:,} menus"
            if settings.mqtt_url:
                from dangol_cloud.publishing import publish

                with db.transaction() as session:
                    sent = publish(session, settings.mqtt_url, currency=settings.currency, catalogue=False)
                text += f", {sent.menus} menu messages published"
            self.message, self.ok = text, True
        except Exception as exc:  # reported on the dashboard and logged with its traceback
            log.exception("training started from the dashboard failed")
            self.message, self.ok = f"{type(exc).__name__}: {exc}", False
        finally:
            self.finished_at = utcnow()
            self.running = False
