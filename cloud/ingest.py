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
lengths of its ids, name and category; and its amount against the decimals of its store's currency (the
``currency`` argument for a row without a store): 4500.5 in a won store is a row error naming the amount and the
currency (:func:`~dangol_cloud.sale_rules.amount_digits_error`). A row outside them is a row error, never an
exception that would fail the whole import (PostgreSQL refuses an over-long value; SQLite would store it).

A row's store is the store whose id or code (``stores.ref``, matched exactly as the Stores page keeps codes unique)
its ``store_ref`` names. A plain CSV's ``store`` value naming no store is a row error naming the value and the code
it may have meant, never filed under the upload's store. Only a data set's own store numbers (Complete Journey's
``store_id``, :attr:`~dangol_cloud.importers.PurchaseRow.store_is_code` False) that no store has as its code go
under the upload's store (as history without one), counted in :attr:`ImportReport.unmatched_store_rows`.

Imports take turns: each first takes the import lock (:func:`dangol_cloud.sale_locks.queue_import`) and holds it
until the caller's transaction ends, so a second import (the CLI beside the dashboard, another server) waits for the
first to commit — told through ``waiting`` — rather than deadlocking with it over the customers, items and lines
both insert. The customers and catalogue items a file names for the first time are created by
:mod:`dangol_cloud.import_resolver` before the lines naming them; one that a till (POS API) or the Menu page stored
meanwhile is kept and named instead (no unique violation failing the whole import), and each line's key is computed
from the stored ids. A staff upload's line naming a customer another store's till created meanwhile is a row error
like any other customer outside its scope.

A staff upload is limited to the user's stores (``allowed_stores``) and their customers (``customers_in_scope``):
a row naming a known store outside them, or an existing customer who is not one of their stores' customers (by
loyalty number or Dangol id), is a row error (counted and reported, nothing written for it), so an upload cannot
bring another store's customer into the user's scope. Customers new to the chain are still created.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from dangol_cloud.importers import PurchaseRow, RowError
from dangol_cloud.import_match import importing_stores as _importing_stores
from dangol_cloud.import_match import match_other_copies as _match_other_copies
from dangol_cloud.import_match import probe_keys
from dangol_cloud.db import dialect_insert
from dangol_cloud.import_resolver import Resolver
from dangol_cloud.models import Customer, Purchase
from dangol_cloud.purchase_keys import purchase_key
from dangol_cloud.sale_locks import queue_import
from dangol_cloud.sale_zones import Retimed, import_zones
from dangol_cloud.sale_rules import CATEGORY_MAX, MAX_LINE_AMOUNT, REF_MAX, amount_digits_error, sale_time_error
from dangol_cloud.store_prices import price_imported_items, store_currencies

__all__ = ["ImportReport", "import_rows", "purchase_key"]

#: Most distinct unmatched store numbers an :class:`ImportReport` keeps (to name a few; the count is exact).
SHOWN_STORE_CODES = 3


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
        unmatched_store_rows: rows stored by this import (not those already present) naming a data set's own
            store number that is no store's code (Complete Journey's ``store_id``), filed under the upload's store
            (as history without one): :meth:`store_note`.
        unmatched_store_codes: the first :data:`SHOWN_STORE_CODES` distinct such numbers.
        unmatched_as_history: the import had no store: those rows are history.
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
    unmatched_store_rows: int = 0
    unmatched_store_codes: list[str] = field(default_factory=list)
    unmatched_as_history: bool = False
    seconds: float = 0.0
    _more_store_codes: bool = field(default=False, repr=False)  # more distinct numbers stored than are named

    def count_unmatched_store(self, ref: str) -> None:
        """Count one stored row naming the data set's store number ``ref`` (no store's code)."""
        self.unmatched_store_rows += 1
        if ref in self.unmatched_store_codes:
            return
        if len(self.unmatched_store_codes) < SHOWN_STORE_CODES:
            self.unmatched_store_codes.append(ref)
        else:
            self._more_store_codes = True

    @property
    def valid(self) -> int:
        """Rows that passed validation."""
        return self.rows - len(self.errors)

    def store_note(self) -> str | None:
        """A sentence for the owner about :attr:`unmatched_store_rows` ("12 rows name a store number that is no
        store's code here ('380', '32004', …): filed under the upload's store"), or None when there are none."""
        if not self.unmatched_store_rows:
            return None
        n = self.unmatched_store_rows
        codes = ", ".join(repr(c) for c in self.unmatched_store_codes)
        if self.unmatched_store_rows > len(self.unmatched_store_codes) and self._more_store_codes:
            codes += ", …"
        where = "imported as history (no store)" if self.unmatched_as_history else "filed under the upload's store"
        return f"{n:,} row{'s name' if n != 1 else ' names'} a store number no store has as its code ({codes}): {where}"


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


def _out_of_scope(row: PurchaseRow) -> str:
    return f"customer {row.customer_ref!r} is not one of your stores' customers"


