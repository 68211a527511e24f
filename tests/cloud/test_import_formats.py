"""Purchase files as a café's own tools write them (review s04/s05).

Text encoding: a file is decoded strictly — UTF-8 with or without a BOM, UTF-16 with its BOM (Excel's "Unicode
Text") — and checked whole before the first row is read; a file in a legacy code page is decoded only when
charset-normalizer's plausible readings of it all agree (and the upload says which encoding was used), otherwise
it is refused naming the file, the line and the byte offset and saying "save it as CSV UTF-8". Before, undecodable
bytes became U+FFFD, so different names merged into one garbage product and half the file could be imported.

Layout: a Dangol CSV may be separated by , ; tab or | (a ;-separated file may write decimal commas), its header
names match in any capitalisation and with spaces around them, and a year-first time with slashes
(``2017/01/01 13:28``) reads as the ISO one; day/month-first dates are refused as ambiguous, naming the row.

Real data only: MovieLens 100K ratings with their real titles (``u.item`` is Latin-1, and nine titles have
accented letters: those bytes are the Latin-1 test), lines of the shared data README written in CP949, and real
Complete Journey rows (household, product_category, quantity, sales_value, time).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dangol_cloud.importers import (
    ImportFormatError, PurchaseRow, RowError, count_data_lines, detect_files, parse_purchases,
)
from dangol_cloud.models import Customer, Purchase
from dangol_cloud.sale_rules import REF_MAX

from .test_cloud_web import csrf_of, sign_in, web  # noqa: F401 - the fixture

HEADER = ["customer", "item", "quantity", "timestamp"]


# --- real data ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ml_ratings(data_dir) -> list[tuple[str, str, str]]:
    """Every rating of the six lowest-numbered MovieLens users who rated a movie with an accented title, as
    ``(user, title, ISO time in UTC)`` in time order: ~1,300 rows, the accented ones in the middle of the file.
    Titles longer than an item name may be (``REF_MAX``, a row error of their own) are left out."""
    folder = data_dir / "purchases" / "ml-100k"
    titles = {}
    for line in (folder / "u.item").read_bytes().decode("latin-1").splitlines():
        if line.strip():
            number, title, *_ = line.split("|")
            titles[number] = title
    accented = {n for n, t in titles.items() if not t.isascii()}
    assert len(accented) == 9
    ratings = [line.split("\t") for line in (folder / "u.data").read_text(encoding="ascii").splitlines()]
    users = sorted({int(u) for u, i, _, _ in ratings if i in accented})[:6]
    chosen = sorted((int(t), int(u), i) for u, i, _, t in ratings if int(u) in users and len(titles[i]) <= REF_MAX)
    return [(str(u), titles[i], datetime.fromtimestamp(t, timezone.utc).isoformat()) for t, u, i in chosen]


def _csv_text(header: list[str], rows, sep: str = ",") -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=sep, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _ml_file(tmp_path: Path, rows, encoding: str, sep: str = ",", name: str = "ratings.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(_csv_text(HEADER, [(u, t, "1", ts) for u, t, ts in rows], sep).encode(encoding))
    return path


@pytest.fixture(scope="module")
def cj_rows(data_dir) -> list[tuple[str, str, str, str, str]]:
    """The first 200 real Complete Journey rows whose product has a product_category: ``(household_id,
    product_category, quantity, sales_value, transaction_timestamp)``."""
    folder = data_dir / "purchases" / "completejourney"
    with (folder / "products.csv").open(encoding="utf-8") as fh:
        category = {r["product_id"]: r["product_category"] for r in csv.DictReader(fh)}
    with (folder / "transactions.csv").open(encoding="utf-8") as fh:
        rows = ((r["household_id"], category.get(r["product_id"]), r["quantity"], r["sales_value"],
                 r["transaction_timestamp"]) for r in csv.DictReader(fh))
        return list(itertools.islice((r for r in rows if r[1]), 200))


def _cj_file(tmp_path: Path, rows, header=("customer", "item", "quantity", "amount", "timestamp"), sep=",",
             decimal=".", time_format: str | None = None, name="pos_export.csv") -> Path:
    def when(text: str) -> str:
        return datetime.fromisoformat(text).strftime(time_format) if time_format else text

    data = [(c, i, q, a.replace(".", decimal), when(t)) for c, i, q, a, t in rows]
    path = tmp_path / name
    path.write_text(_csv_text(list(header), data, sep), encoding="utf-8")
    return path


def _expected_cj(rows) -> list[tuple]:
    return [(c, i, float(q), float(a), datetime.fromisoformat(t)) for c, i, q, a, t in rows]


def _got(parsed) -> list[tuple]:
    assert all(isinstance(r, PurchaseRow) for r in parsed), [r for r in parsed if isinstance(r, RowError)][:3]
    return [(r.customer_ref, r.item_ref, r.quantity, r.amount, r.ts) for r in parsed]


def _upload(client, files, fmt="auto"):
    html = client.get("/purchases/").get_data(as_text=True)
    data = {"csrf_token": csrf_of(html), "format": fmt,
            "file": [(io.BytesIO(p.read_bytes()), p.name) for p in files]}
    return client.post("/purchases/", content_type="multipart/form-data", data=data)


def _count(db, model) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


# --- 1. text encoding --------------------------------------------------------------------------------------------

def test_utf8_with_or_without_bom_keeps_every_real_title(ml_ratings, tmp_path):
    for encoding in ("utf-8", "utf-8-sig"):
        path = _ml_file(tmp_path, ml_ratings, encoding, name=f"{encoding}.csv")
        rows = list(parse_purchases(path, "csv"))
        assert [(r.customer_ref, r.item_ref) for r in rows] == [(u, t) for u, t, _ in ml_ratings]
        assert "Misérables, Les (1995)" in {r.item_ref for r in rows}
        assert detect_files([path]).notes == ()


def test_a_latin1_file_is_refused_up_front_naming_its_line_and_byte(ml_ratings, tmp_path):
    path = _ml_file(tmp_path, ml_ratings, "latin-1", name="ratings_latin1.csv")
    data = path.read_bytes()
    offset = next(n for n, byte in enumerate(data) if byte > 0x7F)
    line = data[:offset].count(b"\n") + 1
    assert 2 < line < len(ml_ratings), "the accented rows must sit after plain ones"
    for call in (lambda: parse_purchases(path, "csv"), lambda: detect_files([path])):
        with pytest.raises(ImportFormatError) as refused:
            call()
        message = str(refused.value)
        assert "ratings_latin1.csv" in message and f"line {line}" in message, message
        assert f"byte {offset}" in message and "0xE9" in message and "CSV UTF-8" in message, message
        # the code pages that fit these bytes read é/è/Á differently: named, none guessed
        assert "cannot be told for sure" in message and len(re.findall(r"\bcp\d+", message)) >= 2, message


def test_a_latin1_upload_is_refused_at_the_form_and_nothing_is_written(web, ml_ratings, tmp_path):  # noqa: F811
    app, db = web
    client = app.test_client()
    sign_in(client)
    path = _ml_file(tmp_path, ml_ratings, "latin-1", name="ratings_latin1.csv")
    response = _upload(client, [path])
    page = response.get_data(as_text=True)
    assert response.status_code == 422, page[:2000]
    assert "ratings_latin1.csv" in page and "CSV UTF-8" in page
    assert _count(db, Purchase) == _count(db, Customer) == 0


def test_cp949_bytes_of_real_text_are_refused_not_garbled(data_dir, tmp_path):
    """The shared data README's lines that CP949 can write (→ ≥ × ° …): bytes that big5, gb18030 and cp949 all
    read, differently — refused, never turned into U+FFFD."""
    lines = []
    for text in (data_dir / "README.md").read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            text.encode("cp949")
        except UnicodeEncodeError:
            continue
        lines.append(text)
    data = "".join(lines).encode("cp949")
    path = tmp_path / "readme_cp949.csv"
    path.write_bytes(data)
    offset = next(n for n, byte in enumerate(data) if byte > 0x7F)
    line = data[:offset].count(b"\n") + 1
    with pytest.raises(ImportFormatError) as refused:
        detect_files([path])
    message = str(refused.value)
    assert f"line {line}" in message and f"byte {offset}" in message and "CSV UTF-8" in message, message
    with pytest.raises(ImportFormatError, match="CSV UTF-8"):
        parse_purchases(path, "csv")


def test_utf16_unicode_text_is_read_exactly_and_said(ml_ratings, tmp_path):
    """Excel's "Unicode Text" save: UTF-16 with a BOM, tab-separated — its BOM says the encoding for sure."""
    path = _ml_file(tmp_path, ml_ratings, "utf-16", sep="\t", name="ratings.txt")
    assert path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    detected = detect_files([path])
    assert detected.fmt == "csv" and any("UTF-16" in note for note in detected.notes), detected.notes
    rows = list(parse_purchases(path, "csv"))
    assert [(r.customer_ref, r.item_ref) for r in rows] == [(u, t) for u, t, _ in ml_ratings]
    assert count_data_lines(path) == len(ml_ratings)


