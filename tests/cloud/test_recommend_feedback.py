"""Recommender feedback on real Ta-Feng purchases: likes/dislikes through the API, "shown pick bought" credits,
and their use at the next training (a disliked item never comes back for that customer)."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from dangol_cloud.app import create_app
from dangol_cloud.feedback import credit_shown_picks, training_feedback
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Menu, PickCredit, PickOpinion, Purchase, Visit
from dangol_cloud.settings import Settings
from dangol_cloud.training import TRAIN_STEPS, refresh_menus, train_from_database

from .conftest import STORE_TOKEN, _database, add_store_and_device


@pytest.fixture
def trained(sqlite_url, tmp_path, ta_feng_slice):
    """The first 3,000 real Ta-Feng rows imported into SQLite as the one store's sales (feedback comes only
    from a store where the customer is known), trained once."""
    db = _database(sqlite_url)
    store_id, _ = add_store_and_device(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="test-secret",
                        _env_file=None)
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                    store_id=store_id)
    steps: list[str] = []
    train_from_database(db, settings, progress=steps.append)
    assert tuple(steps) == TRAIN_STEPS
    yield db, settings, store_id
    db.dispose()


def menus(db) -> dict[str, list[str]]:
    with db.sessions() as s:
        return {m.customer_id: [p["item_id"] for p in m.picks] for m in s.scalars(select(Menu))}


def opinion(client, body, token=STORE_TOKEN):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/api/v1/feedback", data=json.dumps(body), headers=headers)


def test_a_disliked_item_is_never_offered_to_that_customer_again(trained) -> None:
    db, settings, _ = trained
    before = menus(db)
    # the item on most menus, and a customer who has it first
    counts: dict[str, int] = {}
    for picks in before.values():
        for item in picks:
            counts[item] = counts.get(item, 0) + 1
    item = max(counts, key=counts.get)
    customer = next(c for c, picks in before.items() if picks and picks[0] == item)
    client = create_app(settings, db=db, TESTING=True).test_client()
    response = opinion(client, {"customer": customer, "item": item, "opinion": "dislike"})
    assert response.status_code == 200, response.json
    with db.sessions() as s:
        assert s.get(PickOpinion, (customer, item)).opinion == "dislike"

    train_from_database(db, settings)
    after = menus(db)
    assert item not in after[customer] and len(after[customer]) == len(before[customer])
    # only that customer loses it (retraining moves a few menus either way: LightFM's Hogwild threads)
    assert sum(item in picks for picks in after.values()) >= 0.9 * counts[item]
    assert refresh_menus(db, settings, [customer]) == 1  # menus written without retraining obey it too
    assert item not in menus(db)[customer]

    assert opinion(client, {"customer": customer, "item": item, "opinion": "none"}).status_code == 200
    train_from_database(db, settings)
    assert item in menus(db)[customer]  # forgotten: the favourite is back


def test_feedback_endpoint_refuses_bad_input(trained) -> None:
    db, settings, _ = trained
    client = create_app(settings, db=db, TESTING=True).test_client()
    customer, item = next((c, p[0]) for c, p in menus(db).items() if p)
    assert opinion(client, {"customer": customer, "item": item, "opinion": "like"}, token=None).status_code == 401
    assert opinion(client, {"customer": customer, "item": item, "opinion": "love"}).status_code == 422
    assert opinion(client, {"customer": customer, "item": item, "opinion": "like", "x": 1}).status_code == 422
    response = opinion(client, {"customer": customer, "item": "no-such-item", "opinion": "like"})
    assert response.status_code == 422 and "no-such-item" in response.json["detail"]
    with db.sessions() as s:
        assert s.scalars(select(PickOpinion)).all() == []


def test_shown_pick_bought_is_credited_once_to_the_visit_it_was_shown_at(trained) -> None:
    db, settings, store_id = trained
    with db.sessions() as s:
        last = s.scalars(select(Purchase).order_by(Purchase.ts.desc(), Purchase.id)).first()
        customer, ts = last.customer_id, last.ts
        bought = [p.item_id for p in s.scalars(select(Purchase).where(Purchase.customer_id == customer,
                                                                      Purchase.ts == ts))]
    shown_first, not_shown = bought[0], None
    with db.transaction() as s:
        others = {p.item_id for p in s.scalars(select(Purchase).limit(200))} - set(bought)
        not_shown = sorted(others)[0]
        # an earlier visit showed the bought item second; the latest visit before the purchase shows it first
        s.add(Visit(event_id="e-early", customer_id=customer, store_id=store_id, ts=ts - timedelta(hours=2),
                    shown_items=[not_shown, shown_first]))
        s.add(Visit(event_id="e-late", customer_id=customer, store_id=store_id, ts=ts - timedelta(minutes=20),
                    shown_items=[shown_first]))
        s.add(Purchase(customer_id=customer, item_id=not_shown, quantity=1, ts=ts + timedelta(hours=4),
                       store_id=store_id, source="test", idempotency_key="late-purchase"))  # > 3 h after: no credit
    with db.transaction() as s:
        assert credit_shown_picks(s) == 1
    with db.transaction() as s:
        assert credit_shown_picks(s) == 0  # one purchase, one credit
        credit = s.scalars(select(PickCredit)).one()
        late = s.scalar(select(Visit).where(Visit.event_id == "e-late"))
        assert (credit.customer_id, credit.item_id, credit.visit_id, credit.shown_rank) == (
            customer, shown_first, late.id, 0)
        feedback = training_feedback(s)
    assert feedback.positives[["customer", "item"]].values.tolist() == [[customer, shown_first]]
    assert feedback.dislikes == {}
    # shown and ignored (soft negatives): the early visit's other pick; not the bought one, shown there too within
    # 3 h of the purchase (credited to the late visit); nothing of the late visit
    assert feedback.ignored[["customer", "item"]].values.tolist() == [[customer, not_shown]]
    assert (feedback.ignored["ts"] == pd.Timestamp(ts - timedelta(hours=2)).tz_convert(None)).all()


def test_new_regular_with_a_recorded_segment_gets_the_segment_list(trained, ta_feng_slice) -> None:
    from datetime import datetime, timezone

    from dangol_cloud.models import Customer, CustomerSegment, external_ref_hash
    from dangol_cloud.recommend import load_segments

    db, settings, _ = trained
    segments = load_segments(ta_feng_slice, "ta-feng")  # the real AGE_GROUP / PIN_CODE of the imported customers
    with db.transaction() as s:
        for rec in segments.itertuples(index=False):
            ref = external_ref_hash(s, rec.customer)
            customer = s.scalar(select(Customer).where(Customer.external_ref_hash == ref))
            s.add(CustomerSegment(customer_id=customer.id, age_group=rec.AGE_GROUP or None, area=rec.PIN_CODE or None))
        age = segments["AGE_GROUP"].value_counts().index[0]
        newcomer = Customer(display_name="Newcomer", status="active", source="dashboard", consent_by="staff",
                            consent_at=datetime(2026, 1, 2, tzinfo=timezone.utc), consent_text_version="1")
        s.add(newcomer)
        s.flush()
        s.add(CustomerSegment(customer_id=newcomer.id, age_group=age))
        newcomer_id = newcomer.id
    train_from_database(db, settings)
    with db.sessions() as s:
        menu = s.get(Menu, newcomer_id)
    assert menu.picks and menu.picks[0]["reasons"] == [f"popular with customers like you ({age})"]
