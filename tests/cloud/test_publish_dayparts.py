"""Per-customer menus carry the picks of each day-part (issue 12 item 3) through ``menu/1``'s ``dayparts``."""

from __future__ import annotations

from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud.models import CatalogueItem, MenuDayparts, Store
from dangol_cloud.publishing import menu_messages

from .test_cloud_mqtt import _seed


def _menus(db):
    with db.sessions() as s:
        stores = list(s.scalars(select(Store)))
        return [proto.parse_payload(topic, payload) for topic, payload, _ in menu_messages(s, stores)]


def test_menus_carry_the_dayparts_filtered_like_the_all_day_picks(db):
    _, _, mina, _, latte = _seed(db)
    assert [m.dayparts for m in _menus(db)] == [None]  # no day-part rows written by training: no slots
    with db.transaction() as s:
        croissant = CatalogueItem(ref="croissant", name="Croissant", category="Bakery", price=2.5)
        scone = s.scalar(select(CatalogueItem).where(CatalogueItem.ref == "scone"))  # sold out
        s.add(croissant)
        s.flush()
        s.add(MenuDayparts(customer_id=mina, model_version="m-test", dayparts={
            "breakfast": [{"item_id": croissant.id, "score": 3.0, "reasons": ["your usual at breakfast"]},
                          {"item_id": scone.id, "score": 2.0, "reasons": []}],
            "afternoon": [{"item_id": latte, "score": 2.0, "reasons": []}],
            "brunch": [{"item_id": latte, "score": 9.0, "reasons": []}]}))   # not a day-part: left out
        croissant_id = croissant.id
    (menu,) = _menus(db)
    assert {part: [p.item_id for p in picks] for part, picks in menu.dayparts.items()} == {
        "breakfast": [croissant_id], "afternoon": [latte]}
    assert menu.dayparts["breakfast"][0].reasons == ["your usual at breakfast"]
    assert [p.item_id for p in menu.picks_at(8)] == [croissant_id]
    assert [p.item_id for p in menu.picks_at(15)] == [latte]
    assert [p.item_id for p in menu.picks_at(12)] == [latte]   # lunch has no slot: the all-day picks


def test_a_customer_enrolled_at_one_store_gets_a_menu_there_only(db):
    """Face templates never leave the store that enrolled them, so only that store's door can greet the
    customer: the menu (first name, picks) goes there, not to every store of the chain (privacy; retained
    messages grow with customers, not customers × stores). A customer with no origin store (created on the
    dashboard, not yet enrolled at a door) still goes to every store."""
    from dangol_cloud.models_ops import CustomerOrigin

    home, _, mina, _, _ = _seed(db)
    with db.transaction() as s:
        other = Store(name="Second café")
        s.add(other)
        s.flush()
        other_id = other.id
        s.add(CustomerOrigin(customer_id=mina, store_id=home, device_id=None))
    assert [(str(m.store_id), str(m.customer_id)) for m in _menus(db)] == [(home, mina)]
    with db.transaction() as s:  # the enrolling store is removed: the origin's store is gone (SET NULL)
        s.get(CustomerOrigin, mina).store_id = None
    assert sorted(str(m.store_id) for m in _menus(db)) == sorted([home, other_id])
