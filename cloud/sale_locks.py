"""Database locks that keep imports, zone changes, customer links and store removal from overlapping.

An import (:func:`dangol_cloud.ingest.import_rows`) reads the stores' zones when it starts and keys every line with
them (:mod:`dangol_cloud.purchase_keys`); a store's zone change (:func:`dangol_cloud.sale_zones.change_store_zone`),
a ``TIMEZONE`` re-time (:func:`dangol_cloud.sale_zones.retime_naive_sales`) and a customer link
(:func:`dangol_cloud.web.customer_link.link_customers`) re-key stored lines. Were one of those to commit while an
import runs, the import's ``ON CONFLICT DO NOTHING`` would miss the re-keyed lines and store the history twice. So,
in the database (whatever process runs them — the dashboard, ``dangol-cloud import-purchases``, another server):

- an import holds the *sale-keys lock* shared (:func:`share_sale_keys`) for its whole transaction — imports run
  side by side;
- a re-keying holds it exclusive (:func:`hold_sale_keys`) for its whole transaction: it waits for the running
  imports to commit, and imports starting meanwhile wait for it.

PostgreSQL: the transaction-level advisory lock :data:`SALE_KEYS_LOCK` (``pg_advisory_xact_lock_shared`` /
``pg_advisory_xact_lock``, released at commit or rollback; a session holding it exclusive may take it shared too).
SQLite writes one transaction at a time: both take the database's write lock at once (a no-op ``UPDATE``: Python's
sqlite3 only begins a transaction at the first write, so reads before it would see other commits), waiting up to
the connection's busy timeout (30 s, :class:`dangol_cloud.db.Database`); past it SQLite answers "database is
locked", which :func:`busy_message` turns into a sentence for the owner.

:func:`lock_store` locks one store row against an insert naming it (a sale, visit or customer origin being written
takes ``FOR KEY SHARE`` on it through the foreign key), so a store removal counts what a running upload wrote.
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

__all__ = ["SALE_KEYS_LOCK", "busy_message", "hold_sale_keys", "lock_store", "share_sale_keys", "try_hold_sale_keys"]

#: The PostgreSQL advisory lock key of the sale keys (bigint; the ASCII of "dangolSK"). Nothing else uses it.
SALE_KEYS_LOCK = int.from_bytes(b"dangolSK", "big") & 0x7FFF_FFFF_FFFF_FFFF


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


def busy_message(exc: BaseException) -> str | None:
    """What to tell the owner when ``exc`` is SQLite's "database is locked" (another transaction kept writing past
    the busy timeout; nothing of this one was written), else None."""
    if isinstance(exc, OperationalError) and "database is locked" in str(exc.orig):
        return ("the database was busy with another write (an import or a zone change still running); try again "
                "once it has finished")
    return None
