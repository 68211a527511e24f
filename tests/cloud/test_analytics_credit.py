"""The analytics page's "shown → bought" figure credits purchases as the training does
(:mod:`dangol_cloud.feedback_credit`), on SQLite and PostgreSQL:

1. A purchase is credited to the latest visit within the window that *showed* the item, not merely the latest
   visit (Ann: shown Latte, then 10 minutes later shown Scone, buys Latte: the first visit converted).
2. ``TIMEZONE`` unset and a store without a zone of its own (Harbour): its imported naive sale times are not the
   doors' UTC: they credit nothing, as in training; its door visits still count (until the data review they were
   left out too, which hid the POS API sales the training credits there); the page names the store, since it has
   imported sales in the range (owner; staff only for their stores).
3. On the same database the figure equals what the training credits (:func:`credit_shown_picks`), before and
   after the training stored its credits — on real Ta-Feng baskets with two door visits each.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import timedelta

from sqlalchemy import func, select

from dangol_cloud.analytics import compute
from dangol_cloud.feedback import credit_shown_picks
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import map_products
from dangol_cloud.models import CatalogueItem, Customer, PickCredit, Purchase, Store, User, Visit
from dangol_cloud.models_ops import StoreSetting, UserStore
from dangol_cloud.security import hash_password

from .conftest import OWNER_EMAIL, OWNER_PASSWORD, utc
from .test_web_hardening import STAFF_EMAIL, STAFF_PASSWORD, make_site, sign_in  # noqa: F401 - the fixture

DAY = utc(2026, 3, 2)


def tiny_history(db) -> dict:
    """Main Street (zone Asia/Seoul) and Harbour (no zone). Ann at Main: 00:00 UTC shown Latte, 00:10 shown Scone,
    buys Latte at 00:30 (an imported line, its time known). Bob at Harbour: 09:25 UTC shown Latte; an imported
    Latte at "09:30" (the file's wall clock, stored as UTC: really 00:30 UTC in Seoul, before the visit)."""
    with db.transaction() as s:
        main, harbour = Store(name="Main Street", ref="main"), Store(name="Harbour", ref="harbour")
        latte, scone = CatalogueItem(ref="latte", name="Latte", tags=[]), CatalogueItem(ref="scone", name="Scone",
                                                                                         tags=[])
        ann, bob = Customer(display_name="Ann"), Customer(display_name="Bob")
        s.add_all([main, harbour, latte, scone, ann, bob])
        s.flush()
        s.add(StoreSetting(store_id=main.id, timezone="Asia/Seoul"))
        for event, who, store, ts, shown in (("v1", ann, main, DAY, [latte]),
                                             ("v2", ann, main, DAY + timedelta(minutes=10), [scone]),
                                             ("vh", bob, harbour, DAY + timedelta(hours=9, minutes=25), [latte])):
            s.add(Visit(event_id=event, customer_id=who.id, store_id=store.id, ts=ts,
                        shown_items=[i.id for i in shown]))
        for key, who, store, ts in (("a", ann, main, DAY + timedelta(minutes=30)),
                                    ("b", bob, harbour, DAY + timedelta(hours=9, minutes=30))):
            s.add(Purchase(customer_id=who.id, item_id=latte.id, quantity=1, ts=ts, store_id=store.id,
                           source="csv", idempotency_key=key))
        return {"main": main.id, "harbour": harbour.id, "latte": latte.id}


def _shown_bought(a) -> tuple[int, int, int]:
    return a.shown_visits, a.converted, a.credits


def test_a_purchase_credits_the_latest_visit_that_showed_it_and_unknown_clocks_are_left_out(db):
    ids = tiny_history(db)
    window = {"since": DAY - timedelta(days=1), "until": DAY + timedelta(days=1)}
    with db.sessions() as s:
        zoned = compute(s, tz="UTC", **window)  # TIMEZONE set (the default here): every store's times compare
    # before: (3, 1, 1): Ann's purchase went to her latest visit, which showed Scone, and counted for nothing
    assert _shown_bought(zoned) == (3, 2, 2) and zoned.stores_without_clock == []
    with db.sessions() as s:
        unset = compute(s, tz="UTC", timezone_set=False, **window)
        staff = compute(s, tz="UTC", timezone_set=False, store_id=[ids["main"]], **window)
    # before: Bob's naive "09:30" credited his 09:25 UTC visit; now Harbour's imported sale credits nothing (its
    # visit counts, as a visit with picks shown), and Harbour is named
    assert _shown_bought(unset) == (3, 1, 1) and unset.pick_rate == 1 / 3
    assert unset.stores_without_clock == ["Harbour"]
    assert _shown_bought(staff) == (2, 1, 1) and staff.stores_without_clock == []  # staff of Main only
    with db.transaction() as s:  # the training, with TIMEZONE unset
        assert credit_shown_picks(s, timezone_set=False) == unset.credits
    with db.sessions() as s:
        assert s.scalars(select(Visit.event_id).join(PickCredit, PickCredit.visit_id == Visit.id)).all() == ["v1"]
        again = compute(s, tz="UTC", timezone_set=False, **window)  # the stored credit, counted once
    assert _shown_bought(again) == (3, 1, 1)


def _summary(client) -> dict:
    rows = list(csv.reader(io.StringIO(client.get("/analytics/summary.csv?all=1").get_data(as_text=True))))
    return dict(zip(rows[0], rows[1]))


def test_the_page_notes_stores_without_a_clock_and_keeps_staff_scope(make_site):  # noqa: F811
    app, db = make_site()  # TIMEZONE left at its default
    ids = tiny_history(db)
    with db.transaction() as s:
        staff = User(email=STAFF_EMAIL, password_hash=hash_password(STAFF_PASSWORD), role="staff")
        s.add(staff)
        s.flush()
        s.add(UserStore(user_id=staff.id, store_id=ids["main"]))
    owner = app.test_client()
    assert sign_in(owner, OWNER_EMAIL, OWNER_PASSWORD).status_code == 302
    page = owner.get("/analytics/?all=1").get_data(as_text=True)
    assert 'id="clock-note"' in page and "Harbour" in page.split('id="clock-note"')[1].split("</p>")[0]
    got = _summary(owner)
    assert (got["shown_visits"], got["shown_visits_bought"], got["credited_lines"]) == ("3", "1", "1")
    assert 'id="clock-note"' not in owner.get(f"/analytics/?all=1&store={ids['main']}").get_data(as_text=True)
    barista = app.test_client()
    assert sign_in(barista, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    page = barista.get("/analytics/?all=1").get_data(as_text=True)
    assert 'id="clock-note"' not in page and "Harbour" not in page
    got = _summary(barista)
    assert (got["shown_visits"], got["shown_visits_bought"], got["credited_lines"]) == ("2", "1", "1")


def test_the_figure_equals_the_trainings_credits_on_real_baskets(db, ta_feng_slice):
    """Every 7th real Ta-Feng basket gets two door visits: 2 h before, showing its first item (for the first
    basket as the menu item its product is mapped to) and an item not in it; 15 min before, showing items not in
    it (every other basket: also its second item). The later visit is the latest, but only sometimes showed
    what was bought."""
    with db.transaction() as s:
        store = Store(name="Taipei", ref="tp")
        s.add(store)
        s.flush()
        s.add(StoreSetting(store_id=store.id, timezone="Asia/Taipei"))
        store_id = store.id
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                    store_id=store_id, tz="Asia/Taipei")
    with db.transaction() as s:
        baskets: dict[tuple, list[str]] = {}
        for cid, ts, item in s.execute(select(Purchase.customer_id, Purchase.ts, Purchase.item_id)
                                       .order_by(Purchase.customer_id, Purchase.ts, Purchase.id)):
            baskets.setdefault((cid, ts), []).append(item)
        catalogue = sorted(s.scalars(select(CatalogueItem.id)))
        chosen = [(k, v) for n, (k, v) in enumerate(sorted(baskets.items())) if n % 7 == 0 and len(set(v)) >= 2]
        latte = CatalogueItem(ref="latte", name="Caffe latte", tags=[])
        s.add(latte)
        s.flush()
        map_products(s, [chosen[0][1][0]], latte.id, by="owner@cafe.example")
        for n, ((cid, ts), items) in enumerate(chosen):
            others = [i for i in catalogue if i not in items][n % 50:n % 50 + 2]
            first = latte.id if n == 0 else items[0]
            second = list(dict.fromkeys(items))[1]
            s.add(Visit(event_id=str(uuid.uuid4()), customer_id=cid, store_id=store_id,
                        ts=ts - timedelta(hours=2), shown_items=[first, others[0]]))
            s.add(Visit(event_id=str(uuid.uuid4()), customer_id=cid, store_id=store_id,
                        ts=ts - timedelta(minutes=15), shown_items=others[1:] + ([second] if n % 2 else [])))
        first_ts = min(ts for (_, ts), _ in chosen) - timedelta(days=1)
        last_ts = max(ts for (_, ts), _ in chosen) + timedelta(days=1)
    with db.sessions() as s:
        before = compute(s, tz="Asia/Taipei", since=first_ts, until=last_ts)
    with db.transaction() as s:
        credited = credit_shown_picks(s)
    with db.sessions() as s:
        visits = s.scalar(select(func.count(func.distinct(PickCredit.visit_id))))
        early = sum(bought - shown > timedelta(hours=1) for bought, shown in s.execute(
            select(Purchase.ts, Visit.ts).join(PickCredit, PickCredit.purchase_id == Purchase.id)
            .join(Visit, Visit.id == PickCredit.visit_id)))
        after = compute(s, tz="Asia/Taipei", since=first_ts, until=last_ts)
    assert len(chosen) >= 20 and early >= len(chosen)  # every basket's first item: to the visit 2 h before
    assert (before.credits, before.converted) == (credited, visits)  # before: only the later visits' credits
    assert _shown_bought(after) == _shown_bought(before) == (2 * len(chosen), visits, credited)
