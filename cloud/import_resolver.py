"""The ids an import's rows name: customers, catalogue items and stores (for :func:`dangol_cloud.ingest.import_rows`).

:class:`Resolver` reads every customer, item and store once, answers each row from that cache, and makes up the id
of a customer or item the data names for the first time; :meth:`Resolver.flush` stores those before the rows that
name them. The till (the POS API) or the Menu page may store the same loyalty number or item ref in the meantime
(PostgreSQL runs them beside an import; SQLite holds the import's write lock throughout): the inserts skip a
natural key already taken (``ON CONFLICT (external_ref_hash)`` / ``(ref) DO NOTHING``) and the ids stored there
replace the made-up ones (:meth:`~Resolver.flush` returns the mapping), so such a race never fails the whole import
with a unique violation. A customer or item stored by someone else counts as neither created nor new POS product.
Another import is not such a race: imports take turns under the import lock
(:func:`dangol_cloud.sale_locks.queue_import`, taken by :func:`dangol_cloud.ingest.import_rows` before the
resolver reads), since two imports inserting the same new keys in opposite orders, batch after batch, would each
hold what the other waits for until commit — a deadlock that rolls one of them back whole. Each flush inserts its
keys in one order (sorted) all the same.

A row's store is matched on its id or its code (``stores.ref``) exactly — the Stores page keeps codes unique as
typed ("harbour" and "Harbour" may be two stores) — and :meth:`Resolver.unknown_store` says what a value naming no
store may have meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from dangol_cloud.crypto import keyring_of
from dangol_cloud.db import dialect_insert
from dangol_cloud.erased_refs import Erased, ErasedRefs
from dangol_cloud.import_rows import PurchaseRow
from dangol_cloud.menu_mapping import register_products
from dangol_cloud.models import CatalogueItem, Customer, Store, new_id, utcnow
from dangol_cloud.sale_rules import REF_MAX

__all__ = ["Resolver"]

#: Most store codes an unknown-store row error lists.
LISTED_CODES = 8
#: Natural keys looked up per query when ids stored meanwhile are read back (well under SQLite's bound parameters).
LOOKUP_CHUNK = 500


class Resolver:
    """Caches ref → id maps for customers, items and stores; collects the customers and items to create.

    Args:
        session: the import's session (no I/O here: :meth:`load` reads).
        create_customer_status / customer_source: ``status`` / ``source`` of the customers it creates.
        product_source: ``source`` of the POS products (items) it creates.
    """

    def __init__(self, session: Session, *, create_customer_status: str, customer_source: str,
                 product_source: str) -> None:
        self.session = session
        self.customers: dict[str, str] = {}  # customer id or external-ref hash -> id
        self.ring = keyring_of(session.get_bind().dialect)
        self.hashes: dict[str, str] = {}  # external ref -> its keyed hash (computed once per import)
        self.erased = ErasedRefs()  # read by load()
        self.items: dict[str, str] = {}
        self.item_names: dict[str, str] = {}
        self.stores: dict[str, str] = {}
        self.codes: list[str] = []  # the stores' codes
        self.new_customers: list[dict] = []
        self.new_items: list[dict] = []
        # item id -> {store id or None: [amount sum, quantity sum]}: each store's sales in its own currency
        self.created_items: dict[str, dict[str | None, list[float]]] = {}
        self.created_customer_count = 0
        # customers a scoped (staff) import may name beyond its customers_in_scope: those it creates, and those a
        # till of its stores created meanwhile (dangol_cloud.ingest)
        self.own_customers: set[str] = set()
        self.status = create_customer_status
        self.source = customer_source
        self.product_source = product_source

    def load(self) -> None:
        """Read every customer (id, ref hash), catalogue item (id, ref, name), store (id, code) and erasure."""
        s = self.session
        self.erased = ErasedRefs.read(s)
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
                self.codes.append(ref)
        self.codes.sort()

    def store(self, ref: str) -> str | None:
        """The id of the store whose id or code is exactly ``ref``, else None."""
        return self.stores.get(ref)

    def unknown_store(self, ref: str, among: Collection[str] | None = None) -> str:
        """Why a row naming ``ref``, no store's id or code, is refused: names the value, and the code it may have
        meant (the same but for case; else a close spelling) or, in a small chain, the codes there are — only the
        codes of the stores ``among`` (store ids; a staff user's stores), None: every store's."""
        codes = [c for c in self.codes if among is None or self.stores[c] in among]
        if len(ref) > REF_MAX:  # no code is that long (rows may come from elsewhere than the importers)
            return f"store is longer than {REF_MAX} characters ({len(ref)}): {ref[:24]!r}…; not imported"
        same = [c for c in codes if c.casefold() == ref.casefold()]
        if len(same) == 1:
            hint = f" (store codes match exactly: did you mean {same[0]!r}?)"
        elif close := difflib.get_close_matches(ref, codes, n=1, cutoff=0.75):
            hint = f" (did you mean {close[0]!r}?)"
        elif not codes and among is not None:
            hint = " (none of your stores has a code: the owner gives them on the Stores page)"
        elif not codes:
            hint = " (no store has a code: give the stores their POS codes on the Stores page)"
        elif len(codes) <= LISTED_CODES:
            hint = f" (the codes are {', '.join(repr(c) for c in codes)})"
        else:
            hint = " (see the codes on the Stores page)"
        return f"store {ref!r} is no store's code{hint}; not imported"

    def customer(self, ref: str, in_scope: Collection[str] | None = None) -> str | None:
        """The customer id of ``ref`` (a Dangol id or an external ref), made up for an unknown external ref (stored
        at :meth:`flush`); None (nothing created) for an existing customer outside ``in_scope`` (None: every
        customer)."""
        cid = self.customers.get(ref)  # a Dangol customer id used as the ref
        if cid is None:
            ref_hash = self.ref_hash(ref)
            cid = self.customers.get(ref_hash)
            if cid is None:
                cid = self.customers[ref_hash] = new_id()
                self.created_customer_count += 1
                self.own_customers.add(cid)
                self.new_customers.append({"id": cid, "external_ref": ref, "external_ref_hash": ref_hash,
                                           "status": self.status, "source": self.source, "created_at": utcnow()})
                return cid
        if in_scope is not None and cid not in in_scope and cid not in self.own_customers:
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
        """The catalogue item id of ``row.item_ref`` (an id, a ref, or a name in any case), made up for an unknown
        one (stored at :meth:`flush` as a POS product); adds the row's amount to a created item's sums."""
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

    def flush(self) -> dict[str, str]:
        """Store the customers and items made up since the last flush; returns ``{made-up id: stored id}`` for
        those someone else stored meanwhile under the same loyalty number / item ref (usually empty). Their rows
        must name the stored id; they are no longer counted as created (nor registered as POS products)."""
        remap: dict[str, str] = {}
        if self.new_customers:
            rows = sorted(self.new_customers, key=lambda r: r["external_ref_hash"])  # one lock order for all
            self.new_customers = []
            lost = self._insert_new(Customer, Customer.external_ref_hash, rows)
            for row in rows:
                if (stored := lost.get(row["id"])) is not None:
                    remap[row["id"]] = self.customers[row["external_ref_hash"]] = self.customers[stored] = stored
                    self.own_customers.discard(row["id"])
                    self.created_customer_count -= 1
        if self.new_items:
            rows = sorted(self.new_items, key=lambda r: r["ref"])
            self.new_items = []
            lost = self._insert_new(CatalogueItem, CatalogueItem.ref, rows)
            for row in rows:
                if (stored := lost.get(row["id"])) is not None:
                    remap[row["id"]] = self.items[row["ref"]] = stored
                    self.created_items.pop(row["id"], None)
            # imported items are POS products, not menu items: the owner maps them (menu_mapping)
            register_products(self.session, [r["id"] for r in rows if r["id"] not in lost], source=self.product_source)
        return remap

    def _insert_new(self, model, key, rows: list[dict]) -> dict[str, str]:
        """Insert ``rows`` of ``model`` skipping those whose natural ``key`` is taken; ``{made-up id: stored id}``
        of the skipped ones."""
        stmt = dialect_insert(self.session, model)
        if not hasattr(stmt, "on_conflict_do_nothing"):  # another database: plain insert, as before
            self.session.execute(stmt, rows)
            return {}
        stmt = stmt.on_conflict_do_nothing(index_elements=[key.key]).returning(model.id)
        inserted = set(self.session.scalars(stmt, rows))
        skipped = [r for r in rows if r["id"] not in inserted]
        stored: dict[str, str] = {}
        for values in _chunks([r[key.key] for r in skipped], LOOKUP_CHUNK):
            stored.update((k, i) for k, i in self.session.execute(select(key, model.id).where(key.in_(values))))
        return {r["id"]: stored[r[key.key]] for r in skipped}


def _chunks(values: list, size: int) -> Iterable[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]
