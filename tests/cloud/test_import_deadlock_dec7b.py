"""Two purchase imports at once (review of 7 December, round b, R4).

Two imports naming the same new loyalty numbers in opposite orders, in separate batches (file A: L-5 then L-3;
file B: L-3 then L-5), deadlocked on PostgreSQL — each kept the customers it had inserted locked until its commit —
and one whole import was rolled back ("deadlock detected"). Imports now take the import lock
(:func:`dangol_cloud.sale_locks.queue_import`) before writing: the second waits for the first to commit, then both
are stored (SQLite's write lock already had them take turns). The dashboard's job page says an import is waiting for
another one, and the POS API is not held up by the import lock.
"""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from sqlalchemy import func, select, text

from dangol_cloud.app import create_app
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, Customer, Purchase
from dangol_cloud.sale_locks import queue_import
from dangol_cloud.settings import Settings

from .conftest import STORE_TOKEN, _database, _postgres_schema_url, add_owner, add_store_and_device
from .test_cloud_web import csrf_of, sign_in, wait_for_import

HEADER = "customer,item,quantity,timestamp"
JOIN_SECONDS = 60  # a thread still running then is a hang: the test fails instead of waiting for ever
#: SQLite shows no lock waits: how long the first import gives the second to reach its second batch.
SQLITE_GRACE = 1.0


@pytest.fixture
def pg(request):
    """A migrated :class:`Database` on a fresh PostgreSQL schema (two writers at once)."""
    database = _database(_postgres_schema_url(request))
    yield database
    database.dispose()


def _write(path, lines):
    path.write_text(HEADER + "\n" + "".join(line + "\n" for line in lines))
    return path