# --- 2. separators, header names, dates --------------------------------------------------------------------------

@pytest.mark.parametrize("sep,decimal", [(";", ","), (";", "."), ("\t", "."), ("|", ".")])
def test_other_separators_read_as_the_comma_file(cj_rows, tmp_path, sep, decimal):
    path = _cj_file(tmp_path, cj_rows, sep=sep, decimal=decimal)
    assert detect_files([path]).fmt == "csv"
    assert _got(list(parse_purchases(path, "csv"))) == _expected_cj(cj_rows)


def test_a_decimal_comma_in_a_comma_separated_file_stays_a_row_error(cj_rows, tmp_path):
    rows = [(c, i, q, f'{a.replace(".", ",")}', t) for c, i, q, a, t in cj_rows[:3]]
    path = _cj_file(tmp_path, rows)  # csv quotes "0,5": the comma cannot be the decimal mark here
    parsed = list(parse_purchases(path, "csv"))
    assert [type(r) for r in parsed] == [RowError] * 3 and "amount is not a number" in parsed[0].message


def test_a_thousands_separator_is_never_read_as_a_decimal_comma(cj_rows, tmp_path):
    """A tab-separated export writing amounts with a thousands separator (KRW or JPY tills: ``4,500``): read as a
    decimal comma, 4,500 was 4.5 (a reviewer's UTF-16 "Unicode Text" file). Real amounts, in cents, written so."""
    big = [(c, i, q, a, t) for c, i, q, a, t in cj_rows if 10 <= float(a) < 1000][:3]
    rows = [(c, i, q, f"{round(float(a) * 100):,}", t) for c, i, q, a, t in big]
    assert all(re.fullmatch(r"\d{1,3},\d{3}", a) for _, _, _, a, _ in rows), rows
    parsed = list(parse_purchases(_cj_file(tmp_path, rows, sep="\t"), "csv"))
    assert [type(r) for r in parsed] == [RowError] * len(rows)
    assert all("ambiguous" in r.message for r in parsed), [r.message for r in parsed]


