"""Background work of ``dangol-cloud serve``: the MQTT consumer, scheduled retraining, re-publishing of
unconfirmed erasures and the daily sweep (retention, old device events)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flask import Flask

__all__ = ["start_background"]

log = logging.getLogger(__name__)


def start_background(app: Flask) -> Callable[[], None]:
    """Start the MQTT listener (if a broker is configured and ``listen`` is on), the training schedule
    (if ``train_interval_hours`` is set), the erasure re-publisher (every ``erasure_republish_minutes``,
    with a broker) and the daily sweep (at start, then every 24 h): retention, then device events older than
    ``device_event_days`` (failures of each counted in ``app.extensions["dangol_sweep_failures"]``). Returns a
    function that stops them.

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
        from dangol_cloud.training import welcome_regulars

        from dangol_cloud.publishing import republish_erasures

        listener = Listener(db, settings.mqtt_url, client_id=f"{settings.mqtt_client_id}-listener",
                            on_activated=lambda customer_id: welcome_regulars(db, settings, [customer_id]),
                            on_erasures=lambda device: republish_erasures(db, settings, device_id=device)).start()
        if listener.subscribed.is_set():
            log.info("MQTT listener subscribed to device events and status")

    def schedule() -> None:
        interval = settings.train_interval_hours * 3600
        while not stopping.wait(interval):
            try:
                result = retrain_and_publish(db, settings)
                log.info("scheduled training: model %s", result.model_version)
            except NotEnoughData as exc:
                log.info("scheduled training skipped: %s", exc)
            except Exception:  # keep the schedule alive; logged with traceback, retried next interval
                log.exception("scheduled training failed; retrying in %.1f h", settings.train_interval_hours)

    if settings.train_interval_hours:
        threading.Thread(target=schedule, name="dangol-train-schedule", daemon=True).start()

    def erasures() -> None:
        from dangol_cloud.publishing import republish_erasures

        while not stopping.wait(settings.erasure_republish_minutes * 60):
            try:
                sent = republish_erasures(db, settings)
                if sent:
                    log.info("re-published %d erasure messages to devices that have not confirmed", sent)
            except Exception:  # broker down etc.: still pending, retried next interval (logged with traceback)
                log.exception("re-publishing unconfirmed erasures failed; retrying in %.0f min",
                              settings.erasure_republish_minutes)

    if settings.mqtt_url:
        threading.Thread(target=erasures, name="dangol-erasures", daemon=True).start()

    def retention() -> None:
        from dangol_cloud.erasure import prune_device_events, run_retention
        from dangol_cloud.publishing import republish_erasures

        while True:
            try:
                with db.transaction() as session:
                    ids = run_retention(session, settings.retention_days)
                if ids:
                    log.info("retention: erased %d customers not seen for %d days", len(ids), settings.retention_days)
                    republish_erasures(db, settings)
            except Exception:  # retried in 24 h; the erasures themselves are re-published by their own loop
                sweep_failures["retention"] += 1
                log.exception("retention sweep failed (%d so far); retrying in 24 h", sweep_failures["retention"])
            try:
                with db.transaction() as session:
                    prune_device_events(session, settings.device_event_days)
            except Exception:  # retried in 24 h; until then the table only holds a day more
                sweep_failures["device-events"] += 1
                log.exception("pruning device events failed (%d so far); retrying in 24 h",
                              sweep_failures["device-events"])
            if stopping.wait(24 * 3600):
                return

    sweep_failures = {"retention": 0, "device-events": 0}
    app.extensions["dangol_sweep_failures"] = sweep_failures

    threading.Thread(target=retention, name="dangol-retention", daemon=True).start()

    def stop() -> None:
        stopping.set()
        if listener is not None:
            listener.stop()

    return stop
