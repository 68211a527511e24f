"""Per-store prices of a chain selling in several currencies (Seoul in won, Taipei in New Taiwan dollars).

An item's ``price`` (:class:`~dangol_cloud.models.CatalogueItem`) is its catalogue price, the default, in the
*catalogue's currency* (:func:`catalogue_currency`: stored once, under :data:`CURRENCY_KEY` in ``menu_settings``,
when ``dangol-cloud serve`` starts or a write first needs it — the stores' own currency when they all shared one
then, else the ``CURRENCY`` setting — and never inferred again: adding or removing a store, or changing a store's
currency, never changes it; pages read it with :func:`read_catalogue_currency`, which never writes).
An owner may give it a price at one store (:class:`~dangol_cloud.models.StorePrice`), in that
store's currency (its own, Stores page, else the ``CURRENCY`` setting), recorded with the price.

What a store's door gets (:func:`price_at_store`): the store's own price while the store still sells in the currency
it was set in; else the catalogue price when the store sells in the catalogue's currency; else no price (the door
shows the item without one). Never a number of another currency: a ₩3,800 croissant is never "NT$3,800".

A published snapshot (:func:`dangol_cloud.publishing.snapshot_items`) freezes each item's store prices under
:data:`SNAPSHOT_KEY`; :func:`for_store` turns one snapshot entry into the ``catalogue/1`` item of one store.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from dangol_cloud.db import dialect_insert
from dangol_cloud.models import MenuSetting, Store, StorePrice, StoreSetting

__all__ = ["CURRENCY_KEY", "SNAPSHOT_KEY", "StoreCurrency", "catalogue_currency", "currency_digits", "for_store",
           "has_store_prices", "price_at_store", "price_imported_items", "prices_by_item", "read_catalogue_currency",
           "set_catalogue_currency", "set_store_prices", "shared_currency", "store_currencies"]

log = logging.getLogger(__name__)

#: The ``menu_settings`` key holding the catalogue prices' currency (ISO 4217), written once by
#: :func:`catalogue_currency`.
CURRENCY_KEY = "catalogue_currency"

#: Key of a snapshot entry's frozen store prices: ``{store id: {"price": float, "currency": "TWD"}}`` (absent: none).
SNAPSHOT_KEY = "store_prices"

StoreCurrency = tuple[str, str, str]
"""``(store id, store name, currency)``: a store and the currency it sells in."""


def store_currencies(session: Session, default: str) -> list[StoreCurrency]:
    """Every store (``stores``) with the currency it sells in, as ``(store id, store name, currency)``
    (:data:`StoreCurrency`), by name then id: its own ISO 4217 code (Stores page, ``store_settings.currency``), else
    ``default`` — the caller's ``CURRENCY`` setting. The one reader of the stores' currencies: the ``money`` filter
    (``{store id: currency}`` per request, :mod:`dangol_cloud.app`), :func:`shared_currency`, the catalogue's
    currency, the item form, the publishing and the imports all read them here. A code stored before the checks
    (``WON``) is returned as it is."""
    rows = session.execute(select(Store.id, Store.name, StoreSetting.currency)
                           .outerjoin(StoreSetting, StoreSetting.store_id == Store.id)
                           .order_by(Store.name, Store.id)).all()
    return [(sid, name, code or default) for sid, name, code in rows]


def shared_currency(session: Session, store_ids: Iterable[str | None] | None, default: str) -> str:
    """The one currency the stores ``store_ids`` all sell in (:func:`store_currencies`; None: every store), else
    ``default`` (the ``CURRENCY`` setting): when they differ, when there is none, and as the currency of a sale
    without a store (a None among the ids) or of an id no store has (removed). E.g. the currency a customer's
    purchases are shown in, and what :func:`catalogue_currency` stores."""
    stores = store_currencies(session, default)
    own = {sid: code for sid, _name, code in stores}
    ids = own if store_ids is None else store_ids
    codes = {own.get(i, default) if i is not None else default for i in ids}
    return codes.pop() if len(codes) == 1 else default


def _stored_code(row: MenuSetting | None) -> str | None:
    """The catalogue currency held by the ``menu_settings`` row ``row``, or None (no row, or a value that is not a
    three-letter code: edited by hand)."""
    return row.value if row is not None and re.fullmatch(r"[A-Z]{3}", row.value or "") else None


def read_catalogue_currency(session: Session, default: str) -> str:
    """The currency of the catalogue prices (ISO 4217 code) as :func:`catalogue_currency` gives it, without writing:
    the code stored under :data:`CURRENCY_KEY`, else (not stored yet, or a value that is not a code) the one
    :func:`catalogue_currency` would store — :func:`shared_currency` of every store, ``default`` (the ``CURRENCY``
    setting) when they differ or there is none. What pages read: a GET never writes (``dangol-cloud serve`` stores
    it at start-up; every write that needs it stores it first)."""
    return _stored_code(session.get(MenuSetting, CURRENCY_KEY)) or shared_currency(session, None, default)


def catalogue_currency(session: Session, default: str) -> str:
    """The currency of the catalogue prices (ISO 4217 code): the one stored under :data:`CURRENCY_KEY`, stored by
    the first call (flushed; the caller commits) — the stores' own currency when they all sell in one, else
    ``default`` (the ``CURRENCY`` setting; also with no store: :func:`shared_currency`), so a chain keeps what it
    had before the currency was stored. Never inferred again: a store added (it sells in ``CURRENCY`` until set),
    removed or given another currency leaves it — a ₩3,800 croissant never becomes €3,800. It writes: called at
    ``dangol-cloud serve`` start-up and by the writes that depend on it (a store added or its currency changed, a
    catalogue price saved, an import pricing items, a publish, hence training); pages read
    :func:`read_catalogue_currency`. A stored value that is not a three-letter code (edited by hand) is logged and
    replaced by the inference."""
    row = session.get(MenuSetting, CURRENCY_KEY)
    if (stored := _stored_code(row)) is not None:
        return stored
    code = shared_currency(session, None, default)
    if row is not None:
        log.warning("menu_settings %s holds %r, not a currency code: stored %s instead", CURRENCY_KEY,
                    (row.value or "")[:40], code)
        row.value = code
        session.flush()
        return code
    # another request storing it at the same time: keep theirs, read it
    session.execute(dialect_insert(session, MenuSetting).values(key=CURRENCY_KEY, value=code)
                    .on_conflict_do_nothing(index_elements=[MenuSetting.key]))
    stored_row = session.get(MenuSetting, CURRENCY_KEY, populate_existing=True)
    return stored_row.value if stored_row is not None else code


def set_catalogue_currency(session: Session, given: str) -> str:
    """Store ``given`` (an ISO 4217 code in use, any case: :func:`dangol_protocol.money.check_currency`) as the
    catalogue prices' currency, the owner's explicit choice (Menu page); the prices' numbers are not converted.
    Returns the code stored; flushed, the caller commits.

    Raises:
        dangol_protocol.money.CurrencyError: ``given`` is not a currency code in use (named in the message).
    """
    from dangol_protocol.money import check_currency

    code = check_currency(given.strip())
    row = session.get(MenuSetting, CURRENCY_KEY)
    if row is None:
        session.add(MenuSetting(key=CURRENCY_KEY, value=code))
    else:
        row.value = code
    session.flush()
    return code


def has_store_prices(session: Session) -> bool:
    """Whether any item has a price of its own at some store (:class:`~dangol_cloud.models.StorePrice`)."""
    return session.scalar(select(StorePrice.item_id).limit(1)) is not None


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


def currency_digits(currency: str) -> int:
    """The decimals a price in ``currency`` may have: CLDR's minor-unit digits (KRW, JPY 0; USD, EUR 2; BHD 3), and 2
    for a code this babel does not list (stored before the checks, or newer than its data), as
    :func:`dangol_protocol.money.format_money` writes such a price. The item form's checks and the imports' rounding
    both use it."""
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
    menu = catalogue_currency(session, default)
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
                own[store_id] = (round(amount / quantity, currency_digits(code)), code)
        if pooled[1] > 0 and 0 <= pooled[0] / pooled[1] <= max_price:
            item = session.get(CatalogueItem, item_id)
            if item is not None:
                item.price = round(pooled[0] / pooled[1], currency_digits(menu))
                written += 1
        if own:
            set_store_prices(session, item_id, own)
            written += len(own)
    return written
