"""Jobs started from the dashboard: training (one background run at a time, with its steps, ETA and result) and
purchase imports (:class:`ImportJobs`)."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime

from dangol_cloud.db import Database
from dangol_cloud.job_progress import JobProgress
from dangol_cloud.models import utcnow
from dangol_cloud.settings import Settings

__all__ = ["TrainingJob"]

log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    """State of the dashboard's "Retrain now" (one per app), shown with a progress bar and a result page.

    The run is :func:`dangol_cloud.services.retrain_and_publish` (train on every purchase, write the menus,
    then publish menus and erasures when a broker is configured; the catalogue is not re-published).

    Attributes:
        running: a training run is in progress.
        started_at / finished_at: UTC times of the last run.
        message: outcome of the last run ("model X: ..." or the error), for the dashboard.
        ok: True (trained and, with a broker, published), False (failed; or trained but not published: then
            ``result`` is set), None while running.
        step: name of the step in progress (:data:`STEPS`); steps: ``[(name, seconds)]`` of the finished ones.
        result: the :class:`~dangol_cloud.services.RetrainResult` (None before the end or on failure).
        last_seconds: duration of the previous successful run (the ETA's basis), None before one.
        needs_purchases: the last run failed because there was nothing to learn from (no purchases yet); the page
            then points to the Purchases page instead of naming the error.
    """

    running: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None
    ok: bool | None = None
    step: str | None = None
    result: object | None = None
    last_seconds: float | None = None
    needs_purchases: bool = False

    #: The steps shown on the progress bar: the training's (:data:`dangol_cloud.training.TRAIN_STEPS`) + publish.
    STEPS = ("load", "clean", "re-ranker", "factors", "history", "save", "menus", "write", "publish")

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.steps: list[tuple[str, float]] = []
        self._step_started: datetime | None = None

    def start(self, db: Database, settings: Settings, started_by: str = "dashboard") -> bool:
        """Start training (then publish menus if a broker is configured) in a thread; a run that trained and (with
        a broker) published is recorded in the audit log as ``training-run`` by ``started_by`` (the owner's
        e-mail), so the home page's "Scheduled training failed" goes
        (:func:`dangol_cloud.web.home.background_warnings`).

        Returns:
            False if a run is already in progress (nothing started), else True.
        """
        with self._lock:
            if self.running:
                return False
            self.running, self.started_at, self.message, self.ok = True, utcnow(), None, None
            self.finished_at, self.step, self.result, self.steps = None, None, None, []
            self.needs_purchases = False
        thread = threading.Thread(target=self._run, args=(db, settings, started_by), name="dangol-train-now",
                                  daemon=True)
        thread.start()
        self._thread = thread
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for the current run (tests, shutdown)."""
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout)

    def _progress(self, name: str) -> None:
        now = utcnow()
        if self.step is not None and self._step_started is not None:
            self.steps.append((self.step, (now - self._step_started).total_seconds()))
        self.step, self._step_started = name, now

    def elapsed(self) -> float:
        """Seconds since the start (to the end once finished)."""
        if self.started_at is None:
            return 0.0
        return ((self.finished_at or utcnow()) - self.started_at).total_seconds()

    def percent(self) -> int:
        """Share of :data:`STEPS` done, 0–100 (100 once finished with a model; a failed run stays where it
        stopped)."""
        if not self.running and self.finished_at and self.result is not None:
            return 100
        return int(100 * len(self.steps) / len(self.STEPS))

    def eta_seconds(self) -> float | None:
        """Seconds left judged by the previous successful run's duration (None without one, or once overrun)."""
        if not self.running or self.last_seconds is None:
            return None
        left = self.last_seconds - self.elapsed()
        return left if left > 0 else None

    def _run(self, db: Database, settings: Settings, started_by: str) -> None:
        from dangol_cloud.background import record_run
        from dangol_cloud.services import PublishFailed, retrain_and_publish
        from dangol_cloud.training import NotEnoughData

        try:
            result = retrain_and_publish(db, settings, progress=self._progress)
            self._progress("done")
            self.result = result
            text = f"model {result.model_version}: {result.interactions:,} purchases, {result.menus:,} menus"
            if result.messages_published is not None:
                text += f", {result.menu_messages} menu messages published to {result.stores} store(s)"
            self.message, self.ok, self.last_seconds = text, True, result.seconds
            record_run(db, "training-run", started_by, f"model {result.model_version}; {result.menus} menus; "
                                                       "Retrain now")
        except PublishFailed as exc:  # the model and menus are committed; they go out with the next publish
            self._progress("done")
            self.result = exc.result
            self.message, self.ok = f"{exc}. The menus go out with the next publish.", False
            self.last_seconds = exc.result.seconds
        except NotEnoughData as exc:  # a first-hour owner: said in the dashboard's words, not the CLI's
            log.warning("training started from the dashboard: %s", exc)
            self.message, self.ok, self.needs_purchases = (
                "There are no purchases to learn from yet: upload a purchase history (or connect the till) on the "
                "Purchases page, then press Retrain now again.", False, True)
        except Exception as exc:  # reported on the dashboard and logged with its traceback
            log.exception("training started from the dashboard failed")
            self.message, self.ok = f"{type(exc).__name__}: {exc}", False
        finally:
            self.finished_at = utcnow()
            self.running = False


