"""The new-item slot ("new on the menu") is for menu items nobody has bought (defect 6).

A menu item's sales are recorded against the POS products sold as it, so it has no purchase lines of its own:
it counts as sold when any of its products was bought. A menu item that really is new (no product, or none sold)
keeps the slot. A hand-made contract test and an end-to-end one on real Ta-Feng purchases.
"""

from __future__ import annotations

import json

import pandas as pd
from sqlalchemy import func, select

from dangol_cloud.models import CatalogueItem, Menu, Purchase, Store
from dangol_cloud.publishing import menu_messages
from dangol_cloud.recommend import Recommender, RecommenderConfig, train
from dangol_cloud.training import train_from_database

from .test_reason_counts import CATALOGUE, LINES, SOLD_AS, frame, imported

NEW = "new on the menu"
ALWAYS = RecommenderConfig(new_item_min_z=-1e9)  # the slot goes to the best new item, whatever its z-score


def new_picks(model, customers=("c1", "c2", "c3")) -> dict[str, set[str]]:
    """``{item: customers whose list has it with the reason "new on the menu"}``."""
    out: dict[str, set[str]] = {}
    for customer, picks in model.recommend(list(customers), n=6).items():
        for p in picks:
            if NEW in p.reasons:
                out.setdefault(p.item, set()).add(customer)
    return out


def test_a_menu_item_sold_through_its_products_is_not_new(tmp_path) -> None:
    assert "M" in new_picks(train(frame(LINES), CATALOGUE, config=ALWAYS))  # unmapped: M has no purchase lines
    sold_as = {**SOLD_AS, "P3": "M"}  # P3, never sold, is sold as M too
    p3 = pd.DataFrame({"item": ["P3"], "category": ["coffee"], "price": [3.0], "tags": [[]], "available": [True]})
    catalogue = pd.concat([CATALOGUE, p3], ignore_index=True)
    model = train(frame(LINES), catalogue, config=ALWAYS, menu_item_of=sold_as)
    got = new_picks(model)
    assert "M" not in got and "P3" not in got  # M's products P1 and P2 sell: neither M nor P3 is new
    assert got["NEW"] == {"c1", "c2", "c3"}  # the genuinely new menu item keeps the slot
    assert new_picks(Recommender.load(model.save(tmp_path))) == got


def test_caffe_latte_sold_as_three_products_is_never_new_on_the_menu(sqlite_url, tmp_path, ta_feng_customers) -> None:
    db, settings, latte, products, _ = imported(sqlite_url, tmp_path, ta_feng_customers, products_per_item=3)
    with db.transaction() as s:  # latte in its products' category; a new item beside it, with no product at all
        category = s.get(CatalogueItem, sorted(products)[0]).category
        s.get(CatalogueItem, latte).category = category
        matcha = CatalogueItem(ref="matcha", name="Matcha latte", category=category, price=4.0, tags=[])
        s.add(matcha)
        s.flush()
        matcha_id = matcha.id
        sold = s.scalar(select(func.count()).select_from(Purchase).where(Purchase.item_id.in_(products)))
    assert sold > 100
    train_from_database(db, settings)
    with db.sessions() as s:
        stored = [p for m in s.scalars(select(Menu)) for p in m.picks]
        out = [p for _t, payload, _ in menu_messages(s, list(s.scalars(select(Store))))
               for p in json.loads(payload)["items"]]
    assert not [p for p in stored + out if p["item_id"] == latte and NEW in p["reasons"]]  # before: on 188 menus
    assert any(p["item_id"] == matcha_id and p["reasons"][0] == NEW for p in out)  # the new one still gets it
