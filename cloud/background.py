"""Background work of ``dangol-cloud serve``: the MQTT consumer, scheduled retraining, re-publishing of
unconfirmed erasures and the daily sweep (retention, old device events); the app's menu republisher
(:class:`MenuRepublisher`: a dislike's menu goes to the stores without holding up the web request) and welcomer
(:func:`welcomer`: a new regular's first menu, retried until sent); the listener's erasure re-sender
(:class:`ErasureResender`: a device coming online gets its unconfirmed erasures off the listener's worker, at most
once per ``erasure_republish_minutes``). Each retention sweep and scheduled training leaves an audit entry in its
own transaction (:data:`RUN_ACTIONS`, success or failure), shown on the owner's home page when failing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flask import Flask

from dangol_cloud.background_workers import ErasureResender, MenuRepublisher  # noqa: F401 - re-exported

__all__ = ["RUN_ACTIONS", "ErasureResender", "MenuRepublisher", "record_run", "start_background", "welcomer"]

log = logging.getLogger(__name__)

#: Audit actions of background runs: ``retention-run`` (by :func:`dangol_cloud.erasure.run_retention`, in the sweep's
#: transaction), the others by :func:`record_run` in a transaction of their own; ``training-run`` is a training
#: started by hand that succeeded (Retrain now, ``dangol-cloud train``).
RUN_ACTIONS = ("retention-run", "retention-failed", "training-scheduled", "training-failed", "training-run")
#: Seconds between two daily sweeps (retention, then old device events), from the end of one to the next.
SWEEP_INTERVAL_S = 24 * 3600
#: Seconds before a sweep that failed (either part) is tried again: within the hour, so a customer past the
#: retention period is not kept a whole day longer because the database was busy or a file unreadable once.
SWEEP_RETRY_S = 3600
#: Seconds between two tries of a new regular's first menu (:func:`welcomer`).
WELCOME_RETRY_SECONDS = 30.0
#: Customers whose first menu may wait for a retry at once (:func:`welcomer`); more are dropped, counted and logged.
WELCOME_MAX_PENDING = 10_000


def record_run(db, action: str, actor: str, detail: str) -> bool:
    """Write one audit entry about a background run (``action`` of :data:`RUN_ACTIONS`, ``actor`` ``retention``,
    ``schedule``, ``cli`` or the owner's e-mail; ``detail`` cut to 300 characters, never a name) in a transaction of
    its own, so a run that rolled back is still on record. Returns False if even that failed (logged with
    traceback: the database is down)."""
    from dangol_cloud.erasure import audit

    try:
        with db.transaction() as session:
            audit(session, actor, action, detail=detail[:300])
        return True
    except Exception:  # the database itself is down: the counters on the home page still show the failure
        log.exception("could not record %s in the audit log", action)
        return False


def _short(exc: BaseException) -> str:  # "Type: first line of the message", for the audit log
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]


def welcomer(app: Flask) -> "MenuRepublisher":
    """The app's retrying welcomer (``app.extensions["dangol_welcomer"]``, made at the first use): a
    :class:`MenuRepublisher` whose work is :func:`dangol_cloud.services.welcome` (write the customers' first menus
    with the newest model, then publish them), tried again every :data:`WELCOME_RETRY_SECONDS` until it succeeds —
    broker down, or the model cannot be loaded (then not even the menu is written). At most
    :data:`WELCOME_MAX_PENDING` customers wait (more are dropped and counted: their menus come with the next
    training). Stopped by :func:`start_background`'s stop function."""
    found = app.extensions.get("dangol_welcomer")
    if found is not None:
        return found
    from dangol_cloud.services import welcome

    db, settings = app.extensions["dangol_db"], app.extensions["dangol_settings"]
    made = MenuRepublisher(lambda ids: welcome(db, settings, ids), retry_seconds=WELCOME_RETRY_SECONDS,
                           max_pending=WELCOME_MAX_PENDING, what="first menus")
    return app.extensions.setdefault("dangol_welcomer", made)  # atomic: two first uses keep one


def start_background(app: Flask) -> Callable[[], None]:
    """Start the MQTT listener (if a broker is configured and ``listen`` is on; ``app.extensions["dangol_listener"]``;
    a device coming online gets its unconfirmed erasures re-sent by its :class:`ErasureResender`, at most once per
    ``erasure_republish_minutes``), the training schedule (if ``train_interval_hours`` is set), the erasure
    re-publisher (every ``erasure_republish_minutes``, with a broker; it also sends the menu clears of erasures
    published within :data:`~dangol_cloud.erasure_messages.RECLEAR_WINDOW_S` again, a bounded number per pass: an
    unclean broker stop may have undone them, :class:`~dangol_cloud.erasure_messages.RecentClears`) and the daily
    sweep (at start, then every :data:`SWEEP_INTERVAL_S`; :data:`SWEEP_RETRY_S` after a failed one): retention, then device events older than
    ``device_event_days``. Failures of each (and of scheduled training) are counted in ``app.extensions["dangol_sweep_failures"]`` (``retention``, ``device-events``,
    ``training``); each retention and scheduled training run is recorded in the audit log (:func:`record_run`),
    success or failure. A newly active customer whose welcome fails is retried by the listener
    (:attr:`~dangol_cloud.events.Listener.follow_ups`). Returns a function that stops them, the app's
    :class:`MenuRepublisher` (``app.extensions["dangol_republisher"]``) and its welcomer (:func:`welcomer`).

    Raises:
        MqttError: the MQTT URL is malformed. An unreachable broker is retried in the background.
    """
    from dangol_cloud.events import Listener
    from dangol_cloud.services import retrain_and_publish
    from dangol_cloud.training import NotEnoughData

    settings = app.extensions["dangol_settings"]
    db = app.extensions["dangol_db"]
    stopping = threading.Event()
    listener = None
    if settings.mqtt_url and settings.listen:
        from dangol_cloud.publishing import republish_erasures
        from dangol_cloud.training import welcome_regulars

        listener = Listener(db, settings.mqtt_url, client_id=f"{settings.mqtt_client_id}-listener",
                            on_activated=lambda customer_id: welcome_regulars(db, settings, [customer_id]),
                            on_erasures=lambda device: republish_erasures(db, settings, device_id=device),
                            erasure_interval=settings.erasure_republish_minutes * 60).start()
        app.extensions["dangol_listener"] = listener
        if listener.subscribed.is_set():
            log.info("MQTT listener subscribed to device events and status")

    def schedule() -> None:
        interval = settings.train_interval_hours * 3600
        while not stopping.wait(interval):
            try:
                result = retrain_and_publish(db, settings)
                log.info("scheduled training: model %s", result.model_version)
                record_run(db, "training-scheduled", "schedule", f"model {result.model_version}; "
                                                                 f"{result.menus} menus")
            except NotEnoughData as exc:
                log.info("scheduled training skipped: %s", exc)  # nothing to train on: not a failure
            except Exception as exc:  # keep the schedule alive; logged with traceback, recorded, retried next interval
                sweep_failures["training"] += 1
                log.exception("scheduled training failed; retrying in %.1f h", settings.train_interval_hours)
                trained = getattr(getattr(exc, "result", None), "model_version", None)  # PublishFailed: menus saved
                record_run(db, "training-failed", "schedule",
                           (f"model {trained} trained, menus not sent: " if trained else "") + _short(exc))

    if settings.train_interval_hours:
        threading.Thread(target=schedule, name="dangol-train-schedule", daemon=True).start()

    def erasures() -> None:
        from dangol_cloud.erasure_messages import RecentClears
        from dangol_cloud.publishing import republish_erasures

        recent = RecentClears()  # a broker crash may undo recent menu clears: sent again, a bounded number per pass
        while not stopping.wait(settings.erasure_republish_minutes * 60):
            try:
                sent = republish_erasures(db, settings, recent=recent)
                if sent:
                    log.info("re-published %d erasure messages (to devices that have not confirmed, and the menu "
                             "clears of recent erasures)", sent)
            except Exception:  # broker down etc.: still pending, retried next interval (logged with traceback)
                log.exception("re-publishing unconfirmed erasures failed; retrying in %.0f min",
                              settings.erasure_republish_minutes)

    if settings.mqtt_url:
        threading.Thread(target=erasures, name="dangol-erasures", daemon=True).start()

    def retention() -> None:
        from dangol_cloud.erasure import prune_device_events, run_retention
        from dangol_cloud.publishing import republish_erasures

        while True:
            ids: list[str] = []
            failed = False
            try:  # a success is recorded by run_retention ("retention-run") in this very transaction
                with db.transaction() as session:
                    ids = run_retention(session, settings.retention_days)
            except Exception as exc:  # retried in an hour; recorded on its own, shown on the owner's home page
                failed = True
                sweep_failures["retention"] += 1
                log.exception("retention sweep failed (%d so far); retrying in %.0f min", sweep_failures["retention"],
                              SWEEP_RETRY_S / 60)
                record_run(db, "retention-failed", "retention", _short(exc))
            if ids:
                log.info("retention: erased %d customers not seen for %d days", len(ids), settings.retention_days)
                try:
                    republish_erasures(db, settings)
                except Exception:  # committed; the erasures are re-published by their own loop (logged)
                    log.exception("retention's erasures not sent now; re-sent every %.0f min",
                                  settings.erasure_republish_minutes)
            try:
                with db.transaction() as session:
                    prune_device_events(session, settings.device_event_days)
            except Exception:  # retried in an hour; until then the table holds a little more
                failed = True
                sweep_failures["device-events"] += 1
                log.exception("pruning device events failed (%d so far); retrying in %.0f min",
                              sweep_failures["device-events"], SWEEP_RETRY_S / 60)
            if stopping.wait(SWEEP_RETRY_S if failed else SWEEP_INTERVAL_S):
                return

    sweep_failures = {"retention": 0, "device-events": 0, "training": 0}
    app.extensions["dangol_sweep_failures"] = sweep_failures

    threading.Thread(target=retention, name="dangol-retention", daemon=True).start()

    def stop() -> None:
        stopping.set()
        if listener is not None:
            listener.stop()
        for name in ("dangol_republisher", "dangol_welcomer"):
            worker = app.extensions.get(name)
            if worker is not None:
                worker.stop()

    return stop
