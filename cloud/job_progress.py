"""The progress arithmetic the dashboard's background jobs share (:class:`~dangol_cloud.jobs.ImportJob`,
:class:`~dangol_cloud.zone_jobs.ZoneJob`): rate and time left from ``done`` of ``total`` units since ``started_at``."""

from __future__ import annotations

from datetime import datetime

from dangol_cloud.models import utcnow

__all__ = ["JobProgress"]


class JobProgress:
    """Mixin for a job dataclass with ``done`` / ``total`` (units: rows read, lines moved) and ``started_at`` /
    ``finished_at`` (UTC; ``finished_at`` None while it runs)."""

    done: int
    total: int
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def running(self) -> bool:
        """Started and not finished."""
        return self.finished_at is None

    def rate(self) -> float:
        """Units per second so far (0 before the first)."""
        if self.started_at is None:
            return 0.0
        seconds = ((self.finished_at or utcnow()) - self.started_at).total_seconds()
        return self.done / seconds if seconds > 0 else 0.0

    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate (None while unknown or once finished)."""
        rate = self.rate()
        return None if rate <= 0 or not self.running else max(self.total - self.done, 0) / rate
