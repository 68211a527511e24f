"""The counts in "you often buy this (k of your N visits)" (defect 4).

k = the customer's purchase days with the *menu item* (any POS product sold as it), N = the customer's purchase
days. Likes and "shown pick bought" credits are extra positive interactions for the model, never purchases or
visits: they stay out of the purchase history, the day-part profile and the reasons.

Contract tests on hand-made frames (counts checkable by hand) and end-to-end tests on real Ta-Feng purchases
imported into SQLite (:func:`imported`), trained by :func:`dangol_cloud.training.train_from_database`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from dangol_cloud.feedback import credit_shown_picks, record_opinion
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import map_products
from dangol_cloud.models import CatalogueItem, Customer, Menu, ModelVersion, Purchase, Store, Visit, utcnow
from dangol_cloud.publishing import menu_messages
from dangol_cloud.recommend import Recommender, train
from dangol_cloud.settings import Settings
from dangol_cloud.training import train_from_database

from .conftest import _database, add_store_and_device

OFTEN = re.compile(r"you often buy this \((\d+) of your (\d+) visits\)")

# --- contract: hand-made frames ----------------------------------------------------------------------------
#: (customer, item, day of January 2024, hour). c1 buys P1 on the 1st and 2nd, P2 on the 3rd, Q on the 4th:
#: 4 visits; P1 and P2 are both sold as menu item M, so c1 bought M on 3 of 4 visits.
LINES = [("c1", "P1", 1, 8), ("c1", "P1", 2, 8), ("c1", "P2", 3, 9), ("c1", "Q", 4, 13), ("c2", "Q", 1, 12),
         ("c2", "P2", 2, 8), ("c3", "Q", 3, 15), ("c3", "R", 3, 15)]
CATALOGUE = pd.DataFrame({"item": ["P1", "P2", "Q", "R", "M", "NEW"],
                          "category": ["coffee", "coffee", "cake", "cake", "coffee", "coffee"],
                          "price": [3.0, 3.0, 4.0, 4.0, 3.0, 3.0], "tags": [[]] * 6, "available": [True] * 6})
SOLD_AS = {"P1": "M", "P2": "M"}


def frame(lines, **extra) -> pd.DataFrame:
    """Interaction rows ``(customer, item, day, hour)`` as the recommender's frame (quantity 1)."""
    return pd.DataFrame([{"customer": c, "item": i, "ts": datetime(2024, 1, d, h), "quantity": 1.0, **extra}
                         for c, i, d, h in lines])


def reasons_of(model, customer: str) -> dict[str, list[str]]:
    return {p.item: p.reasons for p in model.recommend([customer], n=6)[customer]}


def test_k_counts_the_visits_with_any_product_of_the_menu_item() -> None:
    plain = reasons_of(train(frame(LINES), CATALOGUE), "c1")
    assert plain["P1"][0] == "you often buy this (2 of your 4 visits)"  # products on their own: as before
    model = train(frame(LINES), CATALOGUE, menu_item_of=SOLD_AS)
    got = reasons_of(model, "c1")
    # P1 on the 1st and 2nd, P2 on the 3rd: M on 3 of 4 visits, whichever of its products the pick is
    assert got["P1"][0] == got["P2"][0] == "you often buy this (3 of your 4 visits)"
    assert got["Q"][0] == "you bought this before"  # Q is its own menu item: once
    assert reasons_of(model, "c2")["P2"][0] == "you bought this before"  # c2 bought M once (as P2)