def test_header_names_match_in_any_capitalisation_and_with_spaces(cj_rows, tmp_path):
    path = _cj_file(tmp_path, cj_rows, header=(" Customer", "Item ", "QUANTITY", "Amount", "Timestamp"))
    assert detect_files([path]).fmt == "csv"
    assert _got(list(parse_purchases(path, "csv"))) == _expected_cj(cj_rows)
    twice = _cj_file(tmp_path, cj_rows, header=("customer", "Customer", "item", "quantity", "timestamp"),
                     name="twice.csv")
    with pytest.raises(ImportFormatError, match="duplicate column"):
        parse_purchases(twice, "csv")


@pytest.mark.parametrize("time_format", ["%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d"])
def test_year_first_slash_times_read_as_iso(cj_rows, tmp_path, time_format):
    path = _cj_file(tmp_path, cj_rows, time_format=time_format)
    expected = [(c, i, q, a, datetime.strptime(t.strftime(time_format), time_format))
                for c, i, q, a, t in _expected_cj(cj_rows)]
    assert _got(list(parse_purchases(path, "csv"))) == expected


@pytest.mark.parametrize("time_format", ["%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M", "%d.%m.%Y %H:%M"])
def test_day_or_month_first_dates_are_refused_naming_the_row_and_the_formats(cj_rows, tmp_path, time_format):
    path = _cj_file(tmp_path, cj_rows[:20], time_format=time_format)
    parsed = list(parse_purchases(path, "csv"))
    assert [r.line for r in parsed if isinstance(r, RowError)] == list(range(2, 22))
    message = parsed[0].message
    written = datetime.fromisoformat(cj_rows[0][4]).strftime(time_format)
    assert repr(written) in message and "YYYY-MM-DD" in message and "YYYY/MM/DD" in message, message
    assert "day" in message and "month" in message, message


