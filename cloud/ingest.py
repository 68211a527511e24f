"""Store purchase rows (from importers, CSV uploads and the POS API) in the database.

Rows become ``purchases``; customers and catalogue items that do not exist yet are created (customers
by ``external_ref``, found through its keyed hash ``external_ref_hash`` since the ref itself is encrypted;
items by ``ref`` or name; a new item is a POS *product*, not on the menu until the owner maps it —
:mod:`dangol_cloud.menu_mapping`). The caller owns the transaction: on any exception nothing of the import
is committed.

Every imported purchase carries an idempotency key derived from its *content* (:func:`purchase_key`: store,
customer, item, product, UTC time, quantity, amount) and its *occurrence* among identical rows of the same
file (0 for the first, 1 for the second, …), never its line number. So importing the same file twice, or a
newer export that contains the earlier sales at other line numbers, stores each sale once, while a file that
genuinely lists the same line twice (two identical sale lines) keeps both. The key is an HMAC under a sub-key of
the data key (:mod:`dangol_cloud.purchase_keys`), so the clear key gives away neither amount nor product id.
Purchases imported before revision 0008 carried line-number keys, and until 0011 unkeyed SHA-1 keys; those
migrations re-key them (see their docstrings), as ``rotate-key`` does under a new key.

A row naming an erased customer — by loyalty id, kept by the erasure, or by Dangol id — is a row error
("customer 'REF' erased on DATE; not imported"; after a retention erasure only its sales from before it), so an
unchanged cumulative export uploaded again never brings them back (:mod:`dangol_cloud.erased_refs`).

The store is part of the key (the same line in two stores' files is two sales), but one sale is never stored both
as history (no store) and under a store: an upload into a store *files* the store-less purchases it repeats under
that store (:attr:`ImportReport.filed`), and an upload as history skips the sales a store already holds (looked up
under each of at most :data:`MAX_PROBED_STORES` stores holding imports, past the first batch only when that found
some). A sale filed under a store is never moved to another store. The two copies are compared under the keys each
has, its naive time read in its own filing's zone (a store's, else ``TIMEZONE``: :mod:`dangol_cloud.import_match`).
Each line records that zone (``read_zone``; None for a time given with its offset); an import first moves the lines
read in another zone than their store's now to the new hours, re-keyed (:mod:`dangol_cloud.sale_zones`), so the same
export imported again after ``TIMEZONE`` changed adds nothing.

Every row is checked against the bounds of :mod:`dangol_cloud.sale_rules` before anything is created for it (the
importers check them too; rows may come from elsewhere): its time in UTC once its store's zone is applied (a naive
1990-01-01 05:00 in Taipei is 1989 in UTC; a year-1 time with an offset cannot be expressed in UTC) and the
lengths of its ids, name and category. A row outside them is a row error, never an exception that would fail the
whole import (PostgreSQL refuses an over-long value; SQLite would store it).

A staff upload is limited to the user's stores (``allowed_stores``) and their customers (``customers_in_scope``):
a row naming a known store outside them, or an existing customer who is not one of their stores' customers (by
loyalty number or Dangol id), is a row error (counted and reported, nothing written for it), so an upload cannot
bring another store's customer into the user's scope. Customers new to the chain are still created.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dangol_cloud.importers import PurchaseRow, RowError
from dangol_cloud.crypto import keyring_of
from dangol_cloud.erased_refs import Erased, ErasedRefs
from dangol_cloud.import_match import importing_stores as _importing_stores
from dangol_cloud.import_match import match_other_copies as _match_other_copies
from dangol_cloud.import_match import probe_keys
from dangol_cloud.menu_mapping import register_products
from dangol_cloud.models import CatalogueItem, Customer, Purchase, Store, new_id, utcnow
from dangol_cloud.purchase_keys import purchase_key
from dangol_cloud.sale_zones import Retimed, import_zones
from dangol_cloud.sale_rules import CATEGORY_MAX, MAX_LINE_AMOUNT, REF_MAX, sale_time_error
from dangol_cloud.store_prices import price_imported_items

__all__ = ["ImportReport", "import_rows", "purchase_key"]


@dataclass
class ImportReport:
    """Outcome of one import.

    Attributes:
        source: what was imported (file name or "pos").
        rows: data rows read (valid + invalid).
        inserted: purchases newly stored.
        duplicates: valid rows already stored earlier (same idempotency key) and skipped.
        filed: of those, store-less purchases (history) this import filed under its store.
        errors: invalid rows, with line numbers, skipped.
        customers_created / items_created: new customers / catalogue items made for unknown refs.
        retimed: earlier imports' lines moved to the hours of their store's zone now (``describe()`` says how).
        seconds: wall time.
    """

    source: str
    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    filed: int = 0
    errors: list[RowError] = field(default_factory=list)
    customers_created: int = 0
    items_created: int = 0
    retimed: Retimed = field(default_factory=Retimed)
    seconds: float = 0.0

    @property
    def valid(self) -> int:
        """Rows that passed validation."""
        return self.rows - len(self.errors)


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
        self.hashes: dict[str, str] = {}  # external ref -> its keyed hash (computed once per import)
        self.erased = ErasedRefs(session)
        self.items: dict[str, str] = {}
        self.item_names: dict[str, str] = {}
        self.stores: dict[str, str] = {}
        self.new_customers: list[dict] = []
        self.new_items: list[dict] = []
        # item id -> {store id or None: [amount sum, quantity sum]}: each store's sales in its own currency
        self.created_items: dict[str, dict[str | None, list[float]]] = {}
        self.created_customer_count = 0
        self.created_customers: set[str] = set()
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

    def customer(self, ref: str, in_scope: Collection[str] | None = None) -> str | None:
        """The customer id of ``ref`` (a Dangol id or an external ref), created for an unknown external ref;
        None (nothing created) for an existing customer outside ``in_scope`` (None: every customer)."""
        cid = self.customers.get(ref)  # a Dangol customer id used as the ref
        if cid is None:
            ref_hash = self.ref_hash(ref)
            cid = self.customers.get(ref_hash)
            if cid is None:
                cid = self.customers[ref_hash] = new_id()
                self.created_customer_count += 1
                self.created_customers.add(cid)
                self.new_customers.append({"id": cid, "external_ref": ref, "external_ref_hash": ref_hash,
                                           "status": self.status, "source": self.source, "created_at": utcnow()})
                return cid
        if in_scope is not None and cid not in in_scope and cid not in self.created_customers:
            return None
        return cid

    def ref_hash(self, ref: str) -> str:
        """The keyed lookup hash of the external ref ``ref``."""
        found = self.hashes.get(ref)
        if found is None:
            found = self.hashes[ref] = self.ring.lookup_hash(ref)
        return found

    def erasure(self, ref: str, ts: datetime) -> Erased | None:
        """The erasure keeping a sale at ``ts`` naming ``ref`` out of the import (:mod:`dangol_cloud.erased_refs`),
        else None."""
        if not self.erased:
            return None
        return self.erased.find(ref, self.ref_hash(ref), ts, existing_id=self.customers.get(ref) == ref)

    def item(self, row: PurchaseRow, store_id: str | None = None) -> str:
        iid = self.items.get(row.item_ref) or self.item_names.get(row.item_ref.casefold())
        if iid is None:
            iid = self.items[row.item_ref] = new_id()
            now = utcnow()
            self.new_items.append({"id": iid, "ref": row.item_ref, "name": row.item_ref, "category": row.category,
                                   "description": "", "tags": [], "available": True, "retired": False,
                                   "created_at": now, "updated_at": now})
            self.created_items[iid] = {}
        if iid in self.created_items and row.amount is not None and row.quantity > 0:
            acc = self.created_items[iid].setdefault(store_id, [0.0, 0.0])
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


def _raw(row: PurchaseRow) -> str:
    """A refused row as text for the report (the parsed fields; the file's own line is not kept)."""
    return ",".join("" if v is None else str(v) for v in (row.customer_ref, row.item_ref, row.quantity,
                                                         row.ts.isoformat(), row.amount, row.store_ref))


def _check_row(row: PurchaseRow, zone: ZoneInfo) -> tuple[datetime | None, str | None]:
    """``(the row's time in UTC, None)``, or ``(None, why the row is refused)``: a time outside the sale-time
    bounds once read in ``zone`` (naive times), or a field longer than its column."""
    for label, value, limit in (("customer", row.customer_ref, REF_MAX), ("item", row.item_ref, REF_MAX),
                                ("product_id", row.product_id, REF_MAX), ("store", row.store_ref, REF_MAX),
                                ("category", row.category, CATEGORY_MAX)):
        if value is not None and len(value) > limit:
            return None, f"{label} is longer than {limit} characters ({len(value)}): {value[:24]!r}…"
    written = row.ts.isoformat(sep=" ")
    try:
        ts = (row.ts if row.ts.tzinfo else row.ts.replace(tzinfo=zone)).astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None, f"sale time {written!r} cannot be expressed in UTC"
    problem = sale_time_error(ts)
    if problem:
        return None, f"sale time {written!r}{'' if row.ts.tzinfo else f' ({zone.key})'} {problem}"
    return ts, None


def import_rows(session: Session, rows: Iterable[PurchaseRow | RowError], *, source: str, key_prefix: str,
                tz: str = "UTC", batch_size: int = 5000, customer_status: str = "active",
                customer_source: str = "import", store_id: str | None = None,
                allowed_stores: frozenset[str] | None = None,
                customers_in_scope: Collection[str] | None = None, import_id: str | None = None,
                currency: str = "EUR") -> ImportReport:
    """Insert valid rows as purchases in batches of ``batch_size``; collect row errors. Holds the sale-keys lock
    shared until the caller's transaction ends (:mod:`dangol_cloud.sale_locks`: no zone change commits meanwhile).

    Args:
        session: an open session; the caller commits (or rolls back everything on error).
        rows: an iterator from :func:`dangol_cloud.importers.parse_purchases` (or equivalent).
        source: label for the report and the purchases' ``source`` column (e.g. ``"ta-feng"``, ``"csv"``).
        key_prefix: idempotency key prefix (the format name: the same file imported twice is a no-op).
        tz: IANA time zone in which naive row timestamps are local time (stored as UTC); rows of a store with
            its own zone (:func:`dangol_cloud.store_zones.store_zones`) are read in that zone. Lines imported
            earlier whose naive time was read in another zone are moved first (the module docstring).
        customer_status: status of customers created for unknown refs.
        store_id: default store for rows without a (known) store ref.
        currency: the ``CURRENCY`` setting: the currency of store-less lines and, unless the stores share another,
            of the catalogue prices the items this import creates get (:func:`~dangol_cloud.store_prices.
            price_imported_items`).
        allowed_stores: the store ids rows may name (a staff upload: a row naming a known store outside them is
            a row error, nothing is written for it); None: every store (owners, the CLI).
        customers_in_scope: with ``allowed_stores``, the ids of the customers of those stores
            (:func:`dangol_cloud.web.scope.store_customer_ids`): a row naming any other existing customer is a row
            error ("customer 'REF' is not one of your stores' customers"), nothing is written for it; customers
            the import creates are in scope. Ignored without ``allowed_stores``.
        import_id: recorded on each line written (``purchases.import_id``) and on the store-less lines it files
            (``filed_import_id``), for :mod:`dangol_cloud.import_undo`; None (the CLI, POS): not recorded.

    Returns:
        ImportReport with counts and row errors (line numbers, messages).

    Raises:
        ValueError: ``store_id`` is not one of ``allowed_stores``; ``allowed_stores`` without
            ``customers_in_scope``; a store's own zone is unknown.
        sqlalchemy.exc.OperationalError: SQLite stayed busy past its timeout (``sale_locks.busy_message``).
    """
    if allowed_stores is not None and store_id is not None and store_id not in allowed_stores:
        raise ValueError(f"store {store_id!r} is outside the import's allowed stores")
    if allowed_stores is not None and customers_in_scope is None:
        raise ValueError("an import limited to allowed_stores needs customers_in_scope (the stores' customers)")
    in_scope = None if allowed_stores is None else customers_in_scope
    started = time.monotonic()
    zones, retimed = import_zones(session, tz)
    report = ImportReport(source=source, retimed=retimed)
    resolver = _Resolver(session, create_customer_status=customer_status, customer_source=customer_source)
    resolver.product_source = source
    resolver.load()
    ring = resolver.ring
    before = session.scalar(select(func.count()).select_from(Purchase))
    batch: list[dict] = []
    stmt = _insert(session, Purchase)
    if hasattr(stmt, "on_conflict_do_nothing"):
        stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"])

    probes: list[list[str]] = []  # per row of the batch: its keys under the other filings (_match_other_copies)
    importing_stores: list[str] | None = None  # stores holding imported purchases (read at the first store-less row)

    def write() -> None:
        nonlocal importing_stores
        resolver.flush()
        if batch:
            kept = len(batch)
            report.filed += _match_other_copies(session, batch, probes)
            if importing_stores and any(not row["store_id"] for row in batch) and len(batch) == kept:
                importing_stores = []  # a history file none of whose first rows a store holds: stop looking
            if batch:
                session.execute(stmt, batch)
            batch.clear()
            probes.clear()

    occurrences: dict[str, int] = {}  # first-occurrence key -> identical rows seen so far in this file
    for row in rows:
        report.rows += 1
        if isinstance(row, RowError):
            report.errors.append(row)
            continue
        store = resolver.stores.get(row.store_ref) if row.store_ref else None
        if store is None:
            store = store_id
        elif allowed_stores is not None and store not in allowed_stores:
            report.errors.append(RowError(row.line, f"store {row.store_ref!r} is not one of your stores",
                                          _raw(row)))
            continue
        ts, refusal = _check_row(row, zone := zones.get(store, zones[None]))
        if refusal is not None:  # checked before the customer and item are made: nothing is written for it
            report.errors.append(RowError(row.line, refusal, _raw(row)))
            continue
        erased = resolver.erasure(row.customer_ref, ts)
        if erased is not None:  # the shop's export still names an erased customer: they are not brought back
            report.errors.append(RowError(row.line, erased.import_error(row.customer_ref), _raw(row)))
            continue
        customer = resolver.customer(row.customer_ref, in_scope)
        if customer is None:
            report.errors.append(RowError(row.line, f"customer {row.customer_ref!r} is not one of your stores' "
                                                    "customers", _raw(row)))
            continue
        values = {
            "customer_id": customer,
            "item_id": resolver.item(row, store),
            "product_id": row.product_id,
            "quantity": row.quantity,
            "amount": row.amount,
            "ts": ts,
            "store_id": store,
        }
        first = purchase_key(ring, key_prefix, **values)
        seen = occurrences.get(first, 0)
        occurrences[first] = seen + 1
        line = {**values, "source": source[:16], "idempotency_key":
                first if seen == 0 else purchase_key(ring, key_prefix, **values, occurrence=seen)}
        if retimed.recorded:  # the zone a naive time was read in (not on a schema before 0013)
            line["read_zone"] = None if row.ts.tzinfo else zone.key
        if import_id is not None:  # the dashboard's import (revision 0016): its undo removes the line
            line["import_id"] = import_id
        batch.append(line)
        if store is None and importing_stores is None:
            importing_stores = _importing_stores(session)
        probes.append(probe_keys(ring, key_prefix, values, seen, row.ts, zones,
                                 [None] if store is not None else importing_stores, purchase_key))
        if len(batch) >= batch_size:
            write()
    write()
    # Imported items get the average unit price seen in the data, each store's in its own currency (none beyond what
    # the item form takes): the catalogue price from the lines in the catalogue's currency, a store price from a store
    # selling in another (dangol_cloud.store_prices.price_imported_items)
    price_imported_items(session, {iid: {sid: (a, q) for sid, (a, q) in by_store.items()}
                                   for iid, by_store in resolver.created_items.items()}, currency, MAX_LINE_AMOUNT)
    report.inserted = session.scalar(select(func.count()).select_from(Purchase)) - before
    report.duplicates = report.valid - report.inserted
    report.items_created = len(resolver.created_items)
    report.customers_created = resolver.created_customer_count
    report.seconds = time.monotonic() - started
    return report

