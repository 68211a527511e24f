"""Follow-ups of the erasure/retention/"allow again" and arrival/erasure locking fixes; each test failed first.

1. The POS API's 422 "Customer erased" told a till an owner could allow a loyalty number the owner had already
   allowed again, and for a retention erasure it said "sales from before then" with "then" the erasure date, not
   the retention period's start: the detail now names the cut-off (``Erased.allowed_from``) and when the number
   was allowed again; the OpenAPI document says a number allowed again is accepted for sales from then on.
2. The dashboard's consent withdrawal did not lock the customer row, so an arrival applied while it was in progress
   (:func:`dangol_cloud.device_events._gone`, ``FOR SHARE``) did not wait for it and was stored under the customer
   whose consent was being withdrawn; and a withdrawal acting on a stale read added a second erasure. It now locks
   the row ``FOR UPDATE`` and reads it again first, as :func:`dangol_cloud.erasure.erase_customer` does.
3. Day-part reasons counted a menu item's baskets as the most of any one of its products (a lower bound): two
   breakfast baskets each with another of its products read "you have had it", not "often". The profile now counts
   distinct baskets per (customer, day, day-part, menu item) when built with the menu-item grouping; a model saved
   without those counts still loads (and keeps the lower bound), and an erasure scrubs them.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

import dangol_cloud.web.customers as customers_mod
import dangol_protocol as proto
from dangol_cloud.erased_refs import lift_erased_ref
from dangol_cloud.erasure import run_retention
from dangol_cloud.events import Outcome, handle_message
from dangol_cloud.models import AuditEntry, CatalogueItem, Customer, Erasure
from dangol_cloud.recommend import Recommender, train
from dangol_cloud.recommend.dayparts import DayPartProfile
from dangol_cloud.recommend.persist import scrub_customers
from dangol_cloud.web.customers import withdraw_consent

from .conftest import OWNER_EMAIL, STORE_TOKEN, add_store_and_device
from .test_mqtt_review_fixes2 import _arrival, _assert_stored_scrubbed, _customer, _Run, _until, _waiting_on_a_lock
from .test_privacy_keys import _add_store, _erase_ref, _post_sale, _web
from .test_reason_counts import CATALOGUE, LINES, SOLD_AS, frame

REPO = Path(__file__).resolve().parents[2]


# --- 1. the POS API's "Customer erased" detail ---------------------------------------------------------------------
def _utc_text(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat()


def test_the_pos_api_names_the_cut_off_of_an_erased_customer(tmp_path, db_url):
    app, database = _web(tmp_path, db_url)
    try:
        _add_store(database, "Main", STORE_TOKEN)
        with database.transaction() as s:
            s.add(CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[]))
        client = app.test_client()
        now = datetime.now(timezone.utc)
        today = f"{now:%Y-%m-%d}"
        # erased at the customer's request: every sale stays out until an owner allows the number again
        assert _post_sale(client, "loyalty-1042", now - timedelta(days=3), "r-1").status_code == 201
        _erase_ref(database, "loyalty-1042")
        refused = _post_sale(client, "loyalty-1042", now, "r-2")
        assert (refused.status_code, refused.json["title"]) == (422, "Customer erased")
        assert refused.json["detail"] == (
            f"customer 'loyalty-1042' was erased on {today}; their sales are not recorded (an owner can allow an "
            "erased loyalty number again on the dashboard's Privacy page); nothing was stored")
        # allowed again: a sale from before then is refused, and the detail no longer says an owner can allow it
        with database.transaction() as s:
            allowed = lift_erased_ref(s, "loyalty-1042", actor=OWNER_EMAIL).allowed_from
        before = _post_sale(client, "loyalty-1042", allowed - timedelta(hours=1), "r-3")
        assert before.status_code == 422
        # before: "...; their sales are not recorded (an owner can allow an erased loyalty number again ...)"
        assert before.json["detail"] == (
            f"customer 'loyalty-1042' was erased on {today} and allowed again on {allowed:%Y-%m-%d}; their sales "
            f"before {_utc_text(allowed)} are not recorded (later ones are); nothing was stored")
        assert _post_sale(client, "loyalty-1042", datetime.now(timezone.utc), "r-4").status_code == 201
        # a retention erasure: the cut-off is the start of the run's retention period, not the erasure's date
        assert _post_sale(client, "loyalty-7", now - timedelta(days=400), "r-5").status_code == 201
        with database.transaction() as s:
            s.execute(Customer.__table__.update().where(Customer.source == "pos", Customer.status == "active")
                      .values(created_at=now - timedelta(days=400)))
        with database.transaction() as s:
            assert len(run_retention(s, 365)) == 1        # loyalty-7 (the re-joined loyalty-1042 bought just now)
        with database.sessions() as s:
            kept_before = s.scalar(select(Erasure.kept_before).where(Erasure.requested_by == "retention"))
        old = _post_sale(client, "loyalty-7", now - timedelta(days=399), "r-6")
        assert old.status_code == 422
        # before: "... by the retention rule; their sales from before then are not recorded; ..."
        assert old.json["detail"] == (
            f"customer 'loyalty-7' was erased on {today} by the retention rule; their sales before "
            f"{_utc_text(kept_before)} are not recorded (later ones are); nothing was stored")
        assert _post_sale(client, "loyalty-7", now - timedelta(days=30), "r-7").status_code == 201
    finally:
        database.dispose()


def test_the_openapi_document_says_a_number_allowed_again_is_accepted_from_then_on():
    doc = json.loads((REPO / "cloud" / "openapi.json").read_text())
    refused = doc["paths"]["/api/v1/purchases"]["post"]["responses"]["422"]["description"]
    for text in (doc["info"]["description"], refused):
        assert "allowed again" in text and "retention" in text, text


# --- 2. consent withdrawal and a concurrent arrival ----------------------------------------------------------------
def _pause_after(monkeypatch, module, name: str):
    """Make ``module.name`` (keyword arguments too) stop after calling the real one until the test says go;
    returns ``(reached, go)`` events."""
    reached, go = threading.Event(), threading.Event()
    real = getattr(module, name)

    def paused(*args, **kwargs):
        answer = real(*args, **kwargs)
        reached.set()
        assert go.wait(20)
        return answer

    monkeypatch.setattr(module, name, paused)
    return reached, go


def _withdraw(db, customer_id: str) -> None:
    with db.transaction() as s:
        withdraw_consent(s, s.get(Customer, customer_id), actor=OWNER_EMAIL)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_arrival_during_a_consent_withdrawal_waits_for_it_and_is_stored_scrubbed(db, monkeypatch):
    """The withdrawal has added its erasure (not committed) when the arrival comes. Before: the arrival did not wait,
    found no erasure and was stored with the customer's id, shown items and confidence."""
    store, device = add_store_and_device(db)
    cid = _customer(db, store, device)
    audited, release = _pause_after(monkeypatch, customers_mod, "audit")   # the erasure is flushed by then
    withdrawal = _Run(lambda: _withdraw(db, cid))
    assert audited.wait(10)
    event_id, payload = _arrival(device, cid)
    arrival = _Run(lambda: handle_message(db, proto.events_topic(device), payload))
    assert _until(lambda: arrival.done.is_set() or _waiting_on_a_lock(db))
    blocked = not arrival.done.is_set()
    release.set()
    withdrawal.finish()
    assert withdrawal.error is None
    assert arrival.finish() is Outcome.STORED, arrival.error
    assert blocked, "the arrival did not wait for the withdrawal's commit"
    _assert_stored_scrubbed(db, event_id, cid)
    with db.sessions() as s:
        assert s.get(Customer, cid).status == "withdrawn"


