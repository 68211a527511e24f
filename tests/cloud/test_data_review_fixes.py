"""Data review: five defects in erasure, migrations, analytics and day-part reasons (SQLite and PostgreSQL).

1. "Allow again" on the Privacy page deleted the erased loyalty number's row, so the next upload of the unchanged
   cumulative export restored every erased line (17 real Ta-Feng lines of customer 00539166) under a new customer.
   Allowing a number again now keeps a cut-off: only its sales from then on come in, as the page says.
2. A retention erasure kept out every sale dated before the erasure *run*: a customer last seen 13 months ago who
   bought two days ago (not imported yet) lost that sale for good. Only the sales from before the retention period
   of the run (the erasure time minus ``RETENTION_DAYS``) stay out now.
3. Migration 0010 left the dashboard's fanned-out product dislikes of a menu item whose own opinion the store API
   had reversed since (``like``, or ``none``: row deleted): they kept banning the item. Migration 0012 drops them.
4. With ``TIMEZONE`` unset, Analytics' "shown → bought" left out every door visit of a store without a zone, so a
   POS API sale the training credits counted for nothing there; only imported lines are left out now, and only a
   store with imported sales in the range is named.
5. One breakfast basket holding two POS products of one menu item read "you often have it at breakfast".
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import select

from dangol_cloud.analytics import compute
from dangol_cloud.db import Database, migrate
from dangol_cloud.erased_refs import erased_for, lift_erased_ref
from dangol_cloud.erasure import run_retention
from dangol_cloud.feedback import credit_shown_picks, disliked_items
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import expand_dislikes, menu_item_map
from dangol_cloud.models import (AuditEntry, CatalogueItem, Customer, ErasedRef, PickOpinion, ProductMapping,
                                 Purchase, Store, Visit)
from dangol_cloud.recommend.dayparts import DayPartProfile

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL
from .test_privacy_keys import ERASED_REF, _customer_of, _erase_ref, _import, _slice


def _csv(db: Database, path, rows: list[tuple[str, datetime]]):
    """Import ``(customer, time)`` sale lines of a latte as a plain CSV."""
    path.write_text("customer,item,quantity,timestamp,amount\n"
                    + "".join(f"{who},latte,1,{ts.isoformat()},4.0\n" for who, ts in rows))
    with db.transaction() as s:
        return import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv")


# --- 1. allowing an erased loyalty number again ------------------------------------------------------------------
def test_allowing_an_erased_number_again_records_only_its_sales_from_then_on(db, data_dir, tmp_path):
    path = _slice(data_dir, tmp_path / "tf.csv", 1, 300)
    assert _import(db, path).inserted == 300
    _cid, lines = _erase_ref(db, ERASED_REF)
    assert lines == 17
    with db.transaction() as s:
        assert lift_erased_ref(s, ERASED_REF, actor=OWNER_EMAIL) is not None
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    back = _import(db, path)                         # the unchanged cumulative export, after the customer re-joined
    # before: (17, 1, 0): the whole erased history came back under a new customer
    assert (back.inserted, back.customers_created, len(back.errors)) == (0, 0, 17)
    assert {e.message for e in back.errors} == {
        f"customer {ERASED_REF!r} erased on {today}, allowed again on {today}; sales from before then are not "
        "imported"}
    with db.sessions() as s:                          # the POS API: the same cut-off
        lifted_at = s.scalar(select(ErasedRef.allowed_from))
        assert erased_for(s, ERASED_REF, lifted_at - timedelta(seconds=1), existing_id=False) is not None
        assert erased_for(s, ERASED_REF, lifted_at, existing_id=False) is None
    new = _csv(db, tmp_path / "new.csv", [(ERASED_REF, lifted_at + timedelta(minutes=1))])
    assert (new.inserted, new.customers_created, new.errors) == (1, 1, [])   # a new customer from now on
    with db.transaction() as s:                       # allowed twice: the cut-off stays, audited once
        assert lift_erased_ref(s, ERASED_REF, actor=OWNER_EMAIL).allowed_from == lifted_at
    with db.sessions() as s:
        assert len(s.scalars(select(AuditEntry).where(AuditEntry.action == "erasure-lifted")).all()) == 1
    assert _customer_of(db, ERASED_REF) is not None
    _erase_ref(db, ERASED_REF)                        # erased again at their request: every sale stays out again
    again = _csv(db, tmp_path / "again.csv", [(ERASED_REF, datetime.now(timezone.utc))])
    assert (again.inserted, [e.message for e in again.errors]) == (
        0, [f"customer {ERASED_REF!r} erased on {today}; not imported"])


# --- 2. a retention erasure and the sales not imported yet --------------------------------------------------------
def test_a_retention_erasure_keeps_out_only_the_sales_from_before_the_retention_period(db, tmp_path):
    now = datetime.now(timezone.utc)
    old, between, recent = now - timedelta(days=400), now - timedelta(days=380), now - timedelta(days=2)
    assert _csv(db, tmp_path / "jan.csv", [("loy-77", old), ("loy-8", old)]).inserted == 2
    with db.transaction() as s:   # both are old enough to be retention candidates
        s.execute(Customer.__table__.update().values(created_at=old))
    with db.transaction() as s:   # the daily sweep: not seen (in the database) for 365 days
        assert len(run_retention(s, 365)) == 2
    cut = (now - timedelta(days=365)).strftime("%Y-%m-%d")
    # the next cumulative export: the old line, a sale 380 days ago and one two days ago (not imported yet)
    report = _csv(db, tmp_path / "feb.csv", [("loy-77", old), ("loy-77", between), ("loy-77", recent)])
    # before: 0 inserted: the sale of two days ago was refused for good
    assert (report.inserted, report.customers_created) == (1, 1)
    today = now.strftime("%Y-%m-%d")
    assert {e.message for e in report.errors} == {
        f"customer 'loy-77' erased on {today} (retention); sales from before {cut} are not imported"}
    with db.sessions() as s:
        assert s.scalars(select(Purchase.ts)).all() == [recent]
        assert erased_for(s, "loy-8", now - timedelta(days=30), existing_id=False) is None    # the POS API too
        refused = erased_for(s, "loy-8", between, existing_id=False)
        assert refused is not None and refused.retention


# --- 3. migration 0012: product dislikes whose menu item's own opinion was reversed ------------------------------
def test_migration_0012_drops_fanned_out_dislikes_reversed_through_the_store_api(db_url):
    db = Database(db_url, data_key=DEV_KEY_BYTES)
    try:
        migrate(db.engine, "0009")
        t0, t1, t2, t3 = (datetime(2026, 3, d, 9, tzinfo=timezone.utc) for d in (1, 2, 3, 4))
        with db.transaction() as s:
            items = {k: CatalogueItem(ref=k, name=k, tags=[]) for k in ("A", "B", "p1", "p2", "p3", "p4")}
            who = ("liked", "forgot", "again", "single", "remapped", "gone", "api")
            people = {k: Customer(source="import") for k in who}
            s.add_all([*items.values(), *people.values()])
            s.flush()
            i, c = {k: v.id for k, v in items.items()}, {k: v.id for k, v in people.items()}
            s.add_all([ProductMapping(product_id=i["p1"], menu_item_id=i["A"], source="csv"),
                       ProductMapping(product_id=i["p2"], menu_item_id=i["A"], source="csv"),
                       ProductMapping(product_id=i["p3"], menu_item_id=i["B"], source="csv", mapped_at=t3),
                       ProductMapping(product_id=i["p4"], menu_item_id=i["B"], source="csv", mapped_at=t0)])
            rows = [(w, what, "dislike", t1, "owner@x") for w in ("liked", "forgot", "again")
                    for what in ("A", "p1", "p2")]                       # the old dashboard's fan-out
            rows += [("single", "p1", "dislike", t1, "owner@x"),          # no menu-item row, no fan-out sibling
                     ("remapped", "p3", "dislike", t1, "owner@x"),        # sold as B only since t3
                     ("gone", "B", "dislike", t1, "owner@x"), ("gone", "p4", "dislike", t1, "owner@x"),
                     ("api", "p1", "dislike", t1, "store:s1")]           # the store API's own
            s.add_all([PickOpinion(customer_id=c[w], item_id=i[what], opinion=o, at=at, by=by)
                       for w, what, o, at, by in rows])
        with db.transaction() as s:   # later, through the store API (the old code changed the item named only)
            def row(w, what):
                return s.get(PickOpinion, (c[w], i[what]))
            row("liked", "A").opinion, row("liked", "A").at, row("liked", "A").by = "like", t2, "store:s1"
            row("again", "A").at, row("again", "A").by = t2, "store:s1"    # disliked again: still banned
            s.delete(row("forgot", "A"))
            s.delete(row("gone", "B"))
        migrate(db.engine, "head")
        names = {v: k for k, v in {**i, **c}.items()}
        with db.sessions() as s:
            left = {(names[w], names[it], o) for w, it, o in s.execute(
                select(PickOpinion.customer_id, PickOpinion.item_id, PickOpinion.opinion))}
            banned = {names[k]: {names[x] for x in v}
                      for k, v in expand_dislikes(disliked_items(s), menu_item_map(s)).items()}
        assert left == {("liked", "A", "like"), ("again", "A", "dislike"), ("single", "p1", "dislike"),
                        ("remapped", "p3", "dislike"), ("api", "p1", "dislike")}
        # before: A stayed banned for "liked" and "forgot", B for "gone"
        assert "A" not in banned.get("liked", set()) and "A" not in banned.get("forgot", set())
        assert "B" not in banned.get("gone", set())
        assert {"A", "p1", "p2"} <= banned["again"] and {"A", "p1", "p2"} <= banned["single"]
        migrate(db.engine, "0011")    # the downgrade drops the new column; the upgrade adds it again
        migrate(db.engine, "head")
    finally:
        db.dispose()


# --- 4. "shown → bought" with TIMEZONE unset ---------------------------------------------------------------------
def test_shown_bought_counts_pos_sales_at_a_store_without_a_clock(db):
    t = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
    with db.transaction() as s:
        stores = {k: Store(name=k, ref=k.lower()) for k in ("Main", "Harbour", "Quiet")}
        latte = CatalogueItem(ref="latte", name="Latte", tags=[])
        people = {k: Customer(source="pos", status="active") for k in ("ann", "bob", "cy")}
        s.add_all([*stores.values(), latte, *people.values()])
        s.flush()
        for event, who, store in (("e1", "ann", "Main"), ("e2", "bob", "Harbour"), ("e3", "cy", "Quiet")):
            s.add(Visit(event_id=event, customer_id=people[who].id, store_id=stores[store].id, ts=t,
                        shown_items=[latte.id]))
        s.add(Purchase(customer_id=people["ann"].id, item_id=latte.id, quantity=1, amount=4.0,   # POS API: aware
                       ts=t + timedelta(minutes=20), store_id=stores["Main"].id, source="pos",
                       idempotency_key="pos:x:abc:0"))
        s.add(Purchase(customer_id=people["bob"].id, item_id=latte.id, quantity=1, amount=4.0,   # imported: naive
                       ts=t + timedelta(minutes=30), store_id=stores["Harbour"].id, source="csv",
                       idempotency_key="csv:harbour"))
    window = {"since": t - timedelta(days=1), "until": t + timedelta(days=1)}
    with db.sessions() as s:
        a = compute(s, tz="UTC", timezone_set=False, **window)
        main_only = compute(s, tz="UTC", timezone_set=False, store_id=[stores["Main"].id], **window)
    with db.transaction() as s:
        trained = credit_shown_picks(s, timezone_set=False)   # what the training credits with TIMEZONE unset
    # before: (0, 0, 0) and Harbour, Main and Quiet named: every visit of the three stores was left out
    assert trained == 1 and (a.shown_visits, a.converted, a.credits) == (3, 1, trained)
    assert a.stores_without_clock == ["Harbour"]              # the only store whose imported sales are left out
    assert (main_only.shown_visits, main_only.converted, main_only.credits, main_only.stores_without_clock) == (
        1, 1, 1, [])


# --- 5. "you often have it at breakfast" -------------------------------------------------------------------------
def test_one_basket_of_two_products_of_a_menu_item_is_no_habit():
    # products 0 and 1 are sold as one menu item (group 0), item 2 is another. Customer 0: ONE breakfast basket
    # with products 0 and 1 (day 1), an afternoon basket (day 2). Customers 1 and 2: one breakfast basket each
    # with both products; customer 3: three evening baskets of item 2.
    u = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    i = np.array([0, 1, 2, 0, 1, 0, 1, 2, 2, 2])
    day = np.array([1, 1, 2, 1, 1, 1, 1, 1, 2, 3])
    hour = np.array([8, 8, 15, 8, 8, 9, 9, 19, 19, 19])
    profile = DayPartProfile.build(u, i, day, hour, (4, 3))
    group = np.array([0, 0, 1])
    assert profile.own_counts(np.array([0, 0]), np.array([0, 1]), 0, group).tolist() == [1, 1]   # before: [2, 2]
    assert profile.reasons(np.array([0]), np.array([0]), 0, np.ones(1), group) == ["you have had it at breakfast"]
    # customer 3 never had it; three breakfast baskets hold it (each with both products): popular at breakfast
    assert profile.reasons(np.array([3]), np.array([0]), 0, np.ones(1), group) == ["popular at breakfast"]
    # two breakfast baskets hold it (4 product lines), three evening and one afternoon basket don't: not popular
    # (POPULAR_MIN_BASKETS is 3) — before, the products' baskets summed (4) made it "popular at breakfast"
    two = DayPartProfile.build(np.array([0, 0, 1, 1, 2, 2, 2, 3]), np.array([0, 1, 0, 1, 2, 2, 2, 2]),
                               np.array([1, 1, 1, 1, 1, 2, 3, 1]), np.array([8, 8, 8, 8, 19, 19, 19, 15]), (4, 3))
    assert two.reasons(np.array([3]), np.array([0]), 0, np.ones(1), group) == [None]
    assert two.reasons(np.array([3]), np.array([0]), 0, np.ones(1)) == [None]     # each product: 2 baskets
    assert profile.reasons(np.array([0]), np.array([0]), 0, np.ones(1)) == ["you have had it at breakfast"]
