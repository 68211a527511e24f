"""Bounds of imported sales (SQLite and PostgreSQL): one shared sale-time rule with the POS API (1990-01-01 to one
day ahead) and field lengths that fit their columns. A row outside them is one row error naming its line, field
and value or limit; nothing is stored for it (no purchase, customer or item) and the rest of the file imports.
Purchases stored before the rule (an older database) neither break training nor escape retention."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dangol_cloud.erasure import run_retention
from dangol_cloud.importers import PurchaseRow, parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, Customer, Purchase, Store
from dangol_cloud.sale_rules import CATEGORY_MAX, REF_MAX
from dangol_cloud.store_zones import local_times
from dangol_cloud.training import load_frames

HEADER = "customer,item,quantity,timestamp,amount,product_id,category,store"


def _slice_with(ta_feng_slice: Path, tmp_path: Path, line: int, **changes: str) -> Path:
    """The real Ta-Feng slice with data line ``line`` (header = 1) changed: ``date``, ``customer``, ``subclass``."""
    lines = ta_feng_slice.read_text(encoding="utf-8-sig").splitlines()
    fields = lines[line - 1].split(",")
    for name, value in changes.items():
        fields[{"date": 0, "customer": 1, "subclass": 4, "product": 5}[name]] = value
    lines[line - 1] = ",".join(fields)
    out = tmp_path / "ta_feng_edited.csv"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _import(db, path: Path, fmt: str, **kw):
    with db.transaction() as s:
        return import_rows(s, parse_purchases(path, fmt), source=fmt, key_prefix=fmt, **kw)


def _count(db, model) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


# --- sale times ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("date,why", [("3/1/2205", "in the future"), ("1/1/1200", "before 1990-01-01"),
                                      ("12/31/1989", "before 1990-01-01")])
def test_a_ta_feng_row_out_of_the_sale_time_range_is_one_row_error(db, ta_feng_slice, tmp_path, date, why):
    path = _slice_with(ta_feng_slice, tmp_path, 1500, date=date, customer="99999999")
    edited = [r for r in parse_purchases(path, "ta-feng") if isinstance(r, PurchaseRow)]
    clean = [r for r in parse_purchases(ta_feng_slice, "ta-feng") if isinstance(r, PurchaseRow)]
    report = _import(db, path, "ta-feng")
    assert [(e.line, "TRANSACTION_DT" in e.message, repr(date) in e.message, why in e.message)
            for e in report.errors] == [(1500, True, True, True)]
    assert len(edited) == len(clean) - 1 == report.valid == report.inserted == _count(db, Purchase)
    assert _count(db, Customer) == len({r.customer_ref for r in edited})  # none for the refused row's customer
    with db.sessions() as s:
        assert max(s.scalars(select(Purchase.ts))) < datetime(2001, 3, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("ts,why", [
    ("0001-01-01T00:00:00+09:00", "cannot be expressed in UTC"),   # aborted the whole upload before
    ("9999-12-31T23:59:59-09:00", "cannot be expressed in UTC"),
    ("2205-03-01T09:00:00", "in the future"),                      # a typo for 2025: immune to retention before
    ("2205-03-01T09:00:00+00:00", "in the future"),
    ("1200-01-01T09:00:00", "before 1990-01-01"),                  # broke every training before
])
def test_a_csv_row_out_of_the_sale_time_range_is_one_row_error(db, tmp_path, ts, why):
    rows = [f"c{n},Flat white,1,2026-11-{10 + n % 10:02d}T08:00:00,4.5,,," for n in range(40)]
    rows.insert(20, f"loyalty-typo,Typo latte,1,{ts},4.5,,,")
    path = tmp_path / "till.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    report = _import(db, path, "csv")
    assert [(e.line, e.message.startswith(f"timestamp {ts!r}"), why in e.message) for e in report.errors] \
        == [(22, True, True)]
    assert report.inserted == 40 and _count(db, Purchase) == 40
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Customer)) == 40  # no customer for the refused row
        assert s.scalar(select(CatalogueItem).where(CatalogueItem.ref == "Typo latte")) is None


def test_the_time_is_checked_again_in_the_cafes_zone(db, tmp_path):
    """1990-01-01 05:00 in Taipei is 1989-12-31 21:00 UTC: refused there, accepted in UTC."""
    path = tmp_path / "till.csv"
    path.write_text(HEADER + "\na,Latte,1,1990-01-01T05:00:00,4,,,\nb,Latte,1,2026-01-01T05:00:00,4,,,\n")
    report = _import(db, path, "csv", tz="Asia/Taipei")
    assert [(e.line, "before 1990-01-01" in e.message) for e in report.errors] == [(2, True)]
    assert report.inserted == 1
    assert not _import(db, path, "csv", tz="UTC").errors


def test_rows_from_another_producer_are_checked_by_the_import_too(db):
    """:func:`import_rows` refuses an out-of-range time of a row it did not parse itself (no exception)."""
    rows = [PurchaseRow(2, "a", "latte", None, 1, None, datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=9))),
                        None, None),
            PurchaseRow(3, "b", "x" * (REF_MAX + 1), None, 1, None, datetime(2026, 1, 1), None, None),
            PurchaseRow(4, "c", "latte", None, 1, None, datetime(2026, 1, 1), None, None)]
    with db.transaction() as s:
        report = import_rows(s, iter(rows), source="test", key_prefix="test")
    assert [e.line for e in report.errors] == [2, 3] and report.inserted == 1
    assert _count(db, Customer) == 1


# --- field lengths ---------------------------------------------------------------------------------------------------

LONG_ITEM = "Iced Caramel Macchiato with Oat Milk and an Extra Shot (Large, 16 oz)"  # 69 characters


@pytest.mark.parametrize("column,row,limit", [
    ("item", f'c1,"{LONG_ITEM}",1,2026-11-12T08:05:00,6.9,,,', REF_MAX),
    ("customer", f"{'c' * (REF_MAX + 1)},Latte,1,2026-11-12T08:05:00,6.9,,,", REF_MAX),
    ("product_id", f"c1,Latte,1,2026-11-12T08:05:00,6.9,{'9' * (REF_MAX + 1)},,", REF_MAX),
    ("category", f"c1,Latte,1,2026-11-12T08:05:00,6.9,,{'Coffee ' * 12},", CATEGORY_MAX),
    ("store", f"c1,Latte,1,2026-11-12T08:05:00,6.9,,,{'s' * (REF_MAX + 1)}", REF_MAX),
], ids=["item", "customer", "product_id", "category", "store"])
def test_an_over_long_csv_field_is_one_row_error(db, tmp_path, column, row, limit):
    rows = [f"c{n},Flat white,1,2026-11-{10 + n % 10:02d}T08:00:00,4.5,,Coffee," for n in range(300)]
    rows.insert(150, row)
    path = tmp_path / "till.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    report = _import(db, path, "csv")
    assert [(e.line, e.message.startswith(f"{column} is longer than {limit} characters")) for e in report.errors] \
        == [(152, True)]
    assert report.inserted == 300 and _count(db, Purchase) == 300


def test_fields_at_their_limits_are_imported(db, tmp_path):
    with db.transaction() as s:
        s.add(Store(name="Long ref", ref="s" * REF_MAX))
    path = tmp_path / "till.csv"
    path.write_text(HEADER + f"\n{'c' * REF_MAX},{'i' * REF_MAX},1,2026-11-12T08:05:00,6.9,{'9' * REF_MAX},"
                    f"{'k' * CATEGORY_MAX},{'s' * REF_MAX}\n")
    report = _import(db, path, "csv")
    assert not report.errors and report.inserted == 1
    with db.sessions() as s:
        purchase = s.scalar(select(Purchase))
        assert s.get(Store, purchase.store_id).ref == "s" * REF_MAX


def test_an_over_long_ta_feng_subclass_is_one_row_error(db, ta_feng_slice, tmp_path):
    path = _slice_with(ta_feng_slice, tmp_path, 42, subclass="7" * (REF_MAX + 1))
    report = _import(db, path, "ta-feng")
    assert [(e.line, e.message.startswith(f"PRODUCT_SUBCLASS is longer than {REF_MAX}")) for e in report.errors] \
        == [(42, True)]


def test_the_limits_are_those_of_the_columns_and_of_the_pos_api():
    from dangol_cloud.web.api import PurchaseIn, PurchaseLine

    assert CatalogueItem.__table__.c.ref.type.length == REF_MAX <= CatalogueItem.__table__.c.name.type.length
    assert CatalogueItem.__table__.c.category.type.length == CATEGORY_MAX
    assert Store.__table__.c.ref.type.length == REF_MAX
    for size, ok in ((REF_MAX, True), (REF_MAX + 1, False)):
        for body in ({"item": "i" * size, "product_id": "p"}, {"item": "i", "product_id": "p" * size}):
            assert _valid(PurchaseLine, body) is ok
        assert _valid(PurchaseIn, {"customer": "c" * size, "ts": "2026-01-05T08:31:00+01:00",
                                   "lines": [{"item": "i"}]}) is ok


def _valid(model, body: dict) -> bool:
    from pydantic import ValidationError

    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


# --- purchases stored before the rule --------------------------------------------------------------------------------

def _store_raw(db, when: list[datetime]) -> None:
    """Purchases as an older import stored them (no bounds), each by its own customer ``old-<n>``."""
    with db.transaction() as s:
        item = CatalogueItem(ref="latte", name="Latte", tags=[])
        s.add(item)
        for n, ts in enumerate(when):
            customer = Customer(status="active", source="import")
            s.add(customer)
            s.flush()
            s.add(Purchase(customer_id=customer.id, item_id=item.id, quantity=1, ts=ts, source="csv",
                           idempotency_key=f"old:{n}"))


BAD_STORED = [datetime(1200, 1, 1, tzinfo=timezone.utc), datetime(2300, 1, 1, tzinfo=timezone.utc),
              datetime(2205, 3, 1, 9, tzinfo=timezone.utc), datetime(1, 1, 1, 12, tzinfo=timezone.utc)]


def test_stored_out_of_range_purchases_are_skipped_by_training_with_a_logged_count(db, ta_feng_slice, caplog):
    _import(db, ta_feng_slice, "ta-feng")
    good = _count(db, Purchase)
    _store_raw(db, BAD_STORED)
    with caplog.at_level(logging.WARNING, logger="dangol_cloud.training"), db.sessions() as s:
        frames, _items = load_frames(s, "Asia/Taipei")
    assert len(frames) == good and frames["ts"].min() >= datetime(2000, 11, 1)
    assert any("4 purchase(s)" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_training_runs_on_a_database_holding_stored_out_of_range_purchases(db, settings, ta_feng_slice):
    from dangol_cloud.training import train_from_database

    _import(db, ta_feng_slice, "ta-feng")
    good = _count(db, Purchase)
    _store_raw(db, BAD_STORED)
    report = train_from_database(db, settings)
    assert report.interactions == good and report.menus > 0


def test_local_times_gives_nat_for_times_pandas_cannot_hold():
    import pandas as pd

    ts = pd.Series([datetime(2262, 4, 11, 20, tzinfo=timezone.utc), datetime(1, 1, 1, tzinfo=timezone.utc),
                    datetime(2026, 1, 1, tzinfo=timezone.utc)], dtype=object)
    out = local_times(ts, pd.Series(["", "", ""]), {}, "Asia/Taipei")
    assert out.isna().tolist() == [True, True, False] and out.iloc[2] == pd.Timestamp("2026-01-01 08:00")


def test_retention_is_not_held_off_by_a_stored_future_purchase(db):
    _store_raw(db, [datetime(2205, 3, 1, 9, tzinfo=timezone.utc)])
    now = datetime.now(timezone.utc) + timedelta(days=800)
    with db.transaction() as s:
        erased = run_retention(s, 365, now=now)
    assert len(erased) == 1 and _count(db, Customer) == 0