# --- purchase imports started from the dashboard (issue 11) ------------------------------------------------
__all__ += ["ImportJob", "ImportJobs"]

MAX_SHOWN_ERRORS = 200  # row errors kept for the result page (the count is exact)
#: The job page's note while an import waits for another to commit.
WAITING_NOTE = ("This import is waiting for another import to finish (one started from the command line or another "
                "server): imports are written one at a time. It starts by itself once that one is saved.")


@dataclass
class ImportJob(JobProgress):
    """One import started from the dashboard, run in a background thread.

    Attributes:
        id: random hex id (the progress page's URL). files: uploaded file names. fmt: detected format.
        total: data lines of the purchases file (for the bar). done: rows read so far.
        started_at / finished_at: UTC. report: the :class:`~dangol_cloud.ingest.ImportReport` when finished
        (its ``errors`` cut to :data:`MAX_SHOWN_ERRORS`; ``error_count`` is the full number). error: why it failed.
        notes: how files not in UTF-8 were read (:attr:`~dangol_cloud.import_detect.DetectedFiles.notes`, the
            upload's file names); once finished, which earlier imported sales moved to another zone's hours
            (:attr:`~dangol_cloud.ingest.ImportReport.retimed`), and how many rows named a store number no store has
            as its code (:meth:`~dangol_cloud.ingest.ImportReport.store_note`).
        segments: customers whose age band came from demographics.csv.
        segments_skipped: known households of demographics.csv left alone because they are not customers of a
            staff user's stores.
        started_by: id of the user who started it (staff see only their own imports' pages), None from code.
        waiting: it waits for another import to commit (the command line's, another server's: imports are written
            one at a time, :func:`dangol_cloud.sale_locks.queue_import`); :data:`WAITING_NOTE` is among the
            ``notes`` meanwhile. reading_from: when it stopped waiting (the rate's start), None if it never waited.
    """

    id: str
    files: list[str]
    fmt: str
    total: int
    started_by: str | None = None
    done: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report: object | None = None
    error_count: int = 0
    error: str | None = None
    segments: int = 0
    segments_skipped: int = 0
    notes: tuple[str, ...] = ()
    waiting: bool = False
    reading_from: datetime | None = None

    def percent(self) -> int:
        """Share of the purchases file read, 0–100."""
        return 100 if not self.running else int(100 * self.done / self.total) if self.total else 0

    def rate(self) -> float:
        """Rows per second since it began reading (a wait for another import left out; 0 before the first)."""
        start = self.reading_from or self.started_at
        if start is None:
            return 0.0
        seconds = ((self.finished_at or utcnow()) - start).total_seconds()
        return self.done / seconds if seconds > 0 else 0.0

    def wait_for_other(self, now_waiting: bool) -> None:
        """Record that the import waits for another import to commit (True) or goes on (False): the ``waiting``
        of :func:`dangol_cloud.ingest.import_rows`."""
        self.waiting = now_waiting
        if now_waiting:
            self.notes += (WAITING_NOTE,)
        else:
            self.notes = tuple(note for note in self.notes if note != WAITING_NOTE)
            self.reading_from = utcnow()


