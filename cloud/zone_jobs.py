"""A store's time-zone change confirmed on the Stores page, applied in the background with its progress.

Moving a store's imported sales to its new zone's hours (:func:`dangol_cloud.sale_zones.change_store_zone`) takes
minutes on a long history (the whole Ta-Feng file: about two on SQLite), longer than a web request may take. The
confirmed post starts a :class:`ZoneJob` on the app's :class:`ZoneJobs` and answers at once with the job's page
(``/stores/zone-jobs/<id>``: lines moved, lines/s, time left, then the outcome or the error).

The change and the move are one transaction: the job commits the store's new zone and every moved line together,
or — on any error — neither (the page says the store keeps its zone). One zone change runs at a time per app: a
second one, or one while a dashboard import runs, is refused by the Stores page until it is done. An import the page
cannot see (``dangol-cloud import-purchases``, another server) is waited for in the database: the change holds the
sale-keys lock exclusive (:mod:`dangol_cloud.sale_locks`), so it starts once the imports running commit (they keyed
their lines in the zones before) and imports starting meanwhile wait for it. On SQLite that wait ends after the busy
timeout (30 s): the job then fails saying the database was busy, nothing changed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime

from dangol_cloud.db import Database
from dangol_cloud.job_progress import JobProgress
from dangol_cloud.models import utcnow

__all__ = ["ZoneJob", "ZoneJobs"]

log = logging.getLogger(__name__)


@dataclass
class ZoneJob(JobProgress):
    """One store's zone change, applied in a background thread.

    Attributes:
        id: random hex id (the job page's URL). store_id / store_name: the store (its name when asked).
        zone: the zone stored for the store (None: the ``TIMEZONE`` setting). before / after: the zones its naive
            sale times are read in before and after the change (names, for the page).
        total: lines to move (the store's naive lines when asked, then the count the move found).
        done: lines moved so far (not yet committed while running). step: ``"waiting"`` (not started),
            ``"checking"`` (earlier imports brought up to date, the lines to move counted), ``"moving"``.
        started_at / finished_at: UTC. moved: lines moved, once committed (None before, and on failure).
        notes: what else moved in the same transaction (lines read in an earlier ``TIMEZONE``).
        error: why it failed (nothing was committed). started_by: id of the owner who confirmed it.
    """

    id: str
    store_id: str
    store_name: str
    zone: str | None
    before: str
    after: str
    total: int
    started_by: str | None = None
    done: int = 0
    step: str = "waiting"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    moved: int | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None

    @property
    def state(self) -> str:
        """``running``, ``failed`` or ``done`` (the page's ``data-state``)."""
        return "running" if self.running else ("failed" if self.error is not None else "done")

    def percent(self) -> int:
        """Share of the lines moved, 0–100 (100 once done; a failed job stays where it stopped)."""
        if self.state == "done":
            return 100
        return min(int(100 * self.done / self.total), 99) if self.total else 0

    def _progress(self, done: int, total: int) -> None:
        self.step, self.done, self.total = "moving", done, total


class ZoneJobs:
    """The dashboard's zone changes: one at a time, the newest :attr:`KEEP` remembered in memory (a restart forgets
    them: a job cut short by it committed nothing)."""

    KEEP = 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, ZoneJob] = {}

    def get(self, job_id: str) -> ZoneJob | None:
        """The job with this id, or None."""
        return self._jobs.get(job_id)

    def running(self) -> ZoneJob | None:
        """The zone change in progress, if any."""
        return next((j for j in list(self._jobs.values()) if j.running), None)

    def start(self, db: Database, default_zone: str, *, store_id: str, store_name: str, zone: str | None,
              before: str, after: str, total: int, started_by: str | None = None) -> ZoneJob | None:
        """Start giving ``store_id`` the zone ``zone`` (None: ``default_zone``, the ``TIMEZONE`` setting) and moving
        its sales (:func:`~dangol_cloud.sale_zones.change_store_zone`) in a thread; ``before``/``after``/``total``:
        what the owner confirmed (zone names, naive lines), shown until the job counts them itself.

        Returns:
            The new job, or None when a zone change is already running (nothing started).
        """
        with self._lock:
            if self.running() is not None:
                return None
            job = ZoneJob(id=uuid.uuid4().hex, store_id=store_id, store_name=store_name, zone=zone, before=before,
                          after=after, total=total, started_by=started_by, started_at=utcnow())
            self._jobs[job.id] = job
            while len(self._jobs) > self.KEEP:
                self._jobs.pop(next(iter(self._jobs)))
        thread = threading.Thread(target=self._run, args=(job, db, default_zone), name=f"dangol-zone-{job.id[:8]}",
                                  daemon=True)
        job._thread = thread
        thread.start()
        return job

    @staticmethod
    def _run(job: ZoneJob, db: Database, default_zone: str) -> None:
        from dangol_cloud.sale_locks import busy_message
        from dangol_cloud.sale_zones import change_store_zone

        try:
            job.step = "checking"
            with db.transaction() as session:
                earlier, moved = change_store_zone(session, job.store_id, job.zone, default_zone, job._progress)
            job.moved, job.total, job.done = moved.lines, moved.lines, moved.lines
            if earlier.lines:  # a TIMEZONE changed since the last start, import or training
                job.notes += (earlier.describe() + ".",)
            log.info("zone change %s: store %s now reads naive times in %s; %d lines moved", job.id, job.store_id,
                     job.after, moved.lines)
        except Exception as exc:  # shown on the job page and logged with its traceback; nothing was committed
            log.exception("zone change %s of store %s to %s failed", job.id, job.store_id, job.after)
            job.error = busy_message(exc) or f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = utcnow()
