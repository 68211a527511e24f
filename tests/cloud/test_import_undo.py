"""Undo a dashboard purchase upload (SQLite and PostgreSQL, real Ta-Feng rows, the dashboard's own import jobs).

A reviewer uploaded Ta-Feng into Seoul by mistake (the store choice listed Seoul first), then into Taipei: nothing
could take the Seoul copy back — no undo, delete or move — and "Remove store" refused Seoul because it held sales.
Each dashboard upload is now recorded (``purchase_imports``) and marks its lines (``purchases.import_id``, migration
0016); "Undo this import" removes exactly its lines, returns the history lines it filed under its store, removes the
customers and products only it created, audits it, and leaves every other upload intact.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dangol_cloud.import_detect import detect_files
from dangol_cloud.import_undo import undo_import
from dangol_cloud.jobs import ImportJobs
from dangol_cloud.models import (AuditEntry, CatalogueItem, Customer, PickCredit, ProductMapping, Purchase,
                                 PurchaseImport, Store, StoreSetting, Visit)
from dangol_cloud.settings import Settings
from dangol_cloud.web.store_edit import removal_blockers


def _settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="undo", timezone="UTC",
                    _env_file=None)


def _upload(db, settings, path: Path, store_id: str | None) -> str:
    """Run the dashboard's import job for ``path`` into ``store_id``; returns the job (= recorded import) id."""
    folder = tempfile.TemporaryDirectory(prefix="undo-test-")
    copy = Path(folder.name) / "upload-1.csv"
    copy.write_bytes(path.read_bytes())
    job = ImportJobs().start(db, settings, detect_files([copy]), folder, files=[path.name], store_id=store_id)
    job._thread.join(120)
    assert job.error is None and job.report is not None, job.error
    return job.id


def _stores(db, *zones: tuple[str, str]) -> list[str]:
    with db.transaction() as s:
        stores = [Store(name=name, ref=name.lower()) for name, _zone in zones]
        s.add_all(stores)
        s.flush()
        s.add_all([StoreSetting(store_id=store.id, timezone=zone) for store, (_n, zone) in zip(stores, zones)])
        return [store.id for store in stores]


def _by_store(db) -> dict[str | None, int]:
    with db.sessions() as s:
        return dict(s.execute(select(Purchase.store_id, func.count()).group_by(Purchase.store_id)).all())


def _lines(db) -> list[tuple]:
    with db.sessions() as s:
        return sorted(s.execute(select(Purchase.idempotency_key, Purchase.ts, Purchase.store_id, Purchase.read_zone,
                                       Purchase.customer_id, Purchase.item_id)).all())


def _count(db, model) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def _undo(db, import_id: str, zone: str = "UTC"):
    with db.transaction() as s:
        return undo_import(s, import_id, actor="owner@cafe.example", default_zone=zone)


@pytest.fixture
def second_slice(data_dir, tmp_path) -> Path:
    """Ta-Feng data rows 3,001–4,000 (another file, some of the same customers and products)."""
    src = data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv"
    dst = tmp_path / "ta_feng_second.csv"
    with src.open() as fin, dst.open("w") as fout:
        for n, line in enumerate(fin):
            if n == 0 or 3000 < n <= 4000:
                fout.write(line)
            elif n > 4000:
                break
    return dst


