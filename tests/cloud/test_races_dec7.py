"""Races between an import and a re-keying or a store removal (review of 7 Dec), on both databases.

1. A store's zone change (the dashboard's background job) confirmed while an import of the same export into that
   store runs (another process: the CLI, nothing the Stores page knows of) waits for the import to commit, then moves
   every line: the history is stored once (it used to end with 5,000 lines for 3,000).
2. "Remove store" confirmed while an upload into that store runs waits for the upload, counts its sales and refuses
   (the removal used to go through, detaching every uploaded sale from the store).

The ordering is fixed by the import's row generator: it starts the other side at a given row and goes on only once
that side finished (the bug) or waits on a lock (PostgreSQL: seen in ``pg_locks``, in the test run's own database;
SQLite: still running after :data:`SETTLE` seconds, its busy timeout being 30 s).
"""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text

from dangol_cloud.app import create_app
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Purchase, Store
from dangol_cloud.settings import Settings
from dangol_cloud.zone_jobs import ZoneJobs
from tests.conftest import data_dir  # noqa: F401
from tests.cloud.conftest import *  # noqa: F401,F403
from tests.cloud.conftest import add_owner
from tests.cloud.test_cloud_web import csrf_of, sign_in

#: Seconds the SQLite side is given to finish before it counts as waiting on the write lock.
SETTLE = 8.0


def _store(db, name: str) -> str:
    with db.transaction() as s:
        store = Store(name=name, ref=name.lower())
        s.add(store)
        s.flush()
        return store.id


def _lines(db, **where) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(Purchase).filter_by(**where)) or 0


def _wait_done_or_blocked(db, done: threading.Event) -> str:
    """``"done"`` once the other side finished, ``"waiting"`` once it waits on a lock."""
    deadline = time.monotonic() + (SETTLE if db.engine.dialect.name == "sqlite" else 60)
    while time.monotonic() < deadline:
        if done.wait(0.05):
            return "done"
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect() as conn:
                if conn.scalar(text("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                                    "WHERE NOT l.granted AND a.datname = current_database()")):
                    return "waiting"
    return "done" if done.is_set() else "waiting"


@pytest.mark.parametrize("at_row", [0, 1000])
def test_zone_change_during_an_import_of_the_same_export_stores_it_once(db, ta_feng_slice, at_row):
    store_id = _store(db, "Taipei")  # no own zone: naive times read in TIMEZONE, Europe/Berlin
    with db.transaction() as s:
        first = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                            tz="Europe/Berlin", store_id=store_id)
    assert first.inserted == 3000
    jobs, seen = ZoneJobs(), {}

    def rows():
        for n, row in enumerate(parse_purchases(ta_feng_slice, "ta-feng")):
            if n == at_row:  # the zones were read (and at 1000, two batches written): the owner confirms the zone
                job = seen["job"] = jobs.start(db, "Europe/Berlin", store_id=store_id, store_name="Taipei",
                                               zone="Asia/Taipei", before="Europe/Berlin", after="Asia/Taipei",
                                               total=first.inserted)
                finished = threading.Event()
                threading.Thread(target=lambda: (job._thread.join(), finished.set()), daemon=True).start()
                seen["order"] = _wait_done_or_blocked(db, finished)
            yield row

    with db.transaction() as s:  # another process re-imports the same export (as Berlin time, the zone it read)
        again = import_rows(s, rows(), source="ta-feng", key_prefix="ta-feng", tz="Europe/Berlin",
                            store_id=store_id, batch_size=500)
    job = seen["job"]
    job._thread.join(60)
    assert again.inserted == 0
    assert job.error is None and job.moved == 3000
    assert _lines(db) == 3000 and _lines(db, read_zone="Asia/Taipei") == 3000
    assert seen["order"] == "waiting", "the zone change committed while the import ran"
    with db.transaction() as s:  # the export again, now read in the store's zone: nothing new
        third = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                            tz="Europe/Berlin", store_id=store_id)
    assert third.inserted == 0 and third.retimed.lines == 0
    assert _lines(db) == 3000


def test_store_removed_during_an_upload_into_it_is_refused(db, db_url, tmp_path, ta_feng_slice):
    add_owner(db)
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k", _env_file=None),
                     db=db, TESTING=True)
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get("/stores/").get_data(as_text=True))
    store_id = _store(db, "Popup")
    outcome, finished = {}, threading.Event()

    def remove():
        page = client.post(f"/stores/{store_id}/delete", data={"csrf_token": token, "confirm": "yes"},
                           follow_redirects=True)
        outcome["status"], outcome["page"] = page.status_code, page.get_data(as_text=True)
        finished.set()

    remover = threading.Thread(target=remove, daemon=True)

    def rows():
        for n, row in enumerate(parse_purchases(ta_feng_slice, "ta-feng")):
            if n == 1000:  # two 500-line batches written, not committed: the owner confirms the removal
                remover.start()
                outcome["order"] = _wait_done_or_blocked(db, finished)
            yield row

    with db.transaction() as s:
        report = import_rows(s, rows(), source="ta-feng", key_prefix="ta-feng", tz="UTC", store_id=store_id,
                             batch_size=500)
    remover.join(60)
    assert report.inserted == 3000
    assert outcome["order"] == "waiting"
    assert outcome["status"] == 200
    assert "Popup cannot be removed: it has 3,000 sales" in outcome["page"], outcome["page"][-2000:]
    with db.sessions() as s:
        assert s.get(Store, store_id) is not None
    assert _lines(db, store_id=store_id) == 3000 and _lines(db, store_id=None) == 0
