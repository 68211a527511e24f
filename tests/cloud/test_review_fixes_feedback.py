"""Review fixes, on both backends with real Ta-Feng purchases where data is needed:

1. A menu item shown at the door and bought as a POS product mapped to it is credited to the menu item (as
   Analytics counts it), is no "shown and ignored" soft negative, and trains as a positive of the product bought.
2. Catalogue versions: an unchanged catalogue reuses the newest version; only the newest
   :data:`~dangol_cloud.publishing.KEEP_CATALOGUE_VERSIONS` are kept, and numbers never go backwards.
4. Erasing a customer deletes their day-part picks too (withdrawal: tests/cloud/test_review_fixes_pages.py).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select

from dangol_cloud.analytics import compute
from dangol_cloud.erasure import erase_customer
from dangol_cloud.feedback import credit_shown_picks, shown_and_ignored, training_feedback
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import map_products
from dangol_cloud.models import (CatalogueItem, CatalogueVersion, Customer, Menu, MenuDayparts, ModelVersion,
                                 PickCredit, Purchase, Visit)
from dangol_cloud.publishing import KEEP_CATALOGUE_VERSIONS, ensure_current_version, publish_catalogue_version
from dangol_cloud.training import load_frames

from .conftest import add_store_and_device


def shown_menu_item_bought_as_product(db, ta_feng_slice, store_device: tuple[str, str] | None = None) -> dict:
    """Import the real Ta-Feng slice for one store (``store_device``, default a new one); the product of the last
    basket's first line is mapped to a new menu item "Caffe latte"; a door visit 20 minutes before that basket
    showed "Butter scone" (a menu item the customer did not buy) then "Caffe latte". Returns the ids, the visit and
    how many lines of the product the customer bought within three hours of it."""
    store_id, device_id = store_device or add_store_and_device(db)
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                    store_id=store_id)
    with db.transaction() as s:
        last = s.scalars(select(Purchase).order_by(Purchase.ts.desc(), Purchase.id)).first()
        customer, product, ts = last.customer_id, last.item_id, last.ts
        latte = CatalogueItem(ref="latte", name="Caffe latte", category="Coffee", price=4.0, tags=[])
        scone = CatalogueItem(ref="scone", name="Butter scone", category="Bakery", price=3.0, tags=[])
        s.add_all([latte, scone])
        s.flush()
        assert map_products(s, [product], latte.id, by="owner@cafe.example") == 1
        visit = Visit(event_id=str(uuid.uuid4()), customer_id=customer, device_id=device_id, store_id=store_id,
                      ts=ts - timedelta(minutes=20), shown_items=[scone.id, latte.id])
        s.add(visit)
        s.flush()
        lines = s.scalar(select(func.count()).select_from(Purchase).where(
            Purchase.customer_id == customer, Purchase.item_id == product, Purchase.ts >= visit.ts,
            Purchase.ts <= visit.ts + timedelta(hours=3)))
        return {"customer": customer, "product": product, "latte": latte.id, "scone": scone.id,
                "visit": visit.id, "visit_ts": visit.ts, "lines": lines, "store": store_id}


def test_a_shown_menu_item_bought_as_a_mapped_product_is_credited_to_the_menu_item(db, ta_feng_slice):
    case = shown_menu_item_bought_as_product(db, ta_feng_slice)
    assert case["lines"] >= 1
    with db.sessions() as s:  # Analytics translates the product to its menu item: converted
        seen = compute(s, tz="UTC", since=case["visit_ts"] - timedelta(days=1),
                       until=case["visit_ts"] + timedelta(days=1))
    assert (seen.shown_visits, seen.converted, seen.credits) == (1, 1, case["lines"])
    with db.transaction() as s:
        assert credit_shown_picks(s) == case["lines"]  # before the fix: 0
    with db.transaction() as s:
        assert credit_shown_picks(s) == 0  # one purchase line, one credit
        credits = s.scalars(select(PickCredit)).all()
        assert {(c.customer_id, c.item_id, c.visit_id, c.shown_rank) for c in credits} == {
            (case["customer"], case["latte"], case["visit"], 1)}  # the menu item shown, second on the screen
        bought = {p.item_id for p in s.scalars(select(Purchase).where(
            Purchase.id.in_([c.purchase_id for c in credits])))}
        assert bought == {case["product"]}
        ignored = shown_and_ignored(s)
        feedback = training_feedback(s)
        interactions, items = load_frames(s)
    # the visit's ignored pick is the scone only; the latte was bought (before the fix both were "ignored")
    assert ignored[ignored["customer"] == case["customer"]]["item"].tolist() == [case["scone"]]
    assert feedback.ignored[["customer", "item"]].values.tolist() == [[case["customer"], case["scone"]]]
    # training learns from the product actually bought, an item the recommender has purchases of
    assert feedback.positives[["customer", "item"]].values.tolist() == [[case["customer"], case["product"]]] * case[
        "lines"]
    assert set(feedback.positives["item"]) <= set(interactions["item"]) and case["product"] in set(items["item"])


def test_a_credit_is_kept_for_the_menu_item_shown_when_the_product_is_mapped_elsewhere_later(db, ta_feng_slice):
    case = shown_menu_item_bought_as_product(db, ta_feng_slice)
    with db.transaction() as s:
        assert credit_shown_picks(s) == case["lines"]
        map_products(s, [case["product"]], None, by="owner@cafe.example")  # taken off the menu afterwards
    with db.sessions() as s:
        assert set(s.scalars(select(PickCredit.item_id))) == {case["latte"]}  # what the screen showed
        feedback = training_feedback(s)
    assert set(feedback.positives["item"]) == {case["product"]}


def _versions(db) -> list[int]:
    with db.sessions() as s:
        return list(s.scalars(select(CatalogueVersion.version).order_by(CatalogueVersion.version)))


def test_only_the_newest_catalogue_versions_are_kept_and_numbers_never_go_back(db):
    with db.transaction() as s:
        s.add(CatalogueItem(ref="mocha", name="Mocha", category="Coffee", price=4.0, tags=[]))
    published = []
    for n in range(KEEP_CATALOGUE_VERSIONS + 3):
        with db.transaction() as s:
            s.scalar(select(CatalogueItem)).price = 4.0 + n / 10
            s.flush()
            published.append(publish_catalogue_version(s, published_by="owner").version)
    assert published == list(range(1, KEEP_CATALOGUE_VERSIONS + 4))
    assert _versions(db) == published[-KEEP_CATALOGUE_VERSIONS:]
    with db.transaction() as s:  # unchanged: the newest version is reused, no row is added
        assert ensure_current_version(s, published_by="owner").version == published[-1]
    assert _versions(db) == published[-KEEP_CATALOGUE_VERSIONS:]
    with db.transaction() as s:  # changed: the next number, after the pruned ones too
        s.scalar(select(CatalogueItem)).available = False
        s.flush()
        newest = ensure_current_version(s, published_by="owner")
        assert newest.version == published[-1] + 1 and newest.items[0]["available"] is False
    assert _versions(db) == list(range(published[-1] + 2 - KEEP_CATALOGUE_VERSIONS, published[-1] + 2))


def test_erasing_a_customer_deletes_their_daypart_picks(db, tmp_path):
    with db.transaction() as s:
        item = CatalogueItem(ref="latte", name="Oat latte", price=4.0, tags=[])
        customer = Customer(status="active", source="import")
        s.add_all([item, customer, ModelVersion(version="m1", path=str(tmp_path / "m1"))])
        s.flush()
        pick = [{"item_id": item.id, "score": 1.0, "reasons": []}]
        s.add(Menu(customer_id=customer.id, model_version="m1", picks=pick))
        s.add(MenuDayparts(customer_id=customer.id, model_version="m1", dayparts={"breakfast": pick}))
        cid = customer.id
    with db.transaction() as s:
        erase_customer(s, cid, actor="owner@cafe.example", scrub=False)
    with db.sessions() as s:
        assert s.get(Menu, cid) is None and s.get(MenuDayparts, cid) is None