def _remapped(session: Session, resolver: Resolver, pending: list[tuple[PurchaseRow, dict]], remap: dict[str, str],
              in_scope: Collection[str] | None, allowed_stores: frozenset[str] | None,
              report: ImportReport) -> Iterable[tuple[PurchaseRow, dict]]:
    """``pending`` naming the ids stored meanwhile by someone else (``remap``: :meth:`Resolver.flush`); a staff
    upload's row naming such a customer who is not (now) one of its stores' customers becomes a row error."""
    if not remap:
        yield from pending
        return
    theirs = {row["customer_id"] for _row, row in pending if row["customer_id"] in remap}
    allowed: set[str] = set()
    if in_scope is not None and theirs:  # e.g. another store's till sold to the loyalty number meanwhile
        from dangol_cloud.web.scope import store_customers

        stored = {remap[c] for c in theirs}
        allowed = set(session.scalars(select(Customer.id).where(Customer.id.in_(stored),
                                                                store_customers(session, allowed_stores))))
        resolver.own_customers |= allowed  # its later rows too
    for row, values in pending:
        values["item_id"] = remap.get(values["item_id"], values["item_id"])
        if values["customer_id"] in remap:
            values["customer_id"] = remap[values["customer_id"]]
            if in_scope is not None and values["customer_id"] not in allowed:
                report.errors.append(RowError(row.line, _out_of_scope(row), _raw(row)))
                continue
        yield row, values


