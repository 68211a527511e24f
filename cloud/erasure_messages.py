"""What an erasure sends over MQTT: ``erasures/1`` to the stores whose devices still have to confirm it, and the
empty retained payload that clears the erased customer's menu (:func:`dangol_cloud.publishing.publish` sends them;
re-exported there), and the round of ``serve``'s schedule through the clears of recently published erasures
(:class:`RecentClears`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.models import Erasure, Store, utcnow
from dangol_cloud.mqtt import Message

__all__ = ["RECLEAR_MAX_MESSAGES", "RECLEAR_WINDOW_S", "RecentClears", "erasure_messages", "erasure_plan",
           "menu_clear_messages", "once"]

#: Seconds after an erasure's first publish during which ``serve``'s schedule sends its retained-menu clears again
#: (:class:`RecentClears`). Mosquitto acknowledges a clear before it writes it to disk (its periodic save,
#: firmware-config/mosquitto/dangol.conf ``autosave_interval 60``): an unclean stop (power cut, OOM kill) within that
#: minute brings the erased customer's retained menu back from the last save, and nothing else sends the clear again
#: once the erasure is confirmed. A day is far past the autosave interval and covers a broker that stays down for
#: hours after such a crash (the schedule's passes fail meanwhile and are retried every ``erasure_republish_minutes``).
RECLEAR_WINDOW_S = 24 * 3600
#: Clear messages (erasures × stores) one pass of the schedule sends again at most; the next pass goes on with older
#: erasures (:class:`RecentClears`). Each is an empty retained QoS 1 message, and each box of the store deletes a menu
#: it no longer has (a no-op write): 1,000 per pass (every ``erasure_republish_minutes``, default 10) is a moment of
#: work for both, and still goes through 144,000 clears a day.
RECLEAR_MAX_MESSAGES = 1000


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


class RecentClears:
    """``serve``'s round through the retained-menu clears of erasures published within the last ``window_s``
    seconds (:data:`RECLEAR_WINDOW_S`): each pass of the erasure schedule
    (:func:`dangol_cloud.publishing.republish_erasures` with ``recent``) sends the clears of the next erasures, newest
    first, at most ``max_messages`` messages (erasures × stores, at least one erasure); once the window's erasures are
    all done, the next pass starts again with the newest. So every recent erasure's clear is sent again within a few
    passes of a broker crash, however many there are, and a pass never sends more than the bound. Only erasures whose
    customer may have had a retained menu (:func:`dangol_cloud.erasure.menus_to_clear`). A clear is idempotent: sending
    it again does no harm. The place in the round lives in memory (a restarted ``serve`` starts with the newest);
    it moves on only once a pass was sent (:meth:`sent`).

    Args:
        window_s: how far back, seconds, from each pass.
        max_messages: clear messages per pass at most (≥ 1).

    Raises:
        ValueError: ``max_messages`` < 1 or ``window_s`` ≤ 0.
    """

    def __init__(self, *, window_s: float = RECLEAR_WINDOW_S, max_messages: int = RECLEAR_MAX_MESSAGES):
        if max_messages < 1 or window_s <= 0:
            raise ValueError(f"RecentClears: window_s {window_s} must be > 0 and max_messages {max_messages} ≥ 1")
        self.window_s, self.max_messages = window_s, max_messages
        self._after: tuple | None = None  # (published_at, id) of the last erasure sent in this round
        self._next: tuple | None = None   # the same after the pass under way, once sent

    def due(self, session: Session, stores: int) -> list[Erasure]:
        """The erasures whose clears this pass sends again (their clears go to ``stores`` stores each); call
        :meth:`sent` once they were sent. Empty without stores or without recent erasures."""
        if stores < 1:
            return []
        limit = max(1, self.max_messages // stores)
        rows = self._read(session, limit, self._after)
        if not rows and self._after is not None:  # the round is over: start again with the newest
            rows = self._read(session, limit, None)
        self._next = (rows[-1].published_at, rows[-1].id) if len(rows) == limit else None
        from dangol_cloud.erasure import menus_to_clear

        return menus_to_clear(session, rows)

    def sent(self) -> None:
        """The last :meth:`due` was sent: the next pass goes on after it."""
        self._after = self._next

    def _read(self, session: Session, limit: int, after: tuple | None) -> list[Erasure]:
        query = select(Erasure).where(Erasure.published_at.is_not(None),
                                      Erasure.published_at >= utcnow() - timedelta(seconds=self.window_s))
        if after is not None:
            at, erasure_id = after
            query = query.where(or_(Erasure.published_at < at,
                                    and_(Erasure.published_at == at, Erasure.id < erasure_id)))
        return list(session.scalars(query.order_by(Erasure.published_at.desc(), Erasure.id.desc()).limit(limit)))