def test_feedback_rows_teach_the_model_but_are_no_purchases() -> None:
    purchases = frame(LINES)
    feedback = frame([("c1", "R", 5, 18),  # a like of an item c1 never bought, on a day without purchase
                      ("c1", "P1", 2, 8)],  # a "shown pick bought" credit of c1's real purchase of the 2nd
                     kind="feedback")
    alone = train(purchases, CATALOGUE)
    model = train(pd.concat([purchases, feedback], ignore_index=True), CATALOGUE)
    h, h0 = model.history, alone.history
    assert h.visits.tolist() == h0.visits.tolist() == [4, 2, 1]  # c1: 4 purchase days, not 5
    for name in ("visits_with_item", "lines", "decayed", "recency"):  # the credit is not a second line
        assert (getattr(h, name) != getattr(h0, name)).nnz == 0, name
    assert h.item_lines.tolist() == h0.item_lines.tolist()
    assert h.ref_day == h0.ref_day  # the like (5 Jan) is not the end of the purchase data (4 Jan)
    assert (model.dayparts.counts != alone.dayparts.counts).nnz == 0  # no evening basket from the like
    assert model.dayparts.visits.tolist() == alone.dayparts.visits.tolist()
    assert (model.popularity.counts != alone.popularity.counts).nnz == 0
    # ... but the factor model learns from them
    assert not np.allclose(model.factors.user_emb[0], alone.factors.user_emb[0])
    assert model.meta["n_interactions"] == len(purchases) and model.meta["n_feedback"] == 2
    got = reasons_of(model, "c1")
    assert got["P1"][0] == "you often buy this (2 of your 4 visits)"
    assert not any("bought" in r or "often buy" in r for r in got["R"])  # liked, never bought
    with pytest.raises(ValueError, match="kind"):
        train(pd.concat([purchases, frame([("c1", "R", 5, 18)], kind="wish")]), CATALOGUE)
    with pytest.raises(ValueError, match="no purchases"):
        train(feedback, CATALOGUE)


def test_menu_item_counts_survive_save_and_load(tmp_path) -> None:
    model = train(frame(LINES), CATALOGUE, menu_item_of=SOLD_AS)
    loaded = Recommender.load(model.save(tmp_path))
    assert reasons_of(loaded, "c1") == reasons_of(model, "c1")
    assert reasons_of(loaded, "c1")["P2"][0] == "you often buy this (3 of your 4 visits)"


# --- end to end on real purchases --------------------------------------------------------------------------
def imported(sqlite_url, tmp_path, path, products_per_item: int = 5, category: str = "Coffee"):
    """Real Ta-Feng rows (``path``) imported into SQLite for one store; the ``products_per_item`` best-selling
    products are sold as one new menu item "Caffe latte" (in ``category``), the next 35 are their own menu
    items, every customer has consent. Returns ``(db, settings, latte id, its product ids, the others)``."""
    db = _database(sqlite_url)
    store_id, _ = add_store_and_device(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="test-secret",
                        timezone="UTC", _env_file=None)
    with db.transaction() as s:
        import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="tf", store_id=store_id)
    with db.transaction() as s:
        top = list(s.scalars(select(Purchase.item_id).group_by(Purchase.item_id)
                             .order_by(func.count().desc(), Purchase.item_id).limit(products_per_item + 35)))
        latte = CatalogueItem(ref="latte", name="Caffe latte", category=category, price=4.0, tags=[])
        s.add(latte)
        s.flush()
        map_products(s, top[:products_per_item], latte.id, by="owner")
        map_products(s, top[products_per_item:], "self", by="owner")
        for c in s.scalars(select(Customer)):
            c.consent_at, c.consent_by, c.display_name = utcnow(), "staff", "Guest"
        latte_id = latte.id
    return db, settings, latte_id, set(top[:products_per_item]), top[products_per_item:]


def purchase_days(s, customer: str, items: set[str] | None = None) -> int:
    """Distinct UTC days on which ``customer`` bought (quantity > 0) any of ``items`` (any item if None)."""
    query = select(Purchase.item_id, Purchase.ts).where(Purchase.customer_id == customer, Purchase.quantity > 0)
    return len({ts.date() for item, ts in s.execute(query) if items is None or item in items})