def import_rows(session: Session, rows: Iterable[PurchaseRow | RowError], *, source: str, key_prefix: str,
                tz: str = "UTC", batch_size: int = 5000, customer_status: str = "active",
                customer_source: str = "import", store_id: str | None = None,
                allowed_stores: frozenset[str] | None = None,
                customers_in_scope: Collection[str] | None = None, import_id: str | None = None,
                currency: str = "EUR", waiting: Callable[[bool], None] | None = None) -> ImportReport:
    """Insert valid rows as purchases in batches of ``batch_size``; collect row errors. Holds the import lock (first:
    waits for another import to commit) and the sale-keys lock shared until the caller's transaction ends
    (:mod:`dangol_cloud.sale_locks`: no other import writes, no zone change commits meanwhile).

    Args:
        session: an open session; the caller commits (or rolls back everything on error).
        rows: an iterator from :func:`dangol_cloud.importers.parse_purchases` (or equivalent).
        source: label for the report and the purchases' ``source`` column (e.g. ``"ta-feng"``, ``"csv"``).
        key_prefix: idempotency key prefix (the format name: the same file imported twice is a no-op).
        tz: IANA time zone in which naive row timestamps are local time (stored as UTC); rows of a store with
            its own zone (:func:`dangol_cloud.store_zones.store_zones`) are read in that zone. Lines imported
            earlier whose naive time was read in another zone are moved first (the module docstring).
        customer_status: status of customers created for unknown refs.
        store_id: the store of rows without a store ref, and of rows naming a data set's store number no store has
            as its code (Complete Journey); None: those are history (no store).
        currency: the ``CURRENCY`` setting: the currency of store-less lines (and of stores without their own; a
            line's amount may have no more decimals than its currency uses) and, unless the stores share another,
            of the catalogue prices the items this import creates get (:func:`~dangol_cloud.store_prices.
            price_imported_items`).
        allowed_stores: the store ids rows may name (a staff upload: a row naming a known store outside them is
            a row error, nothing is written for it); None: every store (owners, the CLI).
        customers_in_scope: with ``allowed_stores``, the ids of the customers of those stores
            (:func:`dangol_cloud.web.scope.store_customer_ids`): a row naming any other existing customer is a row
            error ("customer 'REF' is not one of your stores' customers"), nothing is written for it; customers
            the import creates, or a till of those stores created meanwhile, are in scope. Ignored without
            ``allowed_stores``.
        import_id: recorded on each line written (``purchases.import_id``) and on the store-less lines it files
            (``filed_import_id``), for :mod:`dangol_cloud.import_undo`; None (the CLI, POS): not recorded.
        waiting: called with True when the import starts waiting for another import to commit (PostgreSQL; it is
            logged too), with False once it goes on (:func:`~dangol_cloud.sale_locks.queue_import`); no row is read
            meanwhile.

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
    queue_import(session, waiting)  # before anything is read or written: the other import's rows are read as stored
    started = time.monotonic()
    zones, retimed = import_zones(session, tz)
    report = ImportReport(source=source, retimed=retimed, unmatched_as_history=store_id is None)
    resolver = Resolver(session, create_customer_status=customer_status, customer_source=customer_source,
                        product_source=source)
    resolver.load()
    ring = resolver.ring
    currencies = {sid: (code, name) for sid, name, code in store_currencies(session, currency)}
    currencies[None] = (currency, "the dashboard's default currency")
    stmt = dialect_insert(session, Purchase)
    if hasattr(stmt, "on_conflict_do_nothing"):
        stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"])
    # lines counted as they are stored (not as a count before and after: a till's sale meanwhile is none of them)
    stmt = stmt.returning(Purchase.idempotency_key)

    pending: list[tuple[PurchaseRow, dict]] = []  # the batch's rows and their content, keyed once ids are stored
    importing_stores: list[str] | None = None  # stores holding imported purchases (read at the first store-less row)
    occurrences: dict[str, int] = {}  # first-occurrence key -> identical rows seen so far in this file

    unmatched: dict[str, str] = {}  # the batch's rows naming a data set's store number: key -> that number

    def write() -> None:
        nonlocal importing_stores
        remap = resolver.flush()  # customers / items someone else stored meanwhile: their ids
        batch: list[dict] = []
        probes: list[list[str]] = []  # per line of the batch: its keys under the other filings
        for row, values in _remapped(session, resolver, pending, remap, in_scope, allowed_stores, report):
            first = purchase_key(ring, key_prefix, **values)
            seen = occurrences.get(first, 0)
            occurrences[first] = seen + 1
            line = {**values, "source": source[:16], "idempotency_key":
                    first if seen == 0 else purchase_key(ring, key_prefix, **values, occurrence=seen)}
            if retimed.recorded:  # the zone a naive time was read in (not on a schema before 0013)
                line["read_zone"] = None if row.ts.tzinfo else zones.get(values["store_id"], zones[None]).key
            if import_id is not None:  # the dashboard's import (revision 0016): its undo removes the line
                line["import_id"] = import_id
            batch.append(line)
            if row.store_ref and not row.store_is_code and resolver.store(row.store_ref) is None:
                unmatched[line["idempotency_key"]] = row.store_ref
            probes.append(probe_keys(ring, key_prefix, values, seen, row.ts, zones,
                                     [None] if values["store_id"] is not None else importing_stores, purchase_key))
        pending.clear()
        if batch:
            kept = len(batch)
            report.filed += _match_other_copies(session, batch, probes)
            if importing_stores and any(not row["store_id"] for row in batch) and len(batch) == kept:
                importing_stores = []  # a history file none of whose first rows a store holds: stop looking
            if batch:
                stored = set(session.scalars(stmt, batch).all())
                report.inserted += len(stored)
                for line in batch:  # a data set's store numbers: only the rows stored now (not those present)
                    ref = unmatched.get(line["idempotency_key"])
                    if ref is not None and line["idempotency_key"] in stored:
                        report.count_unmatched_store(ref)
            unmatched.clear()

    for row in rows:
        report.rows += 1
        if isinstance(row, RowError):
            report.errors.append(row)
            continue
        store = resolver.store(row.store_ref) if row.store_ref else None
        if store is None and row.store_ref and row.store_is_code:  # a plain CSV's store code naming no store
            report.errors.append(RowError(row.line, resolver.unknown_store(row.store_ref, allowed_stores), _raw(row)))
            continue
        if store is None:
            store = store_id
            # a row naming a data set's own store number (Complete Journey): counted in write() once stored
        elif allowed_stores is not None and store not in allowed_stores:
            report.errors.append(RowError(row.line, f"store {row.store_ref!r} is not one of your stores",
                                          _raw(row)))
            continue
        code, whose = currencies.get(store, currencies[None])
        if row.amount is not None and (problem := amount_digits_error(row.amount, code)) is not None:
            whose = whose if store is None else f"the currency of {whose}"
            report.errors.append(RowError(row.line, f"amount {problem}, {whose}; not imported", _raw(row)))
            continue
        ts, refusal = _check_row(row, zones.get(store, zones[None]))
        if refusal is not None:  # checked before the customer and item are made: nothing is written for it
            report.errors.append(RowError(row.line, refusal, _raw(row)))
            continue
        erased = resolver.erasure(row.customer_ref, ts)
        if erased is not None:  # the shop's export still names an erased customer: they are not brought back
            report.errors.append(RowError(row.line, erased.import_error(row.customer_ref), _raw(row)))
            continue
        customer = resolver.customer(row.customer_ref, in_scope)
        if customer is None:
            report.errors.append(RowError(row.line, _out_of_scope(row), _raw(row)))
            continue
        pending.append((row, {"customer_id": customer, "item_id": resolver.item(row, store),
                              "product_id": row.product_id, "quantity": row.quantity, "amount": row.amount,
                              "ts": ts, "store_id": store}))
        if store is None and importing_stores is None:
            importing_stores = _importing_stores(session)
        if len(pending) >= batch_size:
            write()
    write()
    # Imported items get the average unit price seen in the data, each store's in its own currency (none beyond what
    # the item form takes): the catalogue price from the lines in the catalogue's currency, a store price from a store
    # selling in another (dangol_cloud.store_prices.price_imported_items)
    price_imported_items(session, {iid: {sid: (a, q) for sid, (a, q) in by_store.items()}
                                   for iid, by_store in resolver.created_items.items()}, currency, MAX_LINE_AMOUNT)
    report.duplicates = report.valid - report.inserted
    report.items_created = len(resolver.created_items)
    report.customers_created = resolver.created_customer_count
    report.errors.sort(key=lambda e: e.line)  # a row refused at a batch's end (_remapped) among the others
    report.seconds = time.monotonic() - started
    return report

