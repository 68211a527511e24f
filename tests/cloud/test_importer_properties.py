"""Property-based tests (Hypothesis) of the purchase importers and of ``dangol-cloud import-purchases``:
arbitrary text never raises anything but ImportFormatError (for the header), every bad data line becomes
one RowError with its own line number, and a file mixing good and bad rows imports exactly the good ones."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from dangol_cloud.cli import main as cli
from dangol_cloud.db import Database
from dangol_cloud.importers import ImportFormatError, PurchaseRow, RowError, parse_purchases
from dangol_cloud.models import Customer, Purchase

from .conftest import DEV_KEY_BYTES

HEADERS = {"csv": "customer,item,quantity,timestamp,amount",
           "ta-feng": "TRANSACTION_DT,CUSTOMER_ID,AGE_GROUP,PIN_CODE,PRODUCT_SUBCLASS,PRODUCT_ID,AMOUNT,ASSET,SALES_PRICE"}
# any text on one line: the files are UTF-8 and lines end at \n or \r (no lone surrogates: not encodable)
LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=80)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"{uuid.uuid4().hex}.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["csv", "ta-feng"])
@FAST
@given(lines=st.lists(LINE, max_size=12))
def test_any_data_lines_give_one_row_or_error_each_with_its_line_number(tmp_path, fmt, lines):
    path = _write(tmp_path, "\n".join([HEADERS[fmt], *lines]) + "\n")
    out = list(parse_purchases(path, fmt))
    expected = [n for n, text in enumerate(lines, start=2) if text.strip()]
    assert [r.line for r in out] == expected
    for r in out:
        assert isinstance(r, (PurchaseRow, RowError))
        if isinstance(r, RowError):
            assert r.raw == lines[r.line - 2] and r.message


@pytest.mark.parametrize("fmt", ["csv", "ta-feng"])
@FAST
@given(header=LINE, rest=st.lists(LINE, max_size=3))
def test_any_header_is_accepted_or_refused_with_import_format_error(tmp_path, fmt, header, rest):
    path = _write(tmp_path, "\n".join([header, *rest]))
    try:
        out = list(parse_purchases(path, fmt))
    except ImportFormatError as exc:
        assert str(path) in str(exc)
    else:  # only a header that has every required column gets here
        assert all(isinstance(r, (PurchaseRow, RowError)) for r in out)


GOOD = st.builds(lambda c, i, q, a, d: f"{c},{i},{q},2026-01-{d:02d}T09:00:00,{a}",
                 st.sampled_from(["c1", "c2", "c3"]), st.sampled_from(["latte", "scone", "flat-white"]),
                 st.integers(1, 5), st.integers(0, 900).map(lambda n: f"{n / 100:.2f}"), st.integers(1, 28))
BAD = st.one_of(
    st.builds(lambda c: f"{c},latte,many,2026-01-02T09:00:00,1.00", st.sampled_from(["c1", "c9"])),   # quantity
    st.builds(lambda c: f"{c},latte,1,yesterday,1.00", st.sampled_from(["c1", "c9"])),               # timestamp
    st.just(",latte,1,2026-01-02T09:00:00,1.00"),                                                     # customer
    st.just("c9,latte,1,2026-01-02T09:00:00,1.00,extra"),                                             # columns
    st.just('c9,"latte,1,2026-01-02T09:00:00,1.00'),                                                  # quoting
    st.just("c9,latte,1,2026-01-02T09:00:00,nan"))                                                    # amount


@pytest.fixture
def import_env(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("DANGOL_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    yield db
    db.dispose()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.booleans(), GOOD, BAD), min_size=1, max_size=15))
def test_cli_import_of_mixed_good_and_bad_rows_stores_exactly_the_good_ones(tmp_path, import_env, capsys, rows):
    db = import_env
    tag = uuid.uuid4().hex[:6]  # fresh customers per example: "c9" only ever appears on bad lines
    lines = [(good.replace("c", f"{tag}-c", 1) if ok else bad.replace("c9", f"{tag}-c9")) for ok, good, bad in rows]
    path = _write(tmp_path, "\n".join([HEADERS["csv"], *lines]) + "\n")
    good_lines = {n for n, (ok, *_) in enumerate(rows, start=2) if ok}
    unique_good = len({lines[n - 2] + str(n) for n in good_lines})
    with db.sessions() as s:
        before = s.scalar(select(func.count()).select_from(Purchase))
    assert cli(["import-purchases", str(path), "--format", "csv", "--no-progress"]) == 0
    err = capsys.readouterr().err
    reported = {int(line.split(":")[1]) for line in err.splitlines() if line.startswith(str(path))}
    assert reported == set(range(2, len(rows) + 2)) - good_lines
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) - before == unique_good
        refs = {c.external_ref for c in s.scalars(select(Customer)) if c.external_ref and c.external_ref.startswith(tag)}
    assert f"{tag}-c9" not in refs  # a bad row creates nothing, not even its customer
    assert refs == {lines[n - 2].split(",")[0] for n in good_lines}
