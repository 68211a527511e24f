"""Database locks that keep imports from each other and from zone changes, customer links and store removal.

An import (:func:`dangol_cloud.ingest.import_rows`) reads the stores' zones when it starts and keys every line with
them (:mod:`dangol_cloud.purchase_keys`); a store's zone change (:func:`dangol_cloud.sale_zones.change_store_zone`),
a ``TIMEZONE`` re-time (:func:`dangol_cloud.sale_zones.retime_naive_sales`) and a customer link
(:func:`dangol_cloud.web.customer_link.link_customers`) re-key stored lines. Were one of those to commit while an
import runs, the import's ``ON CONFLICT DO NOTHING`` would miss the re-keyed lines and store the history twice. So,
in the database (whatever process runs them — the dashboard, ``dangol-cloud import-purchases``, another server):

- an import holds the *sale-keys lock* shared (:func:`share_sale_keys`) for its whole transaction (shared: it keeps
  out re-keyings; imports take turns under the import lock, below);
- a re-keying holds it exclusive (:func:`hold_sale_keys`) for its whole transaction: it waits for the running
  imports to commit, and imports starting meanwhile wait for it.

PostgreSQL: the transaction-level advisory lock :data:`SALE_KEYS_LOCK` (``pg_advisory_xact_lock_shared`` /
``pg_advisory_xact_lock``, released at commit or rollback; a session holding it exclusive may take it shared too).
SQLite writes one transaction at a time: both take the database's write lock at once (a no-op ``UPDATE``: Python's
sqlite3 only begins a transaction at the first write, so reads before it would see other commits), waiting up to
the connection's busy timeout (30 s, :class:`dangol_cloud.db.Database`); past it SQLite answers "database is
locked", which :func:`busy_message` turns into a sentence for the owner.

Imports also take turns among themselves: an import holds the *import lock* (:func:`queue_import`) for its whole
transaction, taken before anything else (before the sale-keys lock and before it writes a line, customer or item).
Two imports writing at once would deadlock: each keeps the customers, catalogue items and lines it inserted locked
until its commit, and two files naming the same new loyalty numbers (or the same sales) in opposite orders, in
different batches, each wait for the other — PostgreSQL then rolls one whole import back. The second import now
waits for the first to commit, however long it runs, and says so (:mod:`dangol_cloud.jobs`' page, the CLI's log);
it then reads what the first stored. Only imports take it: the POS API, the Menu page and the re-keyings never
wait for an import lock (a till selling to a loyalty number an import has just inserted still waits for that
import's commit, as a database does). PostgreSQL: the transaction-level advisory lock :data:`IMPORT_LOCK`, taken
exclusive; it is taken before the sale-keys lock and nothing holding the sale-keys lock waits for it, so the two
never wait on each other in a circle. SQLite: the write lock (as above) already lets one import write at a time; a
second waits up to the busy timeout, then fails with :func:`busy_message`.

:func:`lock_store` locks one store row against an insert naming it (a sale, visit or customer origin being written
takes ``FOR KEY SHARE`` on it through the foreign key), so a store removal counts what a running upload wrote.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

__all__ = ["BUSY_RETRY_AFTER", "IMPORT_LOCK", "SALE_KEYS_LOCK", "busy_message", "hold_sale_keys", "lock_store", "queue_import",
           "share_sale_keys", "try_hold_sale_keys"]

log = logging.getLogger(__name__)

#: The PostgreSQL advisory lock key of the sale keys (bigint; the ASCII of "dangolSK"). Nothing else uses it.
SALE_KEYS_LOCK = int.from_bytes(b"dangolSK", "big") & 0x7FFF_FFFF_FFFF_FFFF
#: The PostgreSQL advisory lock key of the import lock (:func:`queue_import`; the ASCII of "dangolIM"). Only imports
#: take it.
IMPORT_LOCK = int.from_bytes(b"dangolIM", "big") & 0x7FFF_FFFF_FFFF_FFFF


def _take(session: Session, function: str) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text(f"SELECT {function}(:key)"), {"key": SALE_KEYS_LOCK})
    elif dialect == "sqlite":  # the write lock, now (a no-op write: see the module docstring)
        session.execute(text("UPDATE stores SET id = id WHERE 0"))


def share_sale_keys(session: Session) -> None:
    """Hold the sale-keys lock shared until ``session``'s transaction ends (an import: see the module docstring);
    waits while a re-keying holds it.

    Raises:
        sqlalchemy.exc.OperationalError: SQLite's write lock stayed taken past the busy timeout
            (:func:`busy_message`).
    """
    _take(session, "pg_advisory_xact_lock_shared")


def hold_sale_keys(session: Session) -> None:
    """Hold the sale-keys lock exclusive until ``session``'s transaction ends (a zone change, re-time or customer
    link: see the module docstring); waits for the running imports to commit.

    Raises:
        sqlalchemy.exc.OperationalError: as :func:`share_sale_keys`.
    """
    _take(session, "pg_advisory_xact_lock")


def try_hold_sale_keys(session: Session) -> bool:
    """:func:`hold_sale_keys` without waiting on PostgreSQL: False (nothing held) while an import holds the lock
    (for a web request, which should not wait for one). SQLite: as :func:`hold_sale_keys` (True, or the error).

    Raises:
        sqlalchemy.exc.OperationalError: as :func:`share_sale_keys`.
    """
    if session.get_bind().dialect.name == "postgresql":
        return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SALE_KEYS_LOCK}))
    hold_sale_keys(session)
    return True


def queue_import(session: Session, waiting: Callable[[bool], None] | None = None) -> None:
    """Hold the import lock until ``session``'s transaction ends (an import, first of all: see the module
    docstring); waits, however long, while another import holds it.

    Args:
        session: the import's session, before it has written or locked anything.
        waiting: called with True before waiting for another import (PostgreSQL; logged too), with False once this
            one holds the lock (or the wait failed); not called when the lock is free.

    Raises:
        sqlalchemy.exc.OperationalError: SQLite's write lock stayed taken past the busy timeout
            (:func:`busy_message`); PostgreSQL: the connection failed while waiting.
    """
    if session.get_bind().dialect.name != "postgresql":
        _take(session, "")  # SQLite: the write lock
        return
    if session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": IMPORT_LOCK}):
        return
    log.info("waiting for another import to commit (imports are written one at a time)")
    started = time.monotonic()
    if waiting is not None:
        waiting(True)
    try:
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": IMPORT_LOCK})
    finally:
        if waiting is not None:
            waiting(False)
    log.info("the other import has committed after %.0f s: this one goes on", time.monotonic() - started)


def lock_store(session: Session, store_id: str):
    """The store ``store_id`` (None if there is none), its row locked until ``session``'s transaction ends: waits
    for the transactions writing a row that names it (PostgreSQL ``FOR UPDATE``; SQLite: the write lock), so what
    they wrote is counted after. Use it before deciding from the store's rows (a removal).

    Raises:
        sqlalchemy.exc.OperationalError: as :func:`share_sale_keys`.
    """
    from dangol_cloud.models import Store

    if session.get_bind().dialect.name == "sqlite":
        _take(session, "")
    return session.scalar(select(Store).where(Store.id == store_id).with_for_update()
                          .execution_options(populate_existing=True))


#: Seconds a request refused because the database was busy (:func:`busy_message`) is asked to wait before it is sent
#: again (``Retry-After`` of the 503: the POS API, the feedback API, the dashboard's busy page).
BUSY_RETRY_AFTER = 30


def busy_message(exc: BaseException) -> str | None:
    """What to tell the owner when ``exc`` is SQLite's "database is locked" (another transaction kept writing past
    the busy timeout; nothing of this one was written), else None."""
    if isinstance(exc, OperationalError) and "database is locked" in str(exc.orig):
        return ("the database was busy with another write (an import or a zone change still running); try again "
                "once it has finished")
    return None