def test_undo_of_an_upload_into_the_wrong_store_leaves_every_other_upload(db, db_url, tmp_path, ta_feng_slice,
                                                                         second_slice):
    settings = _settings(tmp_path, db_url)
    seoul, taipei = _stores(db, ("Seoul", "Asia/Seoul"), ("Taipei", "Asia/Taipei"))
    history = _upload(db, settings, second_slice, None)
    before = _lines(db)
    wrong = _upload(db, settings, ta_feng_slice, seoul)
    right = _upload(db, settings, ta_feng_slice, taipei)
    after_right = [line for line in _lines(db) if line[2] == taipei]
    assert _by_store(db) == {None: 1000, seoul: 3000, taipei: 3000}
    with db.sessions() as s:
        assert removal_blockers(s, seoul) == ["3,000 sales"]
        record = s.get(PurchaseImport, wrong)
        assert (record.store_name, record.lines, record.rows, record.files) == ("Seoul", 3000, 3000,
                                                                                 [ta_feng_slice.name])
    customers, items = _count(db, Customer), _count(db, CatalogueItem)

    result = _undo(db, wrong)
    assert (result.lines, result.returned, result.customers, result.products) == (3000, 0, 0, 0)
    assert _by_store(db) == {None: 1000, taipei: 3000}          # Taipei's and the history upload: untouched
    assert [line for line in _lines(db) if line[2] == taipei] == after_right
    assert [line for line in _lines(db) if line[2] is None] == before
    assert (_count(db, Customer), _count(db, CatalogueItem)) == (customers, items)  # Taipei's lines name them
    with db.sessions() as s:
        assert removal_blockers(s, seoul) == []                  # the store can go now
        record = s.get(PurchaseImport, wrong)
        assert record.undone_by == "owner@cafe.example" and record.undone_lines == 3000
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "import-undone")).one()
        assert wrong in entry.detail and "Seoul" in entry.detail and "3,000 purchase lines removed" in entry.detail
        assert s.get(PurchaseImport, right).undone_at is None and s.get(PurchaseImport, history).undone_at is None
    with pytest.raises(ValueError, match="undone"):
        _undo(db, wrong)
    with pytest.raises(LookupError):
        _undo(db, "f" * 32)


def test_undo_removes_the_customers_and_products_only_it_created(db, db_url, tmp_path, ta_feng_slice):
    settings = _settings(tmp_path, db_url)
    (seoul,) = _stores(db, ("Seoul", "Asia/Seoul"))
    wrong = _upload(db, settings, ta_feng_slice, seoul)
    with db.transaction() as s:  # one customer came to a door meanwhile: a visit names them, they stay
        kept = s.scalars(select(Purchase.customer_id).order_by(Purchase.id).limit(1)).one()
        s.add(Visit(event_id="visit-after-import", customer_id=kept, store_id=seoul,
                    ts=s.scalars(select(Purchase.ts).limit(1)).one(), shown_items=[]))
        first_line = s.scalars(select(Purchase.id).order_by(Purchase.id).limit(1)).one()
        visit_id = s.scalars(select(Visit.id)).one()
        item = s.get(Purchase, first_line).item_id
        s.add(PickCredit(purchase_id=first_line, visit_id=visit_id, customer_id=kept, item_id=item,
                         shown_rank=1, at=s.get(Purchase, first_line).ts))
    customers, products = _count(db, Customer), _count(db, ProductMapping)
    assert customers > 100 and products > 100
    result = _undo(db, wrong)
    assert result.lines == 3000 and _count(db, Purchase) == 0 and _count(db, PickCredit) == 0
    with db.sessions() as s:
        assert s.scalars(select(Customer.id)).all() == [kept]
    assert (_count(db, CatalogueItem), _count(db, ProductMapping)) == (0, 0)
    assert (result.customers, result.products) == (customers - 1, products)


def test_undo_of_a_store_upload_returns_the_history_it_filed(db, db_url, tmp_path, ta_feng_slice):
    """History first, then the same file into Taipei (filed, not doubled: zones Asia/Taipei vs TIMEZONE UTC); undo
    of the Taipei upload gives the history upload its lines back as they were; undo of the history upload after
    a store filed them keeps them as the store upload's."""
    settings = _settings(tmp_path, db_url)
    (taipei,) = _stores(db, ("Taipei", "Asia/Taipei"))
    history = _upload(db, settings, ta_feng_slice, None)
    as_history = _lines(db)
    into = _upload(db, settings, ta_feng_slice, taipei)
    assert _by_store(db) == {taipei: 3000}
    filed = _lines(db)
    result = _undo(db, into)
    assert (result.lines, result.returned) == (0, 3000)
    assert _lines(db) == as_history                               # times, zone read in and keys as uploaded
    again = _upload(db, settings, ta_feng_slice, taipei)          # the right store once more: filed again
    assert _lines(db) == filed and _by_store(db) == {taipei: 3000}
    result = _undo(db, history)                                   # the history upload: its lines are Taipei's now
    assert (result.lines, result.handed_on, result.customers) == (0, 3000, 0)
    assert _by_store(db) == {taipei: 3000}
    assert _undo(db, again).lines == 3000 and _count(db, Purchase) == 0