def test_a_withdrawal_on_a_stale_read_adds_no_second_erasure(db):
    """The route read the customer (consent recorded); another withdrawal committed before it acted. Before: a
    second erasure and ``consent-withdrawn`` entry were added from the stale object."""
    store, device = add_store_and_device(db)
    cid = _customer(db, store, device)
    with db.sessions() as stale_session:
        stale = stale_session.get(Customer, cid)
        assert stale.has_consent
        _withdraw(db, cid)
        with pytest.raises(LookupError, match="no consent"):
            withdraw_consent(stale_session, stale, actor=OWNER_EMAIL)
        stale_session.rollback()
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Erasure)) == 1
        assert s.scalar(select(func.count()).select_from(AuditEntry)
                        .where(AuditEntry.action == "consent-withdrawn")) == 1


# --- 3. day-part baskets per menu item ---------------------------------------------------------------------------
#: Products 0 and 1 are sold as one menu item (group 0); product 2 is its own (group 1).
GROUP = np.array([0, 0, 1])


def _profile() -> DayPartProfile:
    """Customer 0: breakfast baskets on day 1 (product 0) and day 2 (product 1), evening baskets of product 2 on
    days 3 and 4. Customer 1: one breakfast basket with products 0 AND 1 (day 1); customer 2: breakfast, product 1
    (day 1); customer 3: evening baskets of product 2 on days 1-3."""
    lines = [(0, 0, 1, 8), (0, 1, 2, 8), (0, 2, 3, 19), (0, 2, 4, 19), (1, 0, 1, 9), (1, 1, 1, 9), (2, 1, 1, 7),
             (3, 2, 1, 18), (3, 2, 2, 18), (3, 2, 3, 18)]
    u, i, day, hour = (np.array(col) for col in zip(*lines, strict=True))
    return DayPartProfile.build(u, i, day, hour, (4, 3), item_group=GROUP)


