"""POS API Idempotency-Key on SQLite and PostgreSQL: every key the API accepts (1-200 characters) is stored and
deduplicated — the purchases carry a fixed-length digest of it, never the key itself — and sales stored before
(purchase keys ``pos:<store>:<key>:<n>``) are still replayed, not doubled, on a retry."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select, update

from dangol_cloud.models import Purchase

from .test_cloud_api import SALE, api, post  # noqa: F401  (api: the fixture)
from .test_cloud_data import counts


@pytest.mark.parametrize("length", [1, 150, 159, 200])
def test_every_accepted_key_length_stores_the_sale_once(api, db, length):  # noqa: F811
    client, store_id = api
    key = "k" * (length - 1) + "é"
    first = post(client, SALE, key=key)
    assert first.status_code == 201, first.get_data(as_text=True)
    retry = post(client, SALE, key=key)
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true" and retry.json == first.json
    with db.sessions() as s:
        stored = s.scalars(select(Purchase.idempotency_key).order_by(Purchase.id)).all()
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    assert stored == [f"pos:{store_id}:{digest}:0", f"pos:{store_id}:{digest}:1"]


def test_keys_differing_in_their_last_character_are_two_sales(api, db):  # noqa: F811
    client, _ = api
    assert post(client, SALE, key="r" * 199 + "1").status_code == 201
    assert post(client, SALE, key="r" * 199 + "2").status_code == 201
    assert counts(db)["purchases"] == 4


@pytest.mark.parametrize("key", ["k" * 201, "  ", "sale\t1"])
def test_a_key_out_of_bounds_is_refused_with_400_and_stores_nothing(api, db, key):  # noqa: F811
    client, _ = api
    response = post(client, SALE, key=key)
    assert response.status_code == 400 and "Idempotency-Key" in response.json["title"]
    assert counts(db)["purchases"] == 0


def test_a_sale_stored_with_a_key_in_the_old_format_is_replayed(api, db):  # noqa: F811
    client, store_id = api
    first = post(client, SALE, key="receipt-0042")
    assert first.status_code == 201
    with db.transaction() as s:  # as stored before the digest: pos:<store>:<client key>:<n>
        for n, pid in enumerate(first.json["purchase_ids"]):
            s.execute(update(Purchase).where(Purchase.id == pid)
                      .values(idempotency_key=f"pos:{store_id}:receipt-0042:{n}"))
    retry = post(client, SALE, key="receipt-0042")
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true" and retry.json == first.json
    changed = post(client, {**SALE, "customer": "someone-else"}, key="receipt-0042")
    assert changed.status_code == 422
    assert counts(db)["purchases"] == 2
