"""Issue 11, findings 3 and 4 — the Complete Journey upload works from the form (transactions + products,
optional demographics, in any order, format told from the headers), and an upload is a background job with
a progress page (rows, rows/s, ETA) and a result page. Real Complete Journey and Ta-Feng files."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from dangol_cloud.importers import ImportFormatError, detect_files
from dangol_cloud.jobs import ImportJob
from dangol_cloud.models import CustomerSegment, ProductMapping, Purchase, utcnow

from .test_cloud_web import csrf_of, sign_in, wait_for_import, web  # noqa: F401 - the fixture


@pytest.fixture
def cj(data_dir, tmp_path):
    """The first 2,000 rows of the real Complete Journey transactions, and the real products/demographics."""
    folder = data_dir / "purchases" / "completejourney"
    head = tmp_path / "cj_transactions_head.csv"
    with (folder / "transactions.csv").open() as fin, head.open("w") as fout:
        for n, line in enumerate(fin):
            if n > 2000:
                break
            fout.write(line)
    return {"transactions": head, "products": folder / "products.csv", "demographics": folder / "demographics.csv"}


def test_detect_files_tells_each_file_by_its_header(cj, ta_feng_slice, tmp_path):
    got = detect_files([cj["demographics"], cj["products"], cj["transactions"]])
    assert (got.fmt, got.purchases, got.products, got.demographics) == (
        "completejourney", cj["transactions"], cj["products"], cj["demographics"])
    assert detect_files([ta_feng_slice]).fmt == "ta-feng"
    with pytest.raises(ImportFormatError, match="need products.csv"):
        detect_files([cj["transactions"]])
    with pytest.raises(ImportFormatError, match="you chose 'csv'"):
        detect_files([ta_feng_slice], "csv")
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n")
    with pytest.raises(ImportFormatError, match="odd.csv: not a known purchase file"):
        detect_files([odd, ta_feng_slice])


def _upload(client, files, fmt="auto"):
    html = client.get("/purchases/").get_data(as_text=True)
    data = {"csrf_token": csrf_of(html), "format": fmt,
            "file": [(io.BytesIO(p.read_bytes()), p.name) for p in files]}
    return client.post("/purchases/", content_type="multipart/form-data", data=data)


def test_complete_journey_multi_file_upload_imports_in_the_background(web, cj):  # noqa: F811
    app, db = web
    client = app.test_client()
    sign_in(client)
    response = _upload(client, [cj["products"], cj["transactions"], cj["demographics"]])
    assert response.status_code == 303
    page = wait_for_import(client, response.location)
    assert 'data-state="done"' in page, page
    numbers = re.search(r"([\d,]+) of ([\d,]+) rows · ([\d,]+) rows/s", page)
    assert numbers and numbers.group(1) == numbers.group(2) == "2,000"
    assert "2,000 rows read" in page and "not on the menu" in page and "age bands from demographics" in page
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) > 1900
        assert s.scalar(select(func.count()).select_from(CustomerSegment)) > 0
        # products are named by the data's product_category (never invented), and none is on the menu
        names = set(s.scalars(select(ProductMapping.product_id)))
        assert names and s.scalar(select(func.count()).select_from(ProductMapping)
                                  .where(ProductMapping.menu_item_id.is_not(None))) == 0


def test_transactions_without_products_are_refused_naming_the_missing_file(web, cj):  # noqa: F811
    app, db = web
    client = app.test_client()
    sign_in(client)
    response = _upload(client, [cj["transactions"]])
    assert response.status_code == 422
    assert "cj_transactions_head.csv: Complete Journey transactions need products.csv" in \
        response.get_data(as_text=True)
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 0


def test_progress_numbers_are_rows_per_second_and_seconds_left():
    job = ImportJob(id="x", files=["a.csv"], fmt="csv", total=1000, done=250,
                    started_at=utcnow() - timedelta(seconds=10))
    assert 24 < job.rate() <= 25.1
    assert 29 < job.eta_seconds() < 31 and job.percent() == 25
    job.finished_at = utcnow()
    assert job.eta_seconds() is None and job.percent() == 100
