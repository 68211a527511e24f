"""Purchase imports against hostile or racing input (review of 7 December, round b):

* a till (the real POS API) selling to a new loyalty number while a dashboard import naming the same number runs
  no longer rolls the whole import back on PostgreSQL (UniqueViolation): the import keeps the till's customer; the
  same for a catalogue item created meanwhile; a staff upload still cannot bring in a customer another store's till
  created meanwhile (SQLite holds its write lock for the whole import, so the race cannot happen there);
* a plain CSV's ``store`` value that is no store's code is a row error naming it (codes match exactly, as the Stores
  page keeps them unique), never a row silently filed under the upload's store; Complete Journey's ``store_id``
  numbers, which are not the shop's codes, are still filed under the upload's store, and the report says how many;
* a line amount with more decimals than its store's currency uses (4500.5 KRW) is a row error naming row and value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, Customer, Purchase, Store
from dangol_cloud.models_ops import ProductMapping, StoreSetting
from dangol_cloud.security import hash_token
from dangol_cloud.settings import Settings

from .conftest import STORE_TOKEN, _database, _postgres_schema_url, add_store_and_device

HARBOUR_TOKEN = "test-harbour-token-0123456789"
HEADER = "customer,item,quantity,timestamp"


@pytest.fixture
def pg(request, tmp_path):
    """``(url, Database)`` of a fresh PostgreSQL schema: the races below need two writers at once."""
    url = _postgres_schema_url(request)
    database = _database(url)
    yield url, database
    database.dispose()


def _write(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "\n" + "".join(line + "\n" for line in lines))
    return path


def _customer_of(db, ref: str) -> str | None:
    with db.sessions() as s:
        return s.scalar(select(Customer.id).where(Customer.external_ref_hash == db.keyring.lookup_hash(ref)))


def _sell(app, token: str, customer: str) -> None:
    """One real POS API sale of an americano to ``customer``."""
    r = app.test_client().post("/api/v1/purchases", data=json.dumps(
        {"customer": customer, "ts": "2026-01-05T08:31:00+00:00", "lines": [{"item": "americano"}]}),
        headers={"Content-Type": "application/json", "Idempotency-Key": f"k-{customer}",
                 "Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.get_data(as_text=True)


def _import(db, rows, **kw):
    with db.transaction() as s:
        return import_rows(s, rows, source="csv", key_prefix="csv", **kw)


# --- 1. new customers and items created by someone else while the import runs (PostgreSQL) ----------------------


def test_import_keeps_the_customer_a_till_created_meanwhile(pg, tmp_path):
    url, db = pg
    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        s.add(CatalogueItem(ref="americano", name="Americano", price=4.5, tags=[]))
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="t", _env_file=None), db=db)
    path = _write(tmp_path / "sales.csv", [f"L-{n},americano,1,2026-01-0{1 + n % 5} 08:00" for n in range(40)])

    def rows():
        for n, row in enumerate(parse_purchases(path, "csv")):
            if n == 1:  # the till sells to L-30, a number the file names further down
                _sell(app, STORE_TOKEN, "L-30")
            yield row

    report = _import(db, rows(), store_id=store_id, batch_size=16)
    assert report.errors == [] and report.inserted == 40
    assert report.customers_created == 39  # L-30 is the till's
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Customer)) == 40
        till_customer = _customer_of(db, "L-30")
        assert s.scalar(select(func.count()).where(Purchase.customer_id == till_customer)) == 2  # till + file


def test_import_uses_the_item_created_meanwhile(pg, tmp_path):
    _url, db = pg
    store_id, _ = add_store_and_device(db)
    path = _write(tmp_path / "sales.csv", [f"L-{n},{'latte' if n >= 10 else 'mocha'},1,2026-01-05 08:{n:02d}"
                                           for n in range(20)])

    def rows():
        for n, row in enumerate(parse_purchases(path, "csv")):
            if n == 1:  # the owner adds "latte" on the Menu page meanwhile
                with db.transaction() as s:
                    s.add(CatalogueItem(ref="latte", name="Latte", price=5.0, tags=[]))
            yield row

    report = _import(db, rows(), store_id=store_id, batch_size=4)
    assert report.errors == [] and report.inserted == 20
    assert report.items_created == 1  # mocha; latte is the owner's menu item
    with db.sessions() as s:
        latte = s.scalar(select(CatalogueItem.id).where(CatalogueItem.ref == "latte"))
        assert s.scalar(select(func.count()).where(Purchase.item_id == latte)) == 10
        assert s.get(ProductMapping, latte) is None  # not turned into a POS product
        assert s.scalar(select(CatalogueItem.price).where(CatalogueItem.id == latte)) == 5.0


def test_staff_upload_cannot_take_in_a_customer_another_till_created_meanwhile(pg, tmp_path):
    url, db = pg
    main_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        s.add(Store(name="Harbour", ref="harbour", api_token_hash=hash_token(HARBOUR_TOKEN)))
        s.add(CatalogueItem(ref="americano", name="Americano", price=4.5, tags=[]))
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="t", _env_file=None), db=db)
    path = _write(tmp_path / "sales.csv", [f"L-{n},americano,1,2026-01-05 08:{n:02d}" for n in range(12)])

    def rows():
        for n, row in enumerate(parse_purchases(path, "csv")):
            if n == 1:  # Harbour's till sells to L-9 meanwhile: now Harbour's customer
                _sell(app, HARBOUR_TOKEN, "L-9")
            yield row

    report = _import(db, rows(), store_id=main_id, allowed_stores=frozenset({main_id}), customers_in_scope=set(),
                     batch_size=4)
    assert [(e.line, e.message) for e in report.errors] == [(11, "customer 'L-9' is not one of your stores' customers")]
    assert report.inserted == 11 and report.customers_created == 11
    with db.sessions() as s:
        assert s.scalar(select(func.count()).where(Purchase.customer_id == _customer_of(db, "L-9"))) == 1  # the till's


# --- 2. store values naming no store -------------------------------------------------------------------------------


def test_csv_store_value_naming_no_store_is_a_row_error(db, tmp_path):
    main_id, _ = add_store_and_device(db)  # code "main"
    with db.transaction() as s:
        s.add(Store(name="Harbour", ref="harbour", api_token_hash="x" * 64))
    path = _write(tmp_path / "chain.csv", ["L-1,americano,1,2026-01-05 08:00,harbour",
                                           "L-2,americano,1,2026-01-05 08:00,Harbour",  # capital H
                                           "L-3,americano,1,2026-01-05 08:00,harbor",  # typo
                                           "L-4,americano,1,2026-01-05 08:00,",  # no store: the upload's
                                           "L-5,americano,1,2026-01-05 08:00,kiosk"], HEADER + ",store")
    report = _import(db, parse_purchases(path, "csv"), store_id=main_id)
    assert [(e.line, e.message) for e in report.errors] == [
        (3, "store 'Harbour' is no store's code (store codes match exactly: did you mean 'harbour'?); not imported"),
        (4, "store 'harbor' is no store's code (did you mean 'harbour'?); not imported"),
        (6, "store 'kiosk' is no store's code (the codes are 'harbour', 'main'); not imported")]
    assert report.inserted == 2 and report.customers_created == 2 and report.unmatched_store_rows == 0
    with db.sessions() as s:
        names = dict(s.execute(select(Store.id, Store.name)).all())
        assert sorted(names[p.store_id] for p in s.scalars(select(Purchase))) == ["Harbour", "Main Street"]


def test_complete_journey_store_numbers_are_filed_under_the_upload_store_and_counted(db, data_dir, tmp_path):
    main_id, _ = add_store_and_device(db)
    folder = data_dir / "purchases" / "completejourney"
    with (folder / "transactions.csv").open() as fh:
        lines = [next(fh) for _ in range(31)]  # 30 sales in 8 store numbers, all of them in products.csv
    numbered = lines[1].split(",")[1]  # the first line's store number (380) is also a store's code here
    with db.transaction() as s:
        s.add(Store(name="Store 380", ref=numbered, api_token_hash="y" * 64))
    path = tmp_path / "transactions.csv"
    path.write_text("".join(lines))
    report = _import(db, parse_purchases(path, "completejourney", products=folder / "products.csv"),
                     store_id=main_id, currency="USD")
    coded = sum(line.split(",")[1] == numbered for line in lines[1:])
    assert report.errors == [] and report.inserted == 30 and 0 < coded < 30
    assert report.unmatched_store_rows == 30 - coded
    assert report.unmatched_store_codes == ["32004", "414", "358"]
    assert report.store_note() == (f"{30 - coded} rows name a store number no store has as its code "
                                   "('32004', '414', '358', …): filed under the upload's store")
    with db.sessions() as s:
        by_store = dict(s.execute(select(Purchase.store_id, func.count()).group_by(Purchase.store_id)).all())
    assert by_store[main_id] == 30 - coded and sum(by_store.values()) == 30


# --- 3. amounts with more decimals than the currency uses -----------------------------------------------------------


def test_amount_with_more_decimals_than_the_store_currency_is_a_row_error(db, tmp_path):
    main_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        harbour = Store(name="Harbour", ref="harbour", api_token_hash="x" * 64)
        s.add(harbour)
        s.flush()
        s.add_all([StoreSetting(store_id=main_id, currency="KRW"), StoreSetting(store_id=harbour.id, currency="USD")])
    path = _write(tmp_path / "s.csv", ["L-1,americano,1,2026-01-05 08:00,4500,",
                                       "L-2,americano,1,2026-01-05 08:00,4500.5,",
                                       "L-3,americano,1,2026-01-05 08:00,4.55,harbour",
                                       "L-4,americano,1,2026-01-05 08:00,4.555,harbour",
                                       "L-5,americano,1,2026-01-05 08:00,0.4,main"], HEADER + ",amount,store")
    report = _import(db, parse_purchases(path, "csv"), store_id=main_id, currency="EUR")
    assert [(e.line, e.message) for e in report.errors] == [
        (3, "amount 4500.5 has more decimals than KRW uses (0), the currency of Main Street; not imported"),
        (5, "amount 4.555 has more decimals than USD uses (2), the currency of Harbour; not imported"),
        (6, "amount 0.4 has more decimals than KRW uses (0), the currency of Main Street; not imported")]
    assert report.inserted == 2 and report.customers_created == 2  # nothing made for a refused row
    history = _write(tmp_path / "h.csv", ["L-6,americano,1,2026-01-05 08:00,0.4"], HEADER + ",amount")
    report = _import(db, parse_purchases(history, "csv"), currency="KRW")  # store-less: the default currency
    assert [(e.line, e.message) for e in report.errors] == [
        (2, "amount 0.4 has more decimals than KRW uses (0), the dashboard's default currency; not imported")]


def test_real_data_sets_meet_their_currencies(db, data_dir, ta_feng_slice, tmp_path):
    """Ta-Feng's SALES_PRICE is whole New Taiwan dollars; Complete Journey's sales_value has cents (USD)."""
    taipei, _ = add_store_and_device(db)
    with db.transaction() as s:
        s.add(StoreSetting(store_id=taipei, currency="TWD"))
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                             store_id=taipei)
    assert report.errors == [] and report.inserted > 2900
    folder = data_dir / "purchases" / "completejourney"
    with (folder / "transactions.csv").open() as fh:
        lines = [next(fh) for _ in range(2001)]
    path = tmp_path / "transactions.csv"
    path.write_text("".join(lines))
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(path, "completejourney", products=folder / "products.csv"),
                             source="completejourney", key_prefix="completejourney", currency="USD")
    assert not [e for e in report.errors if "decimals" in e.message] and report.inserted > 1900
