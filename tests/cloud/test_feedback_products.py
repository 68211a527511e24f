"""Training and the door speak different ids: the door shows menu items, the recommender picks POS products.
Shown-and-ignored picks reach the products the customer bought of the menu item shown (tiny hand-checkable
rows), and a customer whose consent was withdrawn gets no picks from later trainings (real Ta-Feng rows, SQLite
and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import func, select

from dangol_cloud.feedback import ignored_as_products
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Customer, Menu, MenuDayparts, Purchase
from dangol_cloud.training import train_from_database

T1, T2, T3 = (datetime(2026, 5, d, 9) for d in (1, 2, 3))


def test_a_shown_and_ignored_menu_item_reaches_the_products_the_customer_bought_of_it():
    ignored = pd.DataFrame({"customer": ["c1", "c2", "c1"], "item": ["menu-1", "menu-1", "menu-2"],
                            "ts": [T1, T2, T3]})
    mapping = {"product-1a": "menu-1", "product-1b": "menu-1", "product-2a": "menu-2", "menu-1": "menu-1",
               "product-3": None}
    bought = pd.DataFrame({"customer": ["c1", "c1", "c1", "c2"],
                           "item": ["product-1a", "product-1a", "product-3", "product-2a"]})
    out = ignored_as_products(ignored, mapping, bought)
    assert list(out.columns) == ["customer", "item", "ts"]
    assert sorted(map(tuple, out.to_numpy().tolist())) == sorted([
        ("c1", "menu-1", T1), ("c2", "menu-1", T2), ("c1", "menu-2", T3),   # the rows themselves
        ("c1", "product-1a", T1),                   # c1 bought product-1a of menu-1; never product-1b
    ])                                              # c2 bought no product of menu-1; c1 none of menu-2
    assert ignored_as_products(ignored, {}, bought).equals(ignored)     # no mapping: as they were


def test_a_customer_whose_consent_was_withdrawn_gets_no_picks_again(db, settings, ta_feng_slice):
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
        regular = s.scalar(select(Purchase.customer_id).group_by(Purchase.customer_id)
                           .order_by(func.count().desc(), Purchase.customer_id).limit(1))
    train_from_database(db, settings)
    with db.transaction() as s:
        assert s.get(Menu, regular) is not None                            # a regular with history has picks
        s.get(Customer, regular).status = "withdrawn"                      # what the dashboard's withdrawal sets
        s.query(Menu).filter(Menu.customer_id == regular).delete()         # ... with its picks
        s.query(MenuDayparts).filter(MenuDayparts.customer_id == regular).delete()
    report = train_from_database(db, settings)
    with db.sessions() as s:
        assert s.get(Menu, regular) is None and s.get(MenuDayparts, regular) is None
        assert s.scalar(select(func.count()).select_from(Menu)) == report.menus > 0   # everyone else still has them
