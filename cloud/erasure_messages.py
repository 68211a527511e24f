"""What an erasure sends over MQTT: ``erasures/1`` to the stores whose devices still have to confirm it, and the
empty retained payload that clears the erased customer's menu (:func:`dangol_cloud.publishing.publish` sends them;
re-exported there)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.models import Erasure, Store
from dangol_cloud.mqtt import Message

__all__ = ["erasure_messages", "erasure_plan", "menu_clear_messages", "once"]


def erasure_messages(session: Session, stores: list[Store], erasures: list[Erasure], *,
                     device_id: str | None = None) -> Iterator[Message]:
    """For each erasure and each store in ``stores`` that has a device still to confirm it (only ``device_id``,
    if given: the erasures that device has not confirmed, to its store): clear the customer's retained menu
    (empty payload) and send ``erasures/1``."""
    for erasure, store_ids in erasure_plan(session, stores, erasures, device_id):
        for store_id in store_ids:
            yield proto.menu_topic(store_id, erasure.customer_id), b"", True
            payload = proto.Erasures(store_id=uuid.UUID(store_id), erasure_id=uuid.UUID(erasure.id),
                                     requested_at=erasure.requested_at, customer_ids=[uuid.UUID(erasure.customer_id)])
            yield proto.erasures_topic(store_id), proto.dump_payload(payload), False


def erasure_plan(session: Session, stores: list[Store], erasures: list[Erasure],
                  device_id: str | None = None) -> list[tuple[Erasure, list[str]]]:
    """``[(erasure, ids of the stores in stores to send it to)]``: the stores of its unconfirmed devices (of
    ``device_id`` only, if given); erasures with no such store are left out."""
    from dangol_cloud.erasure import unconfirmed_devices

    wanted = {store.id for store in stores}
    plan = []
    for erasure in erasures:
        waiting = [d for d in unconfirmed_devices(session, erasure) if device_id is None or d.id == device_id]
        store_ids = sorted({d.store_id for d in waiting} & wanted)
        if store_ids:
            plan.append((erasure, store_ids))
    return plan


def menu_clear_messages(stores: list[Store], erasures: list[Erasure]) -> Iterator[Message]:
    """The empty retained payload on each erased customer's menu topic at every store in ``stores``: where their
    menu was or may have been published (a customer without an origin store got one at every store, and the
    origin is gone with the customer), whichever devices still have to confirm."""
    for erasure in erasures:
        for store in stores:
            yield proto.menu_topic(store.id, erasure.customer_id), b"", True


def once(messages: Iterable[Message]) -> Iterator[Message]:
    """``messages`` without repeated retained clears of the same topic."""
    cleared: set[str] = set()
    for topic, payload, retained in messages:
        if retained and not payload:
            if topic in cleared:
                continue
            cleared.add(topic)
        yield topic, payload, retained
