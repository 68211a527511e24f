"""Per-store prices of a chain selling in several currencies (Seoul in won, Taipei in New Taiwan dollars).

An item's ``price`` (:class:`~dangol_cloud.models.CatalogueItem`) is its catalogue price, the default, in the
*catalogue's currency* (:func:`catalogue_currency`: the stores' own currency when they all share one, else the
``CURRENCY`` setting). An owner may give it a price at one store (:class:`~dangol_cloud.models.StorePrice`), in that
store's currency (its own, Stores page, else the ``CURRENCY`` setting), recorded with the price.

What a store's door gets (:func:`price_at_store`): the store's own price while the store still sells in the currency
it was set in; else the catalogue price when the store sells in the catalogue's currency; else no price (the door
shows the item without one). Never a number of another currency: a ₩3,800 croissant is never "NT$3,800".

A published snapshot (:func:`dangol_cloud.publishing.snapshot_items`) freezes each item's store prices under
:data:`SNAPSHOT_KEY`; :func:`for_store` turns one snapshot entry into the ``catalogue/1`` item of one store.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from dangol_cloud.models import Store, StorePrice, StoreSetting

__all__ = ["SNAPSHOT_KEY", "StoreCurrency", "catalogue_currency", "for_store", "price_at_store",
           "price_imported_items", "prices_by_item", "set_store_prices", "store_currencies"]

#: Key of a snapshot entry's frozen store prices: ``{store id: {"price": float, "currency": "TWD"}}`` (absent: none).
SNAPSHOT_KEY = "store_prices"

StoreCurrency = tuple[str, str, str]
"""``(store id, store name, currency)``: a store and the currency it sells in."""


def store_currencies(session: Session, default: str) -> list[StoreCurrency]:
    """Every store with the currency it sells in (its own, else ``default``: the ``CURRENCY`` setting), by name."""
    rows = session.execute(select(Store.id, Store.name, StoreSetting.currency)
                           .outerjoin(StoreSetting, StoreSetting.store_id == Store.id)
                           .order_by(Store.name, Store.id)).all()
    return [(sid, name, code or default) for sid, name, code in rows]


def catalogue_currency(stores: Iterable[StoreCurrency], default: str) -> str:
    """The currency of the catalogue prices: the stores' when they all sell in one, else ``default`` (the
    ``CURRENCY`` setting; also with no store). The same rule as the dashboard's
    :func:`dangol_cloud.web.catalogue_form.menu_currency`."""
    codes = {code for _sid, _name, code in stores}
    return codes.pop() if len(codes) == 1 else default


def prices_by_item(session: Session, item_ids: Iterable[str] | None = None) -> dict[str, dict[str, dict]]:
    """``{item id: {store id: {"price": float, "currency": str}}}`` of the stored store prices (of ``item_ids``
    only, when given; looked up 500 at a time)."""
    out: dict[str, dict[str, dict]] = {}
    query = select(StorePrice.item_id, StorePrice.store_id, StorePrice.price, StorePrice.currency)
    if item_ids is None:
        batches = [session.execute(query)]
    else:
        ids = list(item_ids)
        batches = [session.execute(query.where(StorePrice.item_id.in_(ids[i:i + 500])))
                   for i in range(0, len(ids), 500)]
    for rows in batches:
        for item_id, store_id, price, currency in rows:
            out.setdefault(item_id, {})[store_id] = {"price": price, "currency": currency}
    return out


def price_at_store(default: float | None, own: dict | None, store_currency: str, menu_currency: str) -> float | None:
    """The price one store shows: its own price (``own``: ``{"price", "currency"}``) while ``store_currency`` is the
    currency it was set in; else the catalogue price ``default`` when the store sells in ``menu_currency`` (the
    catalogue's); else None — never a number of another currency."""
    if own is not None and own.get("currency") == store_currency and own.get("price") is not None:
        return own["price"]
    return default if store_currency == menu_currency else None


def for_store(entry: dict, store_id: str, store_currency: str, menu_currency: str) -> dict:
    """A snapshot entry as the ``catalogue/1`` item of one store: its price there (:func:`price_at_store`), without
    the other stores' prices (:data:`SNAPSHOT_KEY`). An entry of a snapshot frozen before store prices has none."""
    out = {k: v for k, v in entry.items() if k != SNAPSHOT_KEY}
    own = (entry.get(SNAPSHOT_KEY) or {}).get(store_id)
    out["price"] = price_at_store(entry.get("price"), own, store_currency, menu_currency)
    return out


def set_store_prices(session: Session, item_id: str, prices: dict[str, tuple[float | None, str]]) -> None:
    """Set item ``item_id``'s price at each store of ``prices`` (``{store id: (price or None, the store's currency)}``):
    a price replaces the stored one, None deletes it. Stores not named keep theirs. The caller checked the prices
    (bounds, the currency's decimals) and commits."""
    stored = {row.store_id: row for row in session.scalars(select(StorePrice).where(StorePrice.item_id == item_id))}
    for store_id, (price, currency) in prices.items():
        row = stored.get(store_id)
        if price is None:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(StorePrice(item_id=item_id, store_id=store_id, price=price, currency=currency))
        elif (row.price, row.currency) != (price, currency):
            row.price, row.currency = price, currency


def _digits(currency: str) -> int:
    """The decimals of a price in ``currency`` (CLDR's; 2 for a code babel does not list), as the item form takes."""
    from dangol_protocol.money import CurrencyError, minor_digits

    try:
        return minor_digits(currency)
    except CurrencyError:
        return 2


def price_imported_items(session: Session, sums: dict[str, dict[str | None, tuple[float, float]]], default: str,
                         max_price: float) -> int:
    """Price the items an import created from their sales, each in the right currency (for
    :func:`dangol_cloud.ingest.import_rows`; before, the average of all lines, Taipei's New Taiwan dollars included,
    became the catalogue price that Seoul shows in won).

    Args:
        sums: ``{item id: {store id or None (a line without a store): (amount sum, quantity sum)}}``, in each
            store's currency (None: the ``CURRENCY`` setting).
        default: the ``CURRENCY`` setting.
        max_price: the highest price the item form takes; a larger average is left out.

    The lines of the stores selling in the catalogue's currency (:func:`catalogue_currency`; store-less lines when
    that is ``CURRENCY``) give the catalogue price; the lines of a store selling in another currency give the item's
    price at that store (:func:`set_store_prices`). Each is the average unit price, rounded to the currency's
    decimals; none without units or above ``max_price``. Returns how many prices were set; the caller commits.
    """
    from dangol_cloud.models import CatalogueItem

    stores = store_currencies(session, default)
    code_of: dict[str | None, str] = {sid: code for sid, _name, code in stores}
    code_of[None] = default
    menu = catalogue_currency(stores, default)
    written = 0
    for item_id, by_store in sums.items():
        pooled = [0.0, 0.0]
        own: dict[str, tuple[float | None, str]] = {}
        for store_id, (amount, quantity) in by_store.items():
            code = code_of.get(store_id, default)  # a store removed meanwhile: as a store-less line
            if code == menu:
                pooled[0] += amount
                pooled[1] += quantity
            elif store_id is not None and quantity > 0 and 0 <= amount / quantity <= max_price:
                own[store_id] = (round(amount / quantity, _digits(code)), code)
        if pooled[1] > 0 and 0 <= pooled[0] / pooled[1] <= max_price:
            item = session.get(CatalogueItem, item_id)
            if item is not None:
                item.price = round(pooled[0] / pooled[1], _digits(menu))
                written += 1
        if own:
            set_store_prices(session, item_id, own)
            written += len(own)
    return written
