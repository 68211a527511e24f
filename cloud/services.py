"""The cloud's service layer: the two operations every entry point shares.

- :func:`retrain_and_publish` — train on every purchase, write the menus, then (with a broker) publish them.
  Called by ``dangol-cloud train`` / ``import-purchases --train`` (:mod:`dangol_cloud.cli`), the
  dashboard's "Retrain now" (:mod:`dangol_cloud.jobs`) and the training schedule of ``serve``
  (:mod:`dangol_cloud.background`), so the three no longer differ in what they publish.
- :func:`record_consent` — record a customer's consent (name, who recorded it, text version, time), make
  the customer active and audit it, in the caller's transaction; then :func:`welcome` sends the new
  regular's first menu once the caller committed. Called by the MQTT listener for a device's ``enrolment``
  event (:mod:`dangol_cloud.events`) and by the dashboard's consent form.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from dangol_cloud.db import Database
from dangol_cloud.mqtt import MqttError
from dangol_cloud.settings import Settings

__all__ = ["PublishFailed", "RetrainResult", "record_consent", "retrain_and_publish", "welcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainResult:
    """What :func:`retrain_and_publish` did.

    Attributes:
        model_version: version of the new model (``ModelVersion.version``, also its folder name).
        customers: customers the model was trained for (purchasers + consenting customers without purchases).
        items: distinct items in the training purchases.
        interactions: purchase lines trained on (feedback positives not counted).
        menus: per-customer menus written to the database.
        seconds: wall-clock seconds of training + writing + publishing.
        messages_published: MQTT messages the broker acknowledged (catalogue + menus + erasures); None when
            no broker is configured or ``publish=False`` (nothing was sent).
        stores: stores published to (0 when nothing was sent).
    """

    model_version: str
    customers: int
    items: int
    interactions: int
    menus: int
    seconds: float
    messages_published: int | None = None
    stores: int = 0
    catalogue_messages: int = 0
    menu_messages: int = 0
    erasure_messages: int = 0


class PublishFailed(MqttError):
    """Training succeeded (model and menus committed) but publishing failed; ``result`` says what was
    trained. The menus go out with the next publish."""

    def __init__(self, message: str, result: RetrainResult) -> None:
        super().__init__(message)
        self.result = result


def retrain_and_publish(db: Database, settings: Settings, *, store_id: str | None = None,
                        progress: Callable[[str], None] | None = None, published_by: str | None = None,
                        publish: bool = True) -> RetrainResult:
    """Train on every purchase in ``db`` (:func:`dangol_cloud.training.train_from_database`: model saved
    under ``settings.models_dir``, a ``ModelVersion`` row, every customer's menu replaced, in one
    transaction), then — if ``settings.mqtt_url`` is set and ``publish`` — publish in one transaction the
    retained menus of every consenting active customer and every erasure still unconfirmed.

    Args:
        store_id: publish only to this store (default: every store).
        progress: called with each training step's name as it starts
            (:data:`dangol_cloud.training.TRAIN_STEPS`), then with ``"publish"`` before publishing.
        published_by: when given, the catalogue is also published: frozen as a new version (recorded as
            published by this name) if it changed since the last Publish, and sent with the menus. None:
            menus and erasures only — the owner's unpublished catalogue edits stay unpublished.
        publish: False: train and write menus only (``dangol-cloud train --no-publish``).

    Returns:
        :class:`RetrainResult`.

    Raises:
        NotEnoughData: no purchases in the database (nothing was changed).
        LookupError: ``store_id`` names no store (checked before training).
        PublishFailed: the broker is unreachable, refused the credentials or a message (reason code) or did
            not acknowledge in time; the new model and menus are committed (``.result``).
    """
    from dangol_cloud.publishing import ensure_current_version, photo_url_builder
    from dangol_cloud.publishing import publish as publish_messages
    from dangol_cloud.training import train_from_database

    send = bool(settings.mqtt_url) and publish
    if send and store_id is not None:
        from dangol_cloud.models import Store

        with db.sessions() as session:
            if session.get(Store, store_id) is None:
                raise LookupError(f"store {store_id} does not exist")
    start = time.perf_counter()
    step = progress or (lambda name: None)
    report = train_from_database(db, settings, progress=step)
    result = RetrainResult(model_version=report.version, customers=report.customers, items=report.items,
                           interactions=report.interactions, menus=report.menus,
                           seconds=time.perf_counter() - start)
    if not send:
        log.info("trained model %s (%d menus); not published", report.version, report.menus)
        return result
    step("publish")
    try:
        with db.transaction() as session:  # a failed publish leaves no new catalogue version behind
            if published_by is not None:
                ensure_current_version(session, published_by=published_by,
                                       photo_url=photo_url_builder(settings.photos_dir))
            sent = publish_messages(session, settings.mqtt_url, store_id=store_id, currency=settings.currency,
                                    catalogue=published_by is not None, timezone=settings.door_timezone)
    except MqttError as exc:
        failed = RetrainResult(**{**result.__dict__, "seconds": time.perf_counter() - start})
        log.warning("model %s trained and its menus written, but publishing failed: %s", report.version, exc)
        raise PublishFailed(f"model {report.version} trained; publishing failed: {exc}", failed) from exc
    result = RetrainResult(**{**result.__dict__, "seconds": time.perf_counter() - start,
                              "messages_published": sent.catalogue + sent.menus + sent.erasures,
                              "stores": sent.stores, "catalogue_messages": sent.catalogue,
                              "menu_messages": sent.menus, "erasure_messages": sent.erasures})
    log.info("model %s: %d menus written, %d messages published to %d store(s) in %.1f s", result.model_version,
             result.menus, result.messages_published, result.stores, result.seconds)
    return result


def record_consent(session: Session, customer, *, display_name: str | None, recorded_by: str | None,
                   text_version: str, recorded_at: datetime, actor: str, device_id: str | None = None) -> bool:
    """Record ``customer``'s consent and make the customer active, in the caller's transaction (the caller
    commits, then calls :func:`welcome` for the first menu).

    Args:
        customer: a :class:`dangol_cloud.models.Customer`.
        display_name: the name given with the consent (None keeps the current one).
        recorded_by: who recorded the consent (staff name), or None.
        text_version: version of the consent text the customer agreed to.
        recorded_at: when the consent was given (aware UTC datetime; a device's time already bounded by
            :func:`dangol_cloud.device_trust.bounded_ts`).
        actor: who records it, for the audit log (a dashboard user's e-mail or ``device:<id>``).
        device_id: the device that recorded it, if any (audit log).

    Returns:
        True if this is a new consent record (audited as ``consent-recorded``), False if the same record was
        already stored (a re-sent enrolment event).
    """
    from dangol_cloud.erasure import audit

    new = customer.consent_at != recorded_at
    if display_name:
        customer.display_name = display_name
    customer.consent_by = recorded_by
    customer.consent_at = recorded_at
    customer.consent_text_version = text_version
    customer.status = "active"
    if new:
        audit(session, actor, "consent-recorded", customer_id=customer.id, device_id=device_id,
              detail=f"text version {text_version}")
    return new


def welcome(db: Database, settings: Settings, customer_ids: list[str]) -> int:
    """Send newly active customers their first menus: written with the newest model (no retraining) and,
    with a broker, published to every store (:func:`dangol_cloud.training.welcome_regulars`).

    Returns:
        Number of menu messages published (0 without a broker or a trained model).

    Raises:
        MqttError: the broker is unreachable (the menus are written, not sent).
        OSError, ValueError: the newest model cannot be loaded (nothing is written).
        Either way the dashboard and the listener hand the customers to a retrying worker
        (:func:`dangol_cloud.background.welcomer`, :attr:`dangol_cloud.events.Listener.follow_ups`).
    """
    from dangol_cloud.training import welcome_regulars

    return welcome_regulars(db, settings, customer_ids)
