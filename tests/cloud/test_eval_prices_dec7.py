"""The offline evaluation prices an item only from the lines of stores selling in the catalogue's currency (review
r2, 7 Dec): a chain selling in won and euros got one median of both (a 3.9 EUR latte and 4,500 KRW ones). As the
import prices items (:func:`dangol_cloud.store_prices.price_imported_items`). Real databases (SQLite, PostgreSQL)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import select

from dangol_cloud.importers import PurchaseRow
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, Store, StoreSetting
from dangol_cloud.recommend.data import catalogue_before
from dangol_cloud.store_prices import set_catalogue_currency
from dangol_cloud.training import load_frames


def _chain(db, menu_currency: str) -> dict[str, str]:
    """Seoul sells in KRW, Paris in EUR, Lyon without a currency of its own (the CURRENCY setting, EUR); the
    catalogue's currency is ``menu_currency``. Each sold a latte on Jan 5, 2026 (two in Seoul), items priced
    4,500 / 4,700 KRW and 3.9 / 4.1 EUR."""
    with db.transaction() as s:
        stores = {name: Store(name=name, ref=name.lower()) for name in ("Seoul", "Paris", "Lyon")}
        s.add_all(stores.values())
        s.flush()
        s.add_all([StoreSetting(store_id=stores["Seoul"].id, currency="KRW"),
                   StoreSetting(store_id=stores["Paris"].id, currency="EUR")])
        set_catalogue_currency(s, menu_currency)
        ids = {name: store.id for name, store in stores.items()}
    sales = [("Seoul", "a", 4500.0), ("Seoul", "b", 4700.0), ("Paris", "c", 3.9), ("Lyon", "d", 4.1)]
    with db.transaction() as s:
        for n, (store, customer, amount) in enumerate(sales):
            row = PurchaseRow(2, customer, "latte", None, 1.0, amount, datetime(2026, 1, 5, 9, n), None, None)
            import_rows(s, [row], source="csv", key_prefix=f"csv-{store}", store_id=ids[store])
    return ids


def _latte_price(db, **kwargs) -> tuple[float, list[float]]:
    with db.sessions() as s:
        inter, items = load_frames(s, "UTC", units=True, **kwargs)
        latte = s.scalar(select(CatalogueItem.id).where(CatalogueItem.ref == "latte"))
    catalogue = catalogue_before(inter, items, pd.Timestamp("2026-02-01"))
    units = sorted(inter.loc[inter["item"] == latte, "unit"].dropna().tolist())
    return float(catalogue.loc[catalogue["item"] == latte, "price"].iloc[0]), units


def test_an_items_evaluation_price_is_in_the_catalogue_currency(db):
    _chain(db, "EUR")
    price, units = _latte_price(db)  # CURRENCY at its default, EUR: Paris and Lyon
    assert units == [3.9, 4.1] and np.isclose(price, 4.0)  # was 4,500 (the median of both currencies)


def test_won_catalogue_prices_from_the_won_store_only(db):
    _chain(db, "KRW")
    price, units = _latte_price(db, currency="EUR")
    assert units == [4500.0, 4700.0] and np.isclose(price, 4600.0)
    price, units = _latte_price(db, currency="KRW")  # Lyon, without a currency of its own, sells in KRW then
    assert units == [4.1, 4500.0, 4700.0] and np.isclose(price, 4500.0)
