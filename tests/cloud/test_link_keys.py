"""Linking a loyalty customer to a door enrolment (:mod:`dangol_cloud.web.customer_link`) and the idempotency keys,
on real Ta-Feng lines, SQLite and PostgreSQL.

An imported line's key is a keyed hash of its content, which names the customer (:mod:`dangol_cloud.purchase_keys`).
The link moved the loyalty customer's lines onto the door enrolment's id but kept their keys, made with the loyalty
id: re-importing the same file — its loyalty number now resolves to the door enrolment — stored that history a
second time. The POS API's remembered requests kept naming the deleted loyalty id: a till's retry of a sale made
before the link was answered with a customer that no longer exists, and an erasure of the door enrolment left
those requests behind (a retry was still answered 200 instead of "Customer erased").
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import func, select

from dangol_cloud.crypto import Keyring
from dangol_cloud.db import Database
from dangol_cloud.erasure import erase_customer
from dangol_cloud.models import Customer, Purchase, external_ref_hash
from dangol_cloud.purchase_keys import keyed, moved_keys
from dangol_cloud.web.customer_link import link_customers

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, STORE_TOKEN
from .test_owner_link import _door_enrolment
from .test_privacy_keys import _add_store, _count, _import, _slice, _web

#: A real Ta-Feng household: 16 lines among the file's first 300 rows, 4 of them (rows 1, 2, 10, 17) among the first
#: 60; rows 2 and 71 are two of its lines.
LOYALTY = "01607000"


def _ta_feng_rows(data_dir: Path, dst: Path, rows: tuple[int, ...], customer: str) -> Path:
    """Header + the real Ta-Feng data rows ``rows`` (1-based) with their CUSTOMER_ID replaced by ``customer`` (the
    same sale lines of another customer, named by their Dangol id)."""
    src = data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv"
    with src.open() as fin:
        lines = [line for _n, line in zip(range(max(rows) + 1), fin)]
    body = []
    for n in rows:
        fields = lines[n].split(",")
        assert fields[1] == LOYALTY
        body.append(",".join([fields[0], customer, *fields[2:]]))
    dst.write_text(lines[0] + "".join(body))
    return dst


def _lines_of(db: Database, customer_id: str) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == customer_id))


def _link(db: Database, door: str, loyalty: str):
    with db.transaction() as s:
        return link_customers(s, s.get(Customer, door), s.get(Customer, loyalty), actor=OWNER_EMAIL)


def test_moved_keys_keep_each_occurrence_and_give_a_clash_the_next_free_one():
    """A store line (occurrence 0), its history copy stored as occurrence 1 (the store holds 0) and a line identical
    to one the door enrolment has: the first two keep their occurrences under the new customer, the third takes the
    next free one; a POS line is left alone."""
    key = keyed(Keyring(DEV_KEY_BYTES))
    store = ("s1", "loyalty", "520503", "4712936888817", "2000-10-31T16:00:00.000000", 1.0, 68.0)  # Ta-Feng row 1
    history = (None, *store[1:])
    other = (None, "loyalty", "520473", "4711713290201", "2000-10-31T16:00:00.000000", 1.0, 42.0)  # row 2

    def door(content):
        return (content[0], "door", *content[2:])

    rows = [(1, key("ta-feng", store, 0), store), (2, key("ta-feng", history, 1), history),
            (3, key("ta-feng", other, 0), other), (4, "pos:s1:ab12:0", store)]
    taken = {key("ta-feng", door(other), 0), "pos:s1:cd34:0"}
    assert moved_keys(rows, "door", key, taken) == {1: key("ta-feng", door(store), 0),
                                                    2: key("ta-feng", door(history), 1),
                                                    3: key("ta-feng", door(other), 1)}


def test_reimporting_after_a_link_adds_nothing_and_loses_nothing(db, data_dir, tmp_path):
    store_id = _add_store(db)
    store_file = _slice(data_dir, tmp_path / "store.csv", 1, 60)
    history = _slice(data_dir, tmp_path / "history.csv", 1, 300, repeat=1)  # row 1 twice: the second copy is
    assert _import(db, store_file, store_id).inserted == 60                 # history's occurrence 1 (0: the store's)
    assert (_import(db, history).inserted, _count(db)) == (241, 301)
    door = _door_enrolment(db)
    own = _ta_feng_rows(data_dir, tmp_path / "door.csv", (2, 71), door)  # two of the same lines under the door's id
    assert _import(db, own).inserted == 2
    with db.sessions() as s:
        loyalty = s.scalar(select(Customer.id).where(Customer.external_ref_hash == external_ref_hash(s, LOYALTY)))
    assert _lines_of(db, loyalty) == 17  # rows 1, 2, 10, 17 in the store, 12 more and row 1's second copy as history
    report = _link(db, door, loyalty)
    assert report.purchases == 17 and _lines_of(db, door) == 19 and _count(db) == 303  # row 71 twice: both kept
    for path, store in ((history, None), (store_file, store_id), (own, None), (own, store_id), (history, store_id)):
        again = _import(db, path, store)
        assert again.inserted == 0 and not again.errors, (path.name, store, again)
    assert _count(db) == 303 and _lines_of(db, door) == 19


def test_a_pos_retry_after_the_link_is_answered_with_the_door_enrolment(tmp_path, db_url, data_dir):
    app, database = _web(tmp_path, db_url)
    try:
        _add_store(database, "Main", STORE_TOKEN)
        _import(database, _slice(data_dir, tmp_path / "tf.csv", 1, 60))
        door = _door_enrolment(database)
        client = app.test_client()
        sale = {"customer": LOYALTY, "ts": (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat(),
                "lines": [{"item": "520503", "product_id": "4712936888817", "quantity": 1, "amount": 68}]}

        def post():
            return client.post("/api/v1/purchases", json=sale,
                               headers={"Authorization": f"Bearer {STORE_TOKEN}", "Idempotency-Key": "till-7-0042"})

        first = post()
        assert first.status_code == 201, first.get_data(as_text=True)
        loyalty = first.json["customer_id"]
        assert _lines_of(database, loyalty) == 5  # rows 1, 2, 10, 17 and the till's sale
        _link(database, door, loyalty)
        total = _count(database)
        retry = post()
        assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json == {**first.json, "customer_id": door}
        assert _count(database) == total and _lines_of(database, door) == 5
        with database.sessions() as s:
            assert {s.get(Purchase, pid).customer_id for pid in retry.json["purchase_ids"]} == {door}
        with database.transaction() as s:  # the request names the door enrolment: its erasure forgets it
            erase_customer(s, door, actor=OWNER_EMAIL, reason="request")
        after = post()
        assert after.status_code == 422 and after.json["title"] == "Customer erased", after.get_data(as_text=True)
        assert _count(database) == total - 5
    finally:
        database.dispose()
