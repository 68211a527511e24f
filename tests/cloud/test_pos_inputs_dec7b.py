"""The POS API's inputs (review of 7 December, second round), on SQLite and PostgreSQL with the real app factory:

1. a customer ref is taken without surrounding blanks, as the file importers take it: ``"1042 "`` is the customer
   ``1042`` (never a second one), and the erased ``1042`` stays out when a till sends ``"1042 "``;
2. two tills sending the first sales of the same new loyalty number at once both get 201, one customer; a sale
   that waits on SQLite's write lock past the busy timeout is a 503 with Retry-After, not a 500;
3. a line amount with more decimals than the store's currency uses (4500.5 won) is refused naming the line
   (:func:`dangol_cloud.sale_rules.amount_digits_error`, shared with the importers).
"""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import func, select

import dangol_cloud.web.api as api_module
from dangol_cloud.app import create_app
from dangol_cloud.erased_refs import erased_for
from dangol_cloud.erasure import erase_customer
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, Customer, Purchase, StoreSetting
from dangol_cloud.sale_rules import amount_digits_error
from dangol_cloud.settings import Settings

from .conftest import OWNER_EMAIL, STORE_TOKEN, add_store_and_device, sqlite_write_lock_held, utc


def _client(db, db_url, tmp_path, currency: str = "USD"):
    """A test client of the real app (``CURRENCY`` = ``currency``) with one store and an ``americano``; returns
    ``(client, app, store id)``."""
    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        s.add(CatalogueItem(ref="americano", name="Americano", price=4.5, tags=[]))
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="t", currency=currency,
                        _env_file=None)
    app = create_app(settings, db=db, TESTING=True)
    return app.test_client(), app, store_id


def post(client, customer: str, key: str, *, amounts: tuple[float | None, ...] = (None,)):
    lines = [{"item": "americano"} | ({} if a is None else {"amount": a}) for a in amounts]
    return client.post("/api/v1/purchases", data=json.dumps(
        {"customer": customer, "ts": "2026-01-05T08:31:00+00:00", "lines": lines}),
        headers={"Content-Type": "application/json", "Idempotency-Key": key, "Authorization": f"Bearer {STORE_TOKEN}"})


def _import_csv(db, tmp_path, store_id: str, customer_cell: str) -> None:
    f = tmp_path / "sales.csv"
    f.write_text(f"customer,item,quantity,timestamp\n{customer_cell},americano,1,2026-01-04 08:00\n")
    with db.transaction() as s:
        import_rows(s, parse_purchases(f, "csv"), source="csv", key_prefix="csv", store_id=store_id)


def _customers(db) -> list[str]:
    with db.sessions() as s:
        return sorted(c.external_ref for c in s.scalars(select(Customer)))


def _purchases(db) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(Purchase))


# --- 1. blanks around a customer ref ---------------------------------------------------------------------------------
def test_a_ref_with_blanks_is_the_customer_the_import_knows(db, db_url, tmp_path):
    client, _app, store_id = _client(db, db_url, tmp_path)
    sent = post(client, " 1042 ", "k1")
    assert sent.status_code == 201, sent.json
    _import_csv(db, tmp_path, store_id, '"1042 "')
    assert post(client, "1042\t", "k2").status_code == 201
    assert _customers(db) == ["1042"]
    with db.sessions() as s:
        assert set(s.scalars(select(Purchase.customer_id))) == {sent.json["customer_id"]}


def test_an_erased_ref_sent_with_blanks_stays_out(db, db_url, tmp_path):
    client, _app, store_id = _client(db, db_url, tmp_path)
    _import_csv(db, tmp_path, store_id, "1042")
    with db.transaction() as s:
        erase_customer(s, s.scalar(select(Customer.id)), actor=OWNER_EMAIL)
    for n, ref in enumerate(("1042", "1042 ", " 1042")):
        refused = post(client, ref, f"k{n}")
        assert refused.status_code == 422 and refused.json["title"] == "Customer erased", (ref, refused.json)
        assert "'1042'" in refused.json["detail"]
    assert _customers(db) == []
    with db.sessions() as s:  # the function itself, as other callers use it
        assert erased_for(s, " 1042 ", utc(2026, 1, 5), existing_id=False) is not None