class ImportJobs:
    """The dashboard's imports: one at a time (one writer), the newest :attr:`KEEP` remembered in memory (a
    restart forgets them; the purchases are in the database)."""

    KEEP = 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, ImportJob] = {}

    def get(self, job_id: str) -> ImportJob | None:
        """The job with this id, or None."""
        return self._jobs.get(job_id)

    def running(self) -> ImportJob | None:
        """The import in progress, if any."""
        return next((j for j in self._jobs.values() if j.running), None)

    def start(self, db: Database, settings: Settings, detected, folder, *, files: list[str],
              customer_source: str = "csv", store_id: str | None = None,
              allowed_stores: frozenset[str] | None = None, started_by: str | None = None) -> ImportJob | None:
        """Start importing ``detected`` (:class:`~dangol_cloud.importers.DetectedFiles`) in a thread; the thread
        deletes ``folder`` (a ``tempfile.TemporaryDirectory`` holding the uploads) when done. ``store_id``: the
        store of rows that name none (so their amounts show in that store's currency); ``allowed_stores``: the
        stores rows may name (a staff user's; see :func:`~dangol_cloud.ingest.import_rows`), None for any: with
        them, rows may name only those stores' customers (or new ones; others are row errors) and demographics.csv
        sets the age band of those stores' customers only (after the import; the others are counted in
        ``segments_skipped``); ``started_by``: the user's id, kept on the job. The import is recorded with its
        lines, in their transaction, under the job's id (:func:`dangol_cloud.import_undo.record_import`: "Undo this
        import").

        Returns:
            The new job, or None when an import is already running (nothing started).
        """
        import uuid

        from dangol_cloud.importers import count_data_lines

        with self._lock:
            if self.running() is not None:
                return None
            # the upload's names, not the stored "0-a.csv"
            notes = tuple(re.sub(r"\b\d+-(?=\S+\.(csv|txt)\b)", "", note) for note in detected.notes)
            job = ImportJob(id=uuid.uuid4().hex, files=files, fmt=detected.fmt, notes=notes,
                            total=count_data_lines(detected.purchases), started_at=utcnow(), started_by=started_by)
            self._jobs[job.id] = job
            while len(self._jobs) > self.KEEP:
                self._jobs.pop(next(iter(self._jobs)))
        thread = threading.Thread(target=self._run,
                                  args=(job, db, settings, detected, folder, customer_source, store_id,
                                        allowed_stores),
                                  name=f"dangol-import-{job.id[:8]}", daemon=True)
        thread.start()
        job._thread = thread
        return job

    def _run(self, job: ImportJob, db: Database, settings: Settings, detected, folder, customer_source,
             store_id, allowed_stores) -> None:
        from dangol_cloud.import_undo import record_import
        from dangol_cloud.importers import parse_purchases, read_cj_demographics
        from dangol_cloud.ingest import import_rows
        from dangol_cloud.web.scope import store_customer_ids

        def counted(rows):
            for row in rows:
                job.done += 1
                yield row

        try:
            with db.transaction() as session:
                scoped = allowed_stores is not None  # a staff upload: their stores' customers only
                customers = store_customer_ids(session, allowed_stores) if scoped else None
                rows = parse_purchases(detected.purchases, detected.fmt, products=detected.products)
                report = import_rows(session, counted(rows), source=detected.fmt, key_prefix=detected.fmt,
                                     tz=settings.timezone, customer_source=customer_source, store_id=store_id,
                                     allowed_stores=allowed_stores, customers_in_scope=customers, import_id=job.id,
                                     currency=settings.currency, waiting=job.wait_for_other)
                record_import(session, job.id, report, files=job.files, fmt=detected.fmt, store_id=store_id,
                              user_id=job.started_by, customer_source=customer_source, started_at=job.started_at)
                if detected.demographics is not None:  # the scope after this import (its new customers included)
                    job.segments, job.segments_skipped = _store_age_bands(
                        session, read_cj_demographics(detected.demographics),
                        store_customer_ids(session, allowed_stores) if scoped else None)
            report.source = " + ".join(job.files)
            if report.retimed.lines:  # TIMEZONE changed since an earlier import: its lines moved to the new hours
                job.notes += (report.retimed.describe() + ".",)
            if report.store_note():  # Complete Journey store numbers no store has as its code
                job.notes += (report.store_note() + ".",)
            job.error_count = len(report.errors)
            report.errors = report.errors[:MAX_SHOWN_ERRORS]
            job.report = report
            log.info("import %s (%s): %d rows, %d inserted, %d bad", job.id, job.fmt, report.rows, report.inserted,
                     job.error_count)
        except Exception as exc:  # shown on the job page and logged with its traceback; nothing was committed
            from dangol_cloud.sale_locks import busy_message

            log.exception("import %s failed", job.id)
            busy = busy_message(exc)  # SQLite: another write (a zone change, a CLI import) held the database
            job.error = (busy[0].upper() + busy[1:] + "." if busy is not None  # the page adds "Nothing was imported."
                         else str(exc).replace(str(detected.purchases.parent) + "/", ""))
        finally:
            job.finished_at = utcnow()
            folder.cleanup()


def _store_age_bands(session, ages: dict[str, str], in_scope: set[str] | None = None) -> tuple[int, int]:
    """Record each known household's age band as its :class:`CustomerSegment` ``age_group``, for the customers
    in ``in_scope`` only when given (a staff upload: their stores' customers; the others are left alone).

    Returns:
        ``(age bands written, known households skipped as outside in_scope)``.
    """
    from sqlalchemy import select

    from dangol_cloud.crypto import keyring_of
    from dangol_cloud.models import Customer, CustomerSegment

    ring = keyring_of(session.get_bind().dialect)
    by_hash = {ring.lookup_hash(ref): age for ref, age in ages.items()}
    hashes = list(by_hash)
    stored = skipped = 0
    for start in range(0, len(hashes), 500):
        for cid, ref_hash in session.execute(select(Customer.id, Customer.external_ref_hash)
                                             .where(Customer.external_ref_hash.in_(hashes[start:start + 500]))):
            if in_scope is not None and cid not in in_scope:
                skipped += 1
                continue
            segment = session.get(CustomerSegment, cid) or CustomerSegment(customer_id=cid)
            segment.age_group = by_hash[ref_hash]
            session.add(segment)
            stored += 1
    return stored, skipped