def test_an_unknown_header_names_the_columns_found_and_the_likely_cause(cj_rows, data_dir, tmp_path):
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("customer item quantity timestamp\n" + "".join(
        f"{c} {i.replace(' ', '_')} {q} {t.replace(' ', 'T')}\n" for c, i, q, _, t in cj_rows[:5]), encoding="utf-8")
    with pytest.raises(ImportFormatError) as refused:
        detect_files([spaced])
    message = str(refused.value)
    assert "spaced.csv" in message and "customer item quantity timestamp" in message, message
    assert "one column" in message and "separat" in message, message

    # the real Complete Journey transactions without their time column: named as missing
    source = (data_dir / "purchases" / "completejourney" / "transactions.csv").read_text(encoding="utf-8")
    lines = [line.split(",") for line in source.splitlines()[:6]]
    drop = lines[0].index("transaction_timestamp")
    cut = tmp_path / "transactions.csv"
    cut.write_text("".join(",".join(f[:drop] + f[drop + 1:]) + "\n" for f in lines), encoding="utf-8")
    with pytest.raises(ImportFormatError) as refused:
        detect_files([cut, data_dir / "purchases" / "completejourney" / "products.csv"])
    message = str(refused.value)
    assert "transactions.csv" in message and "transaction_timestamp" in message, message
    assert "household_id" in message and "missing" in message, message


def test_a_european_excel_upload_imports_through_the_dashboard(web, cj_rows, tmp_path):  # noqa: F811
    """The review's s04 file: ;-separated, decimal commas, capitalised header, Excel's slash times."""
    from .test_cloud_web import wait_for_import

    app, db = web
    client = app.test_client()
    sign_in(client)
    path = _cj_file(tmp_path, cj_rows, header=("Customer", "Item", "Quantity", "Amount", "Timestamp"), sep=";",
                    decimal=",", time_format="%Y/%m/%d %H:%M")
    response = _upload(client, [path])
    assert response.status_code == 303, response.get_data(as_text=True)[:2000]
    page = wait_for_import(client, response.location)
    assert 'data-state="done"' in page and "200 rows read" in page, page
    assert _count(db, Purchase) > 150


def test_the_import_page_says_how_a_utf16_upload_was_read(web, ml_ratings, tmp_path):  # noqa: F811
    """The note of :func:`detect_files` reaches the owner: the job page names the uploaded file (not the stored
    ``0-ratings.txt``) and the encoding it was read in."""
    from .test_cloud_web import wait_for_import

    app, _db = web
    client = app.test_client()
    sign_in(client)
    response = _upload(client, [_ml_file(tmp_path, ml_ratings, "utf-16", sep="\t", name="ratings.txt")])
    assert response.status_code == 303, response.get_data(as_text=True)[:2000]
    page = wait_for_import(client, response.location)
    notes = re.findall(r'<p class="muted encoding-note">([^<]*)</p>', page)
    assert len(notes) == 1 and "UTF-16" in notes[0] and notes[0].startswith("ratings.txt "), notes