def published(s) -> list[tuple[str, dict]]:
    """``[(customer id, pick), ...]`` of every published menu/1 (the door's and the dashboard's menu items)."""
    out = []
    for _topic, payload, _ in menu_messages(s, list(s.scalars(select(Store)))):
        menu = json.loads(payload)
        out += [(menu["customer_id"], pick) for pick in menu["items"]]
    return out


def test_counts_of_a_menu_item_sold_as_five_products_are_its_purchase_days(sqlite_url, tmp_path,
                                                                            ta_feng_customers) -> None:
    db, settings, latte, products, _ = imported(sqlite_url, tmp_path, ta_feng_customers)
    train_from_database(db, settings)
    checked, wrong = 0, []
    with db.sessions() as s:
        picks = published(s) + [(m.customer_id, p) for m in s.scalars(select(Menu)) for p in m.picks
                                if p["item_id"] in products]  # the stored product picks too
        for customer, pick in picks:
            if pick["item_id"] not in products | {latte}:
                continue
            for reason in pick["reasons"]:
                if m := OFTEN.fullmatch(reason):
                    checked += 1
                    truth = (purchase_days(s, customer, products), purchase_days(s, customer))
                    if (int(m[1]), int(m[2])) != truth:
                        wrong.append((reason, truth))
    assert checked >= 10  # real repeat buyers of the menu item
    assert wrong == []  # before the fix: 6 of 19 published counted one product's days only


def test_likes_and_credits_are_no_purchases_in_the_reasons(sqlite_url, tmp_path, ta_feng_customers) -> None:
    db, settings, _, _, singles = imported(sqlite_url, tmp_path, ta_feng_customers)
    train_from_database(db, settings)
    with db.transaction() as s:
        customer = next(c for c, in s.execute(select(Menu.customer_id).order_by(Menu.customer_id))
                        if purchase_days(s, c) >= 3)
        liked = next(i for i in singles if purchase_days(s, customer, {i}) == 0)
        record_opinion(s, customer, liked, "like", by="staff")  # today: no purchase day, no visit
        last = s.scalars(select(Purchase).where(Purchase.customer_id == customer, Purchase.quantity > 0)
                         .order_by(Purchase.ts.desc(), Purchase.id)).first()
        credited, visits = last.item_id, purchase_days(s, customer)
        lines = s.scalar(select(func.count()).select_from(Purchase).where(
            Purchase.customer_id == customer, Purchase.item_id == credited, Purchase.quantity > 0))
        shown_at = last.ts - timedelta(minutes=20)
        s.add(Visit(event_id="e-credit", customer_id=customer, store_id=last.store_id, ts=shown_at,
                    shown_items=[credited]))
        # every line of the shown item bought since (a Ta-Feng basket may list one product on several lines)
        bought_since = s.scalar(select(func.count()).select_from(Purchase).where(
            Purchase.customer_id == customer, Purchase.item_id == credited, Purchase.ts >= shown_at))
    assert bought_since >= 1
    with db.transaction() as s:
        assert credit_shown_picks(s) == bought_since
    train_from_database(db, settings)
    with db.sessions() as s:
        model = Recommender.load(s.scalar(select(ModelVersion.path)))
        menu = s.get(Menu, customer).picks
    row, col = list(model.customers).index(customer), list(model.items).index(credited)
    assert model.history.visits[row] == visits  # the like is no visit
    assert model.history.lines[row, col] == lines  # the credited purchase is not counted twice
    assert model.history.visits_with_item[row, list(model.items).index(liked)] == 0
    for pick in menu:
        for reason in pick["reasons"]:
            if m := OFTEN.fullmatch(reason):
                assert int(m[2]) == visits, reason
    # why the liked item would be offered: never "you bought this before" (before the fix it was)
    why = model.explain(np.array([row]), np.array([list(model.items).index(liked)]))[0]
    assert why and not any("bought" in r or "often buy" in r for r in why), why
