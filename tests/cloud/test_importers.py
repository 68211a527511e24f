"""Purchase importers on the real Ta-Feng and Complete Journey files, and on small files built from them."""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from dangol_cloud.importers import (
    ImportFormatError,
    PurchaseRow,
    RowError,
    count_data_lines,
    parse_purchases,
)

REPO = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The real data sets: $DANGOL_DATA or <repo>/../shared/data; fails (not skips) when absent."""
    root = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    if not (root / "purchases").is_dir():
        pytest.fail(f"real purchase data not found at {root / 'purchases'} (set DANGOL_DATA to the shared/data folder)")
    return root


@pytest.fixture(scope="module")
def ta_feng() -> Path:
    return data_dir() / "purchases" / "ta-feng" / "ta_feng_transactions.csv"


@pytest.fixture(scope="module")
def cj() -> Path:
    return data_dir() / "purchases" / "completejourney" / "transactions.csv"


def raw_lines(path: Path, n: int) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in itertools.islice(fh, n)]


def test_ta_feng_real_file_streams_every_row_with_leading_zeros(ta_feng: Path) -> None:
    rows = parse_purchases(ta_feng, "ta-feng")
    assert isinstance(rows, Iterator) and not isinstance(rows, list)
    with ta_feng.open(encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        expected = list(itertools.islice(reader, 2000))
    first = list(itertools.islice(rows, 2000))
    assert all(isinstance(r, PurchaseRow) for r in first)
    for line, (row, rec) in enumerate(zip(first, expected, strict=True), start=2):
        assert row.line == line
        assert row.customer_ref == rec["CUSTOMER_ID"] and len(row.customer_ref) == 8
        assert row.item_ref == rec["PRODUCT_SUBCLASS"]
        assert row.product_id == rec["PRODUCT_ID"]
        assert row.quantity == float(rec["AMOUNT"]) and row.amount == float(rec["SALES_PRICE"])
        assert row.ts == datetime.strptime(rec["TRANSACTION_DT"], "%m/%d/%Y")
        assert row.category == rec["PRODUCT_SUBCLASS"][:4] and row.store_ref is None
    assert any(r.customer_ref.startswith("0") for r in first), "the sample must exercise leading zeros"
    # the rest of the file: every line parses, none is lost
    rest = sum(1 for r in rows if isinstance(r, PurchaseRow))
    assert 2000 + rest == count_data_lines(ta_feng)


def test_bad_rows_are_reported_with_line_numbers_and_never_half_imported(ta_feng: Path, tmp_path: Path) -> None:
    header, *good = raw_lines(ta_feng, 6)
    fields = good[0].split(",")
    bad_date = ",".join(["13/45/2000", *fields[1:]])
    bad_qty = ",".join([*fields[:6], "two", *fields[7:]])
    missing_customer = ",".join([fields[0], "", *fields[2:]])
    short = ",".join(fields[:5])
    lines = [header, good[0], bad_date, good[1], bad_qty, missing_customer, good[2], short, "", good[3]]
    path = tmp_path / "ta_feng_bad.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    out = list(parse_purchases(path, "ta-feng"))
    errors = {r.line: r for r in out if isinstance(r, RowError)}
    rows = {r.line: r for r in out if isinstance(r, PurchaseRow)}
    assert sorted(errors) == [3, 5, 6, 8]
    assert sorted(rows) == [2, 4, 7, 10]  # line 9 is blank
    assert "TRANSACTION_DT" in errors[3].message and errors[3].raw == bad_date
    assert "AMOUNT" in errors[5].message and "two" in errors[5].message
    assert "CUSTOMER_ID" in errors[6].message
    assert "columns" in errors[8].message and errors[8].raw == short
    assert rows[2].customer_ref == fields[1]


def test_missing_file_and_wrong_header_raise_import_format_error(ta_feng: Path, tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="nope.csv"):
        parse_purchases(tmp_path / "nope.csv", "ta-feng")
    with pytest.raises(ValueError, match="missing column"):  # ImportFormatError is a ValueError
        parse_purchases(ta_feng, "csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ImportFormatError, match="empty.csv"):
        parse_purchases(empty, "csv")
    with pytest.raises(ImportFormatError, match="unknown format"):
        parse_purchases(ta_feng, "excel")  # type: ignore[arg-type]


def test_complete_journey_maps_products_to_category_and_reports_unknown_products(cj: Path) -> None:
    with (cj.parent / "products.csv").open(encoding="utf-8") as fh:
        products = {r["product_id"]: r for r in csv.DictReader(fh)}
    with cj.open(encoding="utf-8") as fh:
        source = list(itertools.islice(csv.DictReader(fh), 3000))
    out = list(itertools.islice(parse_purchases(cj, "completejourney"), 3000))
    assert [r.line for r in out] == list(range(2, 3002))
    n_errors = 0
    for r, rec in zip(out, source, strict=True):
        product = products.get(rec["product_id"])
        if product is None or not product["product_category"]:
            n_errors += 1
            assert isinstance(r, RowError) and rec["product_id"] in r.message
            continue
        assert isinstance(r, PurchaseRow)
        assert r.item_ref == product["product_category"] and r.category == product["department"]
        assert r.product_id == rec["product_id"] and r.store_ref == rec["store_id"]
        assert r.customer_ref == rec["household_id"]
        assert r.amount == float(rec["sales_value"]) and r.quantity == float(rec["quantity"])
        assert r.ts == datetime.strptime(rec["transaction_timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    assert 0 < n_errors < 100, "the real slice holds a few lines whose product has no row/category"


def test_complete_journey_needs_products_csv(cj: Path, tmp_path: Path) -> None:
    copy = tmp_path / "transactions.csv"
    copy.write_text("\n".join(raw_lines(cj, 3)) + "\n")
    with pytest.raises(ImportFormatError, match="products.csv"):
        parse_purchases(copy, "completejourney")


def test_plain_csv_optional_columns_iso_timestamps_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "pos.csv"
    path.write_text(
        "customer,item,quantity,timestamp,amount,category,note\n"
        "0042,flat-white,1,2024-03-05T08:15:00,4.5,coffee,x\n"
        "0042,croissant,2,2024-03-05 08:15:30+09:00,,bakery,\n"
        "0043,latte,1.5,yesterday,4.0,coffee,\n"
        "0044,latte,,2024-03-05T09:00:00,4.0,coffee,\n"
        ",latte,1,2024-03-05T09:00:00,4.0,coffee,\n"
        '0045,"mocha, large",1,2024-03-06T10:00:00,5.5,coffee,\n'
        "0046,latte,1,2024-03-06T10:00:00,four,coffee,\n",
        encoding="utf-8",
    )
    out = list(parse_purchases(path, "csv"))
    assert [type(r).__name__ for r in out] == ["PurchaseRow", "PurchaseRow", "RowError", "RowError", "RowError",
                                               "PurchaseRow", "RowError"]
    a, b, c = (r for r in out if isinstance(r, PurchaseRow))
    assert (a.line, a.customer_ref, a.item_ref, a.quantity, a.amount, a.category) == (2, "0042", "flat-white", 1.0, 4.5, "coffee")
    assert a.ts == datetime(2024, 3, 5, 8, 15) and a.product_id is None and a.store_ref is None
    # an explicit offset says which instant it was: kept (the import converts it to the café's time zone), not
    # dropped — a POS exporting UTC ("…Z") would otherwise land 9 hours off in Seoul
    assert b.amount is None and b.ts == datetime(2024, 3, 4, 23, 15, 30, tzinfo=timezone.utc)
    assert b.ts.utcoffset().total_seconds() == 9 * 3600
    assert c.item_ref == "mocha, large" and c.line == 7
    errors = [r for r in out if isinstance(r, RowError)]
    assert [e.line for e in errors] == [4, 5, 6, 8]
    assert "timestamp" in errors[0].message and "quantity" in errors[1].message
    assert "customer" in errors[2].message and "amount" in errors[3].message


def test_count_data_lines_matches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("customer,item,quantity,timestamp\na,b,1,2024-01-01\nc,d,1,2024-01-01")  # no final newline
    assert count_data_lines(path) == 2