def test_a_menu_items_day_part_baskets_are_counted_exactly():
    profile = _profile()
    # before: 1 (the most of one product): "you have had it at breakfast" after two breakfast baskets
    assert profile.own_counts(np.array([0, 0, 1]), np.array([0, 1, 1]), 0, GROUP).tolist() == [2, 2, 1]
    assert profile.reasons(np.array([0]), np.array([1]), 0, np.ones(1), GROUP) == ["you often have it at breakfast"]
    # the menu item's breakfast baskets: 4 (customer 1's basket once, though it held both products), none later
    assert profile.group_item_counts[0].tolist() == [4, 0, 0, 0]
    # customer 3 never had it; 4 breakfast baskets hold it (each product in only 2): popular at breakfast
    # before: None (the most of one product, 2, is under POPULAR_MIN_BASKETS)
    assert profile.reasons(np.array([3]), np.array([0]), 0, np.ones(1), GROUP) == ["popular at breakfast"]
    # products on their own, and a grouping the profile was not built with, keep their per-product counts
    assert profile.own_counts(np.array([0]), np.array([1]), 0).tolist() == [1]
    assert profile.own_counts(np.array([0]), np.array([1]), 0, np.array([0, 0, 0])).tolist() == [1]


def _drop(folder: Path, prefix: str) -> None:
    """Rewrite the saved ``arrays.npz`` without the arrays whose names start with ``prefix`` (an older model)."""
    with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith(prefix)}
    np.savez(folder / "arrays.npz", **arrays)


def test_training_counts_menu_item_baskets_saves_them_and_loads_older_models(tmp_path):
    # c1 had menu item M (products P1, P2) at breakfast on 3 days: P1 on two, P2 on one
    model = train(frame(LINES), CATALOGUE, menu_item_of=SOLD_AS)
    c1 = int(np.flatnonzero(model.customers == "c1")[0])
    p2 = int(np.flatnonzero(model.items == "P2")[0])

    def own(m: Recommender) -> int:
        return int(m.dayparts.own_counts(np.array([c1]), np.array([p2]), 0, m.history.item_group)[0])

    assert own(model) == 3                                                 # before: 2
    folder = model.save(tmp_path / "models")
    assert own(Recommender.load(folder)) == 3
    older = tmp_path / "older"
    older.mkdir()
    for name in ("meta.json", "arrays.npz"):
        (older / name).write_bytes((folder / name).read_bytes())
    _drop(older, "dayparts_group")                                         # saved before exact counts
    _drop(older, "dayparts_item_group")
    loaded = Recommender.load(older)
    assert loaded.dayparts.group_counts is None and own(loaded) == 2       # the lower bound, as before
    assert loaded.recommend(["c1"], n=3, hour=8)["c1"]
    # an erasure scrubs the customer's menu-item baskets too
    assert scrub_customers(folder, ["c1"]) == 1
    scrubbed = Recommender.load(folder).dayparts
    rows = np.arange(4) * scrubbed.n_customers + c1
    assert scrubbed.group_counts[rows].nnz == 0 and scrubbed.counts[rows].nnz == 0