def test_a_ref_of_blanks_only_is_refused_naming_the_field(db, db_url, tmp_path):
    client, _app, _store = _client(db, db_url, tmp_path)
    refused = post(client, "   ", "k1")
    assert refused.status_code == 422
    assert [e["loc"] for e in refused.json["errors"]] == ["customer"]
    assert _customers(db) == [] and _purchases(db) == 0


# --- 2. concurrency ------------------------------------------------------------------------------------------------
def test_two_tills_sending_a_new_loyalty_number_at_once_share_one_customer(db, db_url, tmp_path, monkeypatch):
    _client_, app, _store = _client(db, db_url, tmp_path)
    barrier = threading.Barrier(2, timeout=10)
    real = api_module.erased_for

    def erased_for_after_both_looked(*args, **kwargs):  # both found no customer before either creates one
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(api_module, "erased_for", erased_for_after_both_looked)
    results: dict[str, object] = {}

    def run(key: str) -> None:
        try:
            answer = post(app.test_client(), "loyalty-777", key)
            results[key] = (answer.status_code, answer.json)
        except Exception as exc:  # noqa: BLE001 - TESTING propagates the view's error: recorded, asserted below
            results[key] = ("raised", repr(exc)[:300])

    threads = [threading.Thread(target=run, args=(k,)) for k in ("till-1-sale-1", "till-2-sale-1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r[0] for r in results.values()] == [201, 201], results
    assert len({r[1]["customer_id"] for r in results.values()}) == 1
    assert _customers(db) == ["loyalty-777"] and _purchases(db) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_sale_waiting_on_a_locked_sqlite_database_is_a_503_with_retry_after(db, db_url, tmp_path):
    client, _app, _store = _client(db, db_url, tmp_path)
    with sqlite_write_lock_held(db):  # an import in another process holds the write lock
        busy = post(client, "loyalty-1", "k1")
    assert busy.status_code == 503, busy.get_data(as_text=True)[:300]
    assert busy.mimetype == "application/problem+json"
    assert int(busy.headers["Retry-After"]) > 0
    assert "busy with another write" in busy.json["detail"] and "nothing was stored" in busy.json["detail"]
    assert "database is locked" not in busy.get_data(as_text=True)
    assert _customers(db) == [] and _purchases(db) == 0
    assert post(client, "loyalty-1", "k1").status_code == 201  # the retry, once the write lock is free


# --- 3. an amount's decimals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("amount", "currency", "problem"), [
    (4500.5, "KRW", "4500.5 has more decimals than KRW uses (0)"),
    (0.4, "KRW", "0.4 has more decimals than KRW uses (0)"),
    (2.999, "USD", "2.999 has more decimals than USD uses (2)"),
    (9_999_999.995, "USD", "9999999.995 has more decimals than USD uses (2)"),
    (1.2345, "BHD", "1.2345 has more decimals than BHD uses (3)"),
    (4500, "KRW", None), (4500.0, "JPY", None), (2.99, "USD", None), (0.1 + 0.2, "USD", None),
    (19.99 * 3, "EUR", None), (1.234, "BHD", None), (4.5, "WON", None),  # WON: not ISO 4217, two decimals
])
def test_amount_digits_error(amount, currency, problem):
    assert amount_digits_error(amount, currency) == problem


def test_an_amount_finer_than_the_store_currency_is_refused_naming_the_line(db, db_url, tmp_path):
    client, _app, store_id = _client(db, db_url, tmp_path, currency="KRW")
    refused = post(client, "L-1", "k1", amounts=(4500, 4500.5, 0.4))
    assert refused.status_code == 422
    assert refused.json["errors"] == [
        {"loc": "lines.1.amount", "msg": "4500.5 has more decimals than KRW uses (0)"},
        {"loc": "lines.2.amount", "msg": "0.4 has more decimals than KRW uses (0)"}]
    assert _customers(db) == [] and _purchases(db) == 0
    assert post(client, "L-1", "k2", amounts=(4500, None)).status_code == 201
    with db.transaction() as s:  # the store sells in dollars from now on: its own currency counts, not CURRENCY
        s.add(StoreSetting(store_id=store_id, currency="USD"))
    assert post(client, "L-1", "k3", amounts=(2.99, 0.1 + 0.2)).status_code == 201
    assert post(client, "L-1", "k4", amounts=(2.999,)).json["errors"][0]["loc"] == "lines.0.amount"
    assert _purchases(db) == 4
