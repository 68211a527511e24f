"""The copies of an erased customer outside the customer tables, scrubbed with the erasure
(:mod:`dangol_cloud.erasure`, which re-exports these): the stored payloads of the devices' events, the POS API's
remembered requests and the saved recommender models.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Text, cast, delete, or_, select
from sqlalchemy.orm import Session

from dangol_cloud.models import DeviceEvent, ModelVersion, PosRequest

__all__ = ["POS_REQUEST_DAYS", "scrub_device_events", "scrub_pos_requests", "scrub_saved_models", "scrubbed_payload"]

log = logging.getLogger("dangol_cloud.erasure")


#: Days the POS API remembers a request (``pos_requests``: store, Idempotency-Key, time, the response naming the
#: customer and purchase ids) to answer a retry; :func:`run_retention` (daily in ``serve``) deletes older ones.
POS_REQUEST_DAYS = 30


def scrub_pos_requests(session: Session, customer_ids: list[str]) -> int:
    """Delete the remembered POS requests whose response names one of ``customer_ids`` (a retry of such a sale is
    a new request). The response is JSON on both backends: its ``customer_id`` is compared exactly
    (``JSON_EXTRACT`` on SQLite, ``->>`` on PostgreSQL), one scan of the table per 500 ids. The caller commits.

    Returns:
        The number of rows deleted.
    """
    wanted = sorted({str(c) for c in customer_ids})
    deleted = 0
    for start in range(0, len(wanted), 500):
        named = PosRequest.response["customer_id"].as_string().in_(wanted[start:start + 500])
        deleted += session.execute(delete(PosRequest).where(named)).rowcount or 0
    return deleted


#: Payload fields kept when a stored device event is scrubbed of an erased customer (no personal data).
_EVENT_FIELDS_KEPT = ("schema", "kind", "event_id", "device_id", "ts", "status", "erasure_id")


def scrubbed_payload(payload: dict, customer_ids: set[str] | list[str]) -> dict:
    """A device event's payload without ``customer_ids``: its event fields (:data:`_EVENT_FIELDS_KEPT`), another
    customer it names and the other customers an erasure-done lists, marked ``"scrubbed": true``."""
    ids = customer_ids if isinstance(customer_ids, set) else {str(c) for c in customer_ids}
    payload = payload if isinstance(payload, dict) else {}
    kept = {k: payload[k] for k in _EVENT_FIELDS_KEPT if k in payload}
    if payload.get("customer_id") is not None and str(payload["customer_id"]) not in ids:
        kept["customer_id"] = payload["customer_id"]
    if isinstance(payload.get("customer_ids"), list):
        kept["customer_ids"] = [c for c in payload["customer_ids"] if str(c) not in ids]
    return {**kept, "scrubbed": True}


def scrub_device_events(session: Session, customer_ids: list[str]) -> int:
    """Remove erased customers from the stored payloads of device events (``device_events``).

    A payload naming one of them keeps only its event fields (:func:`scrubbed_payload`: ``event_id``, kind, device,
    time, status, erasure id) and the other customers an erasure-done lists, marked ``"scrubbed": true``; the row
    stays, so a redelivered event is still recognised as a duplicate. The caller commits.

    Returns:
        The number of event rows rewritten.
    """
    ids = {str(c) for c in customer_ids}
    rewritten = 0
    wanted = sorted(ids)
    for start in range(0, len(wanted), 50):  # the payload is JSON on both backends: matched as text
        text = cast(DeviceEvent.payload, Text)
        match = or_(*(text.like(f"%{c}%") for c in wanted[start:start + 50]))
        for event in session.scalars(select(DeviceEvent).where(match)):
            event.payload = scrubbed_payload(event.payload, ids)
            rewritten += 1
    session.flush()
    return rewritten


def scrub_saved_models(session: Session, customer_ids: list[str]) -> int:
    """Remove erased customers from every saved model a :class:`ModelVersion` row points to (normally only the
    current one: training deletes older ones), with :func:`dangol_cloud.recommend.persist.scrub_customers`.

    Returns:
        The number of saved models that held one of them (a missing folder counts as none).

    Raises:
        OSError / ValueError: a model folder exists but cannot be read or rewritten.
    """
    if not customer_ids:
        return 0
    from dangol_cloud.recommend.persist import scrub_customers

    held = 0
    for version, path in session.execute(select(ModelVersion.version, ModelVersion.path)):
        found = scrub_customers(Path(path), customer_ids)
        if found:
            log.info("model %s: %d erased customer(s) removed", version, found)
            held += 1
    return held
