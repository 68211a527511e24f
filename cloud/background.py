"""Background work of ``dangol-cloud serve``: the MQTT consumer and scheduled retraining."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flask import Flask

__all__ = ["start_background"]

log = logging.getLogger(__name__)


def start_background(app: Flask) -> Callable[[], None]:
    """Start the MQTT listener (if a broker is configured and ``listen`` is on) and the training schedule
    (if ``train_interval_hours`` is set). Returns a function that stops both.

    Raises:
        MqttError: the MQTT URL is malformed. An unreachable broker is retried in the background.
    """
    from dangol_cloud.events import Listener
    from dangol_cloud.training import NotEnoughData, train_from_database

    settings = app.extensions["dangol_settings"]
    db = app.extensions["dangol_db"]
    stopping = threading.Event()
    listener = None
    if settings.mqtt_url and settings.listen:
        from dangol_cloud.training import welcome_regulars

        listener = Listener(db, settings.mqtt_url, client_id=f"{settings.mqtt_client_id}-listener",
                            on_activated=lambda customer_id: welcome_regulars(db, settings, [customer_id])).start()
        if listener.subscribed.is_set():
            log.info("MQTT listener subscribed to device events and status")

    def schedule() -> None:
        interval = settings.train_interval_hours * 3600
        while not stopping.wait(interval):
            try:
                report = train_from_database(db, settings)
                if settings.mqtt_url:
                    from dangol_cloud.publishing import publish

                    with db.transaction() as session:
                        publish(session, settings.mqtt_url, currency=settings.currency, catalogue=False)
                log.info("scheduled training: model %s", report.version)
            except NotEnoughData as exc:
                log.info("scheduled training skipped: %s", exc)
            except Exception:  # keep the schedule alive; logged with traceback, retried next interval
                log.exception("scheduled training failed; retrying in %.1f h", settings.train_interval_hours)

    if settings.train_interval_hours:
        threading.Thread(target=schedule, name="dangol-train-schedule", daemon=True).start()

    def stop() -> None:
        stopping.set()
        if listener is not None:
            listener.stop()

    return stop
