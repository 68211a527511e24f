"""Purchase uploads from the dashboard, recorded (``purchase_imports``, revision 0016), and "Undo this import".

Each upload the dashboard runs (:class:`dangol_cloud.jobs.ImportJobs`) writes a :class:`PurchaseImport` — when, who,
the files, the store (None: history), rows read, lines written and history lines filed — in the transaction of its
lines, and marks each line it writes (``purchases.import_id``) and each store-less line it files under its store
(``filed_import_id``, :mod:`dangol_cloud.import_match`). :func:`undo_import` takes one upload back, audited
(``import-undone``), in the caller's transaction:

* its lines are deleted (and the shown-pick credits of those lines, :mod:`dangol_cloud.feedback_credit`);
* the history lines it filed under its store go back to history: no store, the same wall-clock time read in
  ``TIMEZONE`` (:func:`dangol_cloud.sale_zones.wall_time`), re-keyed as a history upload of their file computes it
  (:func:`dangol_cloud.purchase_keys.changed_keys`), so that history upload keeps all its sales;
* a line it wrote that a later upload into a store filed there is that upload's now: it stays, marked as written by
  it (its own undo then deletes it); one an import recording none filed there (the CLI's ``import-purchases``) is no
  upload's (``import_id`` None, :mod:`dangol_cloud.import_match`) and stays too;
* the customers and POS products it created (made during its run, by its kind of upload) that nothing references any
  more — no purchase, visit, consent or audit entry, opinion, mapping: every column naming a customer or an item
  (:data:`DERIVED` and :data:`DERIVED_ITEM_COLUMNS` aside, which go with them: an item's product mapping, and the
  store price an upload into a store selling in another currency gave it, :mod:`dangol_cloud.store_prices`) — are
  deleted with it.

A filed line whose time cannot be read in ``TIMEZONE`` (a zone no longer known, a time beyond what UTC can express)
keeps its instant and the zone it was read in, logged and counted (:attr:`UndoResult.unread`).

Every other upload's lines stay. A sale this upload added and a later upload of the same store only repeated
("already present") was this upload's line and goes with it: upload the later file again to bring it back (nothing
else is added). Menus trained on the removed sales stay until the next training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from dangol_cloud.crypto import keyring_of
from dangol_cloud.models import (Base, CatalogueItem, Customer, PickCredit, ProductMapping, Purchase, PurchaseImport,
                                 Store, User, utcnow)
from dangol_cloud.purchase_keys import IMPORT_KEY, changed_keys, content_of, keyed
from dangol_cloud.sale_zones import wall_time

__all__ = ["DERIVED", "DERIVED_ITEM_COLUMNS", "UndoResult", "later_imports", "record_import", "recent_imports", "undo_import"]

BATCH = 1000
#: Tables whose rows about a customer are derived from their purchases (or set by the upload): deleted with them.
DERIVED = frozenset({"menus", "menu_dayparts", "customer_segments"})
#: Columns naming an item that the upload set with it (its POS-product mapping, its price at a store selling in
#: another currency than the catalogue's): deleted with the item, never a reference that keeps it.
DERIVED_ITEM_COLUMNS = frozenset({"product_mappings.product_id", "store_prices.item_id"})

log = logging.getLogger(__name__)


def record_import(session: Session, import_id: str, report, *, files: list[str], fmt: str, store_id: str | None,
                  user_id, customer_source: str, started_at: datetime) -> PurchaseImport:
    """Record the dashboard upload ``import_id`` (its :class:`~dangol_cloud.ingest.ImportReport` ``report``; the
    lines it wrote, counted by their ``import_id``) in the caller's transaction; ``user_id`` (None: started from
    code) names who in ``started_by`` (their e-mail, else ``dashboard``). Returns the added record."""
    uid = int(user_id) if str(user_id).isdigit() else None
    email = session.scalar(select(User.email).where(User.id == uid)) if uid is not None else None
    store = session.get(Store, store_id) if store_id is not None else None
    record = PurchaseImport(id=import_id, started_at=started_at, finished_at=utcnow(),
                            user_id=uid, started_by=(email or "dashboard")[:254],
                            files=list(files), fmt=fmt[:32], customer_source=customer_source[:10], store_id=store_id,
                            store_name=store.name if store is not None else None, rows=report.rows,
                            lines=session.scalar(select(func.count()).select_from(Purchase)
                                                 .where(Purchase.import_id == import_id)) or 0, filed=report.filed)
    session.add(record)
    return record


def recent_imports(session: Session, limit: int = 10, user_id=None) -> list[PurchaseImport]:
    """The newest ``limit`` recorded uploads, newest first (only ``user_id``'s when given: a staff user's own)."""
    query = select(PurchaseImport).order_by(PurchaseImport.finished_at.desc()).limit(limit)
    if user_id is not None:
        query = query.where(PurchaseImport.user_id == (int(user_id) if str(user_id).isdigit() else -1))
    return list(session.scalars(query))


def later_imports(session: Session, record: PurchaseImport) -> int:
    """Uploads into the same store (or history) after ``record``, not undone: they may have repeated its sales."""
    same = (PurchaseImport.store_id == record.store_id if record.store_id is not None
            else PurchaseImport.store_id.is_(None))
    return session.scalar(select(func.count()).select_from(PurchaseImport).where(
        same, PurchaseImport.finished_at > record.finished_at, PurchaseImport.undone_at.is_(None))) or 0


@dataclass
class UndoResult:
    """What :func:`undo_import` did: lines deleted, history lines returned, lines kept as a later upload's,
    customers and products deleted; ``unread``: of the returned lines, those whose time could not be read in
    ``TIMEZONE`` (kept at their instant, with the zone they were read in)."""

    lines: int = 0
    returned: int = 0
    handed_on: int = 0
    customers: int = 0
    products: int = 0
    unread: int = 0

    def describe(self) -> str:
        """For the owner and the audit log (no names)."""
        parts = [f"{self.lines:,} purchase lines removed"]
        if self.returned:
            parts.append(f"{self.returned:,} history lines it had filed under its store returned to history")
        if self.unread:
            parts.append(f"{self.unread:,} of them kept at their instant and the zone they were read in (their time "
                         "cannot be read in TIMEZONE)")
        if self.handed_on:
            parts.append(f"{self.handed_on:,} lines a later upload filed kept as that upload's")
        if self.customers or self.products:
            parts.append(f"{self.customers:,} customers and {self.products:,} POS products only it created removed")
        return "; ".join(parts)


def undo_import(session: Session, import_id: str, *, actor: str, default_zone: str) -> UndoResult:
    """Undo the recorded upload ``import_id`` (module docstring) in the caller's transaction and audit it
    (``actor``: the user's e-mail). ``default_zone``: the ``TIMEZONE`` setting (history lines' zone).

    Raises:
        LookupError: no such recorded upload. ValueError: it was undone already.
        sqlalchemy.exc.OperationalError: SQLite's write lock stayed taken past the busy timeout
            (:func:`dangol_cloud.sale_locks.busy_message`).
    """
    from dangol_cloud.erasure import audit

    from dangol_cloud.sale_locks import hold_sale_keys

    hold_sale_keys(session)  # it re-keys the history it returns: never beside a running import (sale_locks)
    record = session.get(PurchaseImport, import_id)
    if record is None:
        raise LookupError(f"no recorded import {import_id!r}")
    if record.undone_at is not None:
        raise ValueError(f"import {import_id} was undone on {record.undone_at:%Y-%m-%d %H:%M} UTC")
    table = Purchase.__table__
    result = UndoResult()
    handed = session.execute(select(table.c.id, table.c.filed_import_id).where(
        table.c.import_id == import_id, table.c.filed_import_id.is_not(None))).all()
    for start in range(0, len(handed), BATCH):
        session.execute(update(table).where(table.c.id == bindparam("pid")).values(
            import_id=bindparam("to"), filed_import_id=None),
            [{"pid": pid, "to": by} for pid, by in handed[start:start + BATCH]])
    result.handed_on = len(handed)
    result.returned, result.unread = _return_to_history(session, import_id, default_zone)
    mine = table.c.import_id == import_id
    customers = set(session.scalars(select(table.c.customer_id).where(mine).distinct()))
    items = set(session.scalars(select(table.c.item_id).where(mine).distinct()))
    session.execute(delete(PickCredit).where(PickCredit.purchase_id.in_(select(table.c.id).where(mine))))
    result.lines = session.execute(delete(table).where(mine)).rowcount or 0
    result.customers = _drop_unreferenced(session, Customer, "customers", customers, record, DERIVED,
                                          Customer.source == record.customer_source)
    products = select(ProductMapping.product_id).where(ProductMapping.menu_item_id.is_(None),
                                                       ProductMapping.source == record.fmt[:16])
    result.products = _drop_unreferenced(session, CatalogueItem, "catalogue_items", items, record,
                                         DERIVED_ITEM_COLUMNS, CatalogueItem.id.in_(products))
    record.undone_at, record.undone_by, record.undone_lines = utcnow(), actor[:254], result.lines
    audit(session, actor, "import-undone", detail=f"import {record.id} ({record.fmt}, uploaded "  # files: on the record
          f"{record.finished_at:%Y-%m-%d %H:%M} UTC by {record.started_by}) into "
          f"{record.store_name or 'no store (history)'}: {result.describe()}")
    return result


def _return_to_history(session: Session, import_id: str, default_zone: str) -> tuple[int, int]:
    """Move the history lines ``import_id`` filed under its store back to no store, their wall time read in
    ``default_zone``, re-keyed; returns ``(how many, how many of them kept their instant and read_zone)``: a time
    that cannot be read in ``default_zone`` (or its zone no longer known), logged."""
    table = Purchase.__table__
    lines = session.execute(select(table.c.id, table.c.idempotency_key, table.c.store_id, table.c.customer_id,
                                   table.c.item_id, table.c.product_id, table.c.ts, table.c.quantity,
                                   table.c.amount, table.c.read_zone)
                            .where(table.c.filed_import_id == import_id).order_by(table.c.id)).all()
    if not lines:
        return 0, 0
    zone = ZoneInfo(default_zone)
    moved, rows, after, unread = {}, [], {}, 0
    for pid, stored, store, customer, item, product, ts, quantity, amount, read in lines:
        try:
            now = ts if read is None else wall_time(ts, ZoneInfo(read)).replace(tzinfo=zone).astimezone(timezone.utc)
            zone_now = None if read is None else default_zone
        except (OverflowError, ValueError, ZoneInfoNotFoundError) as exc:
            # kept as the store's instant, labelled with the zone it was read in (not one it never was read in)
            now, zone_now, unread = ts, read, unread + 1
            log.warning("undo of import %s: purchase %s (%s read in %r) cannot be read in %s (%s: %s); it returns "
                        "to history at its instant, read_zone %r kept", import_id, pid, ts, read, default_zone,
                        type(exc).__name__, exc, read)
        moved[pid] = (now, zone_now)
        fields = {"customer_id": customer, "item_id": item, "product_id": product, "quantity": quantity,
                  "amount": amount}
        content = content_of(store_id=store, ts=ts, **fields)
        if IMPORT_KEY.match(stored):
            rows.append((pid, stored, content))
            after[content] = content_of(store_id=None, ts=now, **fields)
    key = keyed(keyring_of(session.get_bind().dialect))
    moving, taken = set(moved), set()
    while True:  # new keys no other stored line holds
        keys = changed_keys(rows, after.__getitem__, key, taken)
        wanted, held = list(keys.values()), set()
        for start in range(0, len(wanted), BATCH):
            held.update(k for pid, k in session.execute(select(table.c.id, table.c.idempotency_key).where(
                table.c.idempotency_key.in_(wanted[start:start + BATCH]))) if pid not in moving)
        if not held - taken:
            break
        taken |= held
    stmt = update(table).where(table.c.id == bindparam("pid"))
    out_of_the_way = [{"pid": pid, "k": f"undo:{pid}"} for pid in keys]
    final = [{"pid": pid, "at": at, "zone": read, "k": keys.get(pid)} for pid, (at, read) in moved.items()]
    for start in range(0, len(out_of_the_way), BATCH):
        session.execute(stmt.values(idempotency_key=bindparam("k")), out_of_the_way[start:start + BATCH])
    for rekeyed in (True, False):
        chosen = [row for row in final if (row["k"] is not None) == rekeyed]
        values = dict(store_id=None, filed_import_id=None, ts=bindparam("at"), read_zone=bindparam("zone"),
                      **({"idempotency_key": bindparam("k")} if rekeyed else {}))
        for start in range(0, len(chosen), BATCH):
            session.execute(stmt.values(**values), chosen[start:start + BATCH])
    return len(moved), unread


def _drop_unreferenced(session: Session, model, table_name: str, ids: set[str], record: PurchaseImport,
                       ignored: frozenset[str], kind) -> int:
    """Delete the rows of ``model`` among ``ids`` that ``record``'s upload created (made during its run and
    ``kind``) and that no column of another table names (foreign keys to ``table_name``, and columns named
    ``customer_id`` for customers: the audit log, erasure requests); ``ignored`` tables or ``table.column``s are
    derived and go with them. Returns how many were deleted."""
    candidates = []
    id_list = sorted(ids)
    for start in range(0, len(id_list), BATCH):
        candidates += session.scalars(select(model.id).where(
            model.id.in_(id_list[start:start + BATCH]), kind,
            model.created_at >= record.started_at, model.created_at <= record.finished_at))
    if not candidates:
        return 0
    left = set(candidates)
    derived = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            names = any(fk.column.table.name == table_name for fk in column.foreign_keys) or (
                table_name == "customers" and column.name == "customer_id")
            if not names or table.name == table_name:
                continue
            if table.name in ignored or f"{table.name}.{column.name}" in ignored:
                derived.append(column)
                continue
            for start in range(0, len(candidates), BATCH):
                left -= set(session.scalars(select(column).where(column.in_(candidates[start:start + BATCH]))))
    gone = sorted(left)
    for start in range(0, len(gone), BATCH):
        chunk = gone[start:start + BATCH]
        for column in derived:
            session.execute(delete(column.table).where(column.in_(chunk)))
        session.execute(delete(model).where(model.id.in_(chunk)))
    return len(gone)
