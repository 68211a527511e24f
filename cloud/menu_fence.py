"""Keep an erased customer's menu off the broker while a publish is sending menus.

A publish reads the menus (:func:`dangol_cloud.publishing.menu_messages`, in its own transaction) and sends them for
seconds or minutes (20,000 customers × stores). An erasure or a consent withdrawal recorded meanwhile — in this
process or another: the dashboard, ``serve``'s schedule, the CLI — sends its customer's one retained clear the first
time it is published (:func:`dangol_cloud.publishing.publish`); a menu of that customer sent after that clear would
stay retained on the broker for good, first name included. So :func:`publish_menus` sends the menus in batches of
:data:`BATCH` and asks the database which customers of each batch were erased by now (no longer regulars, and named
by an erasure) — on a connection of its own, because the publish's transaction may still see the snapshot it read
the menus from:

1. before a batch is sent, the menus of customers erased by then are left out (*withheld*);
2. once the broker acknowledged the batch, the empty retained payload goes to the topics of the batch's customers
   erased in the meantime (*cleared*).

Step 2 closes the race without a lock: an erasure it does not see was committed after the broker had stored the
menu, and that erasure's clear, published after its commit, reaches the broker after the menu. It is a database
check, not an in-process lock, so it holds whichever processes publish and erase (web app, ``serve``, CLI).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice

from sqlalchemy import select
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_cloud.models import Customer, Erasure
from dangol_cloud.mqtt import Message, publish_all

__all__ = ["BATCH", "FenceReport", "publish_menus"]

log = logging.getLogger(__name__)

#: Menu messages sent between two checks (each batch waits for its PUBACKs before the next one is checked).
BATCH = 2_000
#: Customer ids per ``IN (...)`` query.
_CHUNK = 500


@dataclass
class FenceReport:
    """Menu messages sent, left out before sending (customer gone), and cleared after sending (gone meanwhile)."""

    sent: int = 0
    withheld: int = 0
    cleared: int = 0


def _customer(topic: str) -> str:
    """The customer id of a menu topic; ValueError for any other topic."""
    parsed = proto.parse_topic(topic)
    if parsed.customer_id is None:
        raise ValueError(f"{topic!r} is not a menu topic")
    return str(parsed.customer_id)


@contextmanager
def _gone_reader(session: Session) -> Iterator[Callable[[set[str]], set[str]]]:
    """``ids -> those erased by now``: no longer regulars (active, with a consent record) and named by an erasure
    (an erasure or a consent withdrawal: neither can be undone). Read on a fresh connection that sees every commit so
    far; an in-memory SQLite database (one connection for everything) is read through ``session``. A customer that
    only the publish's own uncommitted transaction made a regular is not a regular for that connection, but no
    erasure names them: they are not gone."""
    engine = session.get_bind().engine

    def query(execute, ids: set[str]) -> set[str]:
        wanted, regulars = sorted(ids), set()
        for start in range(0, len(wanted), _CHUNK):
            regulars.update(execute(select(Customer.id).where(
                Customer.id.in_(wanted[start:start + _CHUNK]), Customer.status == "active",
                Customer.consent_at.is_not(None))).scalars())
        others, erased = sorted(ids - regulars), set()
        for start in range(0, len(others), _CHUNK):  # rare: erasures have no index on customer_id
            erased.update(execute(select(Erasure.customer_id).where(
                Erasure.customer_id.in_(others[start:start + _CHUNK]))).scalars())
        return erased

    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        yield lambda ids: query(session.execute, ids)
        return
    with engine.connect() as conn:
        def fresh(ids: set[str]) -> set[str]:
            try:
                return query(conn.execute, ids)
            finally:
                conn.rollback()  # the next check starts a new snapshot
        yield fresh


def publish_menus(client, session: Session, messages: Iterable[Message], *, timeout: float = 30.0,
                  batch: int = BATCH) -> FenceReport:
    """Publish retained ``menu/1`` messages (``messages``, e.g. :func:`dangol_cloud.publishing.menu_messages`) with
    ``client``, fenced against erasures recorded meanwhile (module docstring): a menu whose customer was erased (or
    withdrew consent) is withheld before sending, or cleared (empty retained payload) once the broker acknowledged it.

    Returns:
        The :class:`FenceReport` (counts of messages).

    Raises:
        MqttError: the broker did not acknowledge or refused a message (:func:`dangol_cloud.mqtt.publish_all`).
        ValueError: a message's topic is not a menu topic.
    """
    report = FenceReport()
    pending = iter(messages)
    with _gone_reader(session) as erased:
        while chunk := list(islice(pending, batch)):
            customers = [_customer(topic) for topic, _, _ in chunk]
            gone = erased(set(customers))
            keep = [m for m, c in zip(chunk, customers) if c not in gone]
            report.withheld += len(chunk) - len(keep)
            report.sent += publish_all(client, keep, timeout=timeout)
            gone = erased(set(customers) - gone)  # erased or withdrawn while this batch was on its way
            if gone:
                clears = [(topic, b"", True) for topic, _, _ in keep if _customer(topic) in gone]
                report.cleared += publish_all(client, clears, timeout=timeout)
    if report.withheld or report.cleared:
        log.warning("menus of customers erased during the publish: %d left out, %d cleared after sending",
                    report.withheld, report.cleared)
    return report
