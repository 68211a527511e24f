"""Store purchase rows (from importers, CSV uploads and the POS API) in the database.

Rows become ``purchases``; customers and catalogue items that do not exist yet are created (customers
by ``external_ref``, found through its keyed hash ``external_ref_hash`` since the ref itself is encrypted;
items by ``ref`` or name; a new item is a POS *product*, not on the menu until the owner maps it —
:mod:`dangol_cloud.menu_mapping`). Every purchase carries an idempotency key derived from its
content, so importing the same file twice never doubles a purchase. The caller owns the transaction:
on any exception nothing of the import is committed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timezone
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dangol_cloud.importers import PurchaseRow, RowError
from dangol_cloud.crypto import keyring_of
from dangol_cloud.menu_mapping import register_products
from dangol_cloud.models import CatalogueItem, Customer, Purchase, Store, new_id, utcnow

__all__ = ["ImportReport", "import_rows", "purchase_key"]


@dataclass
class ImportReport:
    """Outcome of one import.

    Attributes:
        source: what was imported (file name or "pos").
        rows: data rows read (valid + invalid).
        inserted: purchases newly stored.
        duplicates: valid rows already stored earlier (same idempotency key) and skipped.
        errors: invalid rows, with line numbers, skipped.
        customers_created / items_created: new customers / catalogue items made for unknown refs.
        seconds: wall time.
    """

    source: str
    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    errors: list[RowError] = field(default_factory=list)
    customers_created: int = 0
    items_created: int = 0
    seconds: float = 0.0

    @property
    def valid(self) -> int:
        """Rows that passed validation."""
        return self.rows - len(self.errors)


def purchase_key(source: str, row: PurchaseRow) -> str:
    """Idempotency key of an imported row: ``source:sha1(line, customer, item, product, ts, qty, amount)``."""
    text = "|".join(str(v) for v in (row.line, row.customer_ref, row.item_ref, row.product_id, row.ts.isoformat(),
                                      row.quantity, row.amount))
    return f"{source}:{hashlib.sha1(text.encode('utf-8')).hexdigest()}"


def _insert(session: Session, table):
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    return insert(table)


class _Resolver:
    """Caches ref → id maps for customers, items and stores; collects the ones to create."""

    def __init__(self, session: Session, *, create_customer_status: str, customer_source: str) -> None:
        self.session = session
        self.customers: dict[str, str] = {}  # customer id or external-ref hash -> id
        self.ring = keyring_of(session.get_bind().dialect)
        self.items: dict[str, str] = {}
        self.item_names: dict[str, str] = {}
        self.stores: dict[str, str] = {}
        self.new_customers: list[dict] = []
        self.new_items: list[dict] = []
        self.created_items: dict[str, list[float]] = {}  # item id -> [amount sum, quantity sum]
        self.created_customer_count = 0
        self.status = create_customer_status
        self.source = customer_source
        self.product_source = customer_source

    def load(self) -> None:
        s = self.session
        for cid, ref_hash in s.execute(select(Customer.id, Customer.external_ref_hash)):
            self.customers[cid] = cid
            if ref_hash is not None:
                self.customers.setdefault(ref_hash, cid)
        for iid, ref, name in s.execute(select(CatalogueItem.id, CatalogueItem.ref, CatalogueItem.name)):
            self.items[iid] = iid
            self.items.setdefault(ref, iid)
            self.item_names.setdefault(name.casefold(), iid)
        for sid, ref in s.execute(select(Store.id, Store.ref)):
            self.stores[sid] = sid
            if ref:
                self.stores.setdefault(ref, sid)

    def customer(self, ref: str) -> str:
        cid = self.customers.get(ref)  # a Dangol customer id used as the ref
        if cid is None:
            ref_hash = self.ring.lookup_hash(ref)
            cid = self.customers.get(ref_hash)
            if cid is None:
                cid = self.customers[ref_hash] = new_id()
                self.created_customer_count += 1
                self.new_customers.append({"id": cid, "external_ref": ref, "external_ref_hash": ref_hash,
                                           "status": self.status, "source": self.source, "created_at": utcnow()})
        return cid

    def item(self, row: PurchaseRow) -> str:
        iid = self.items.get(row.item_ref) or self.item_names.get(row.item_ref.casefold())
        if iid is None:
            iid = self.items[row.item_ref] = new_id()
            now = utcnow()
            self.new_items.append({"id": iid, "ref": row.item_ref, "name": row.item_ref, "category": row.category,
                                   "description": "", "tags": [], "available": True, "retired": False,
                                   "created_at": now, "updated_at": now})
            self.created_items[iid] = [0.0, 0.0]
        if iid in self.created_items and row.amount is not None and row.quantity > 0:
            acc = self.created_items[iid]
            acc[0] += row.amount
            acc[1] += row.quantity
        return iid

    def flush(self) -> None:
        if self.new_customers:
            self.session.execute(insert(Customer), self.new_customers)
            self.new_customers = []
        if self.new_items:
            self.session.execute(insert(CatalogueItem), self.new_items)
            # imported items are POS products, not menu items: the owner maps them (menu_mapping)
            register_products(self.session, [i["id"] for i in self.new_items], source=self.product_source)
            self.new_items = []


def import_rows(session: Session, rows: Iterable[PurchaseRow | RowError], *, source: str, key_prefix: str,
                tz: str = "UTC", batch_size: int = 5000, customer_status: str = "active",
                customer_source: str = "import", store_id: str | None = None) -> ImportReport:
    """Insert valid rows as purchases in batches of ``batch_size``; collect row errors.

    Args:
        session: an open session; the caller commits (or rolls back everything on error).
        rows: an iterator from :func:`dangol_cloud.importers.parse_purchases` (or equivalent).
        source: label for the report and the purchases' ``source`` column (e.g. ``"ta-feng"``, ``"csv"``).
        key_prefix: idempotency key prefix (the format name: the same file imported twice is a no-op).
        tz: IANA time zone in which naive row timestamps are local time (stored as UTC).
        customer_status: status of customers created for unknown refs.
        store_id: default store for rows without a (known) store ref.

    Returns:
        ImportReport with counts and row errors (line numbers, messages).
    """
    started = time.monotonic()
    zone = ZoneInfo(tz)
    report = ImportReport(source=source)
    resolver = _Resolver(session, create_customer_status=customer_status, customer_source=customer_source)
    resolver.product_source = source
    resolver.load()
    before = session.scalar(select(func.count()).select_from(Purchase))
    batch: list[dict] = []
    stmt = _insert(session, Purchase)
    if hasattr(stmt, "on_conflict_do_nothing"):
        stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"])

    def write() -> None:
        resolver.flush()
        if batch:
            session.execute(stmt, batch)
            batch.clear()

    seen_keys: set[str] = set()
    for row in rows:
        report.rows += 1
        if isinstance(row, RowError):
            report.errors.append(row)
            continue
        key = purchase_key(key_prefix, row)
        if key in seen_keys:
            continue
        seen_keys.add(key)
        ts = row.ts if row.ts.tzinfo else row.ts.replace(tzinfo=zone)
        batch.append({
            "customer_id": resolver.customer(row.customer_ref),
            "item_id": resolver.item(row),
            "product_id": row.product_id,
            "quantity": row.quantity,
            "amount": row.amount,
            "ts": ts.astimezone(timezone.utc),
            "store_id": resolver.stores.get(row.store_ref or "", store_id),
            "source": source[:16],
            "idempotency_key": key,
        })
        if len(batch) >= batch_size:
            write()
    write()
    # Imported items get the average unit price seen in the data.
    for iid, (amount, quantity) in resolver.created_items.items():
        if quantity > 0:
            session.execute(update(CatalogueItem).where(CatalogueItem.id == iid)
                            .values(price=round(amount / quantity, 2)))
    report.inserted = session.scalar(select(func.count()).select_from(Purchase)) - before
    report.duplicates = report.valid - report.inserted
    report.items_created = len(resolver.created_items)
    report.customers_created = resolver.created_customer_count
    report.seconds = time.monotonic() - started
    return report