def _others_waiting_on_a_lock(db) -> bool:
    """PostgreSQL: another connection to this database waits on a lock (a row's insert, an advisory lock)."""
    with db.sessions() as s:
        return bool(s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")))


def _wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("case", ["new customers", "same sales"])
def test_two_imports_writing_the_same_keys_in_opposite_orders_both_succeed(db, tmp_path, case):
    """"new customers": A names new L-5 then L-3, B L-3 then L-5 (other sales); "same sales": L-5 and L-3 exist, and
    both files hold the same two sales in opposite orders (two uploads of one export, one of them re-sorted) — the
    lines' own keys deadlocked the same way, so the lock is taken before anything is written, not only customers."""
    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        s.add(CatalogueItem(ref="americano", name="Americano", price=4.5, tags=[]))
    sale_5, sale_3 = "L-5,americano,1,2026-01-05 08:00", "L-3,americano,1,2026-01-05 09:00"
    if case == "new customers":
        other_day = ["L-3,americano,1,2026-01-06 08:00", "L-5,americano,1,2026-01-06 09:00"]
        files = {"A": _write(tmp_path / "a.csv", [sale_5, sale_3]), "B": _write(tmp_path / "b.csv", other_day)}
    else:
        with db.transaction() as s:
            import_rows(s, parse_purchases(_write(tmp_path / "known.csv", ["L-5,americano,1,2025-12-01 08:00",
                                                                           "L-3,americano,1,2025-12-01 08:00"]), "csv"),
                        source="csv", key_prefix="csv", store_id=store_id)
        files = {"A": _write(tmp_path / "a.csv", [sale_5, sale_3]), "B": _write(tmp_path / "b.csv", [sale_3, sale_5])}
    postgres = db.engine.dialect.name == "postgresql"
    first_batch = {name: threading.Event() for name in files}  # its first customer is stored (not committed)
    finished = {name: threading.Event() for name in files}
    outcome: dict[str, object] = {}

    def other_stored_or_held_up(other: str) -> bool:
        """Both first batches stored (the deadlock's set-up), or the other import cannot get there: it waits on a
        lock (PostgreSQL), or has finished."""
        if first_batch[other].is_set() or finished[other].is_set():
            return True
        return _others_waiting_on_a_lock(db) if postgres else False

    def run(name: str, other: str) -> None:
        def rows():
            for n, row in enumerate(parse_purchases(files[name], "csv")):
                if n == 1:  # batch_size=1: the first row's customer is in the database by now
                    first_batch[name].set()
                    if not _wait_for(lambda: other_stored_or_held_up(other), 20.0 if postgres else SQLITE_GRACE) \
                            and postgres:
                        raise TimeoutError(f"import {other} neither stored its first batch nor waited on a lock")
                yield row
        try:
            with db.transaction() as s:
                report = import_rows(s, rows(), source="csv", key_prefix="csv", store_id=store_id, batch_size=1)
            outcome[name] = (report.inserted, report.customers_created, report.errors)
        except Exception as exc:  # noqa: BLE001 - the outcome the test compares
            outcome[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        finally:
            finished[name].set()

    threads = [threading.Thread(target=run, args=("A", "B")), threading.Thread(target=run, args=("B", "A"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_SECONDS)
    assert not any(t.is_alive() for t in threads), f"an import hung: {outcome}"
    assert all(isinstance(got, tuple) for got in outcome.values()) and len(outcome) == 2, outcome
    assert all(got[2] == [] for got in outcome.values())
    inserted = sorted(got[0] for got in outcome.values())
    assert inserted == ([2, 2] if case == "new customers" else [0, 2])  # the same sales stored once
    assert sum(got[1] for got in outcome.values()) == (2 if case == "new customers" else 0)  # created once
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Customer)) == 2
        for ref in ("L-3", "L-5"):
            cid = s.scalar(select(Customer.id).where(Customer.external_ref_hash == db.keyring.lookup_hash(ref)))
            assert s.scalar(select(func.count()).where(Purchase.customer_id == cid)) == 2  # one line of each file


def test_dashboard_import_says_it_waits_for_another_import_then_runs(pg, tmp_path):
    add_owner(pg)
    with pg.transaction() as s:
        s.add(CatalogueItem(ref="americano", name="Americano", price=4.5, tags=[]))
    path = _write(tmp_path / "sales.csv", [f"L-{n},americano,1,2026-01-05 08:{n:02d}" for n in range(6)])
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=pg.url, secret_key="t", _env_file=None),
                     db=pg, TESTING=True)
    client = app.test_client()
    sign_in(client)
    other = pg.sessions()  # another process's import (the CLI's), holding the import lock
    other.begin()
    queue_import(other)
    try:
        html = client.get("/purchases/").get_data(as_text=True)
        response = client.post("/purchases/", content_type="multipart/form-data", data={
            "csrf_token": csrf_of(html), "format": "auto", "file": [(io.BytesIO(path.read_bytes()), path.name)]})
        assert response.status_code == 303, response.get_data(as_text=True)
        job = app.extensions["dangol_import_jobs"].running()
        assert _wait_for(lambda: job.waiting), "the job never said it was waiting"
        page = client.get(response.location).get_data(as_text=True)
        assert 'data-state="running"' in page and "waiting for another import to finish" in page, page
        assert "0 of 6 rows" in page and "estimating time left" in page
    finally:
        other.commit()
        other.close()
    page = wait_for_import(client, response.location, timeout=JOIN_SECONDS)
    assert 'data-state="done"' in page and "6 imported" in page, page
    assert "waiting for another import" not in page and not job.waiting
    assert job.reading_from is not None and job.rate() > 0


def test_till_sale_is_not_held_up_by_an_import_holding_the_import_lock(pg, tmp_path):
    store_id, _ = add_store_and_device(pg)
    with pg.transaction() as s:
        s.add(CatalogueItem(ref="americano", name="Americano", price=4.5, tags=[]))
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=pg.url, secret_key="t", _env_file=None),
                     db=pg)
    with pg.transaction() as importing:
        queue_import(importing)
        r = app.test_client().post("/api/v1/purchases", data=json.dumps(
            {"customer": "L-77", "ts": "2026-01-05T08:31:00+00:00", "lines": [{"item": "americano"}]}),
            headers={"Content-Type": "application/json", "Idempotency-Key": "k-77",
                     "Authorization": f"Bearer {STORE_TOKEN}"})
        assert r.status_code == 201, r.get_data(as_text=True)
