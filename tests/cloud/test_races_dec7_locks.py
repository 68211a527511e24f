"""The sale-keys lock (:mod:`dangol_cloud.sale_locks`) on its other paths (review of 7 Dec): a ``TIMEZONE`` re-time
(start, training, import) waits for a running import; a zone set at once and a customer link are refused while an
import holds it; on SQLite a write lock held past the busy timeout is a clear refusal, never a 500.

"An import runs" is a transaction holding the lock as :func:`dangol_cloud.ingest.import_rows` does
(:func:`~dangol_cloud.sale_locks.share_sale_keys`).
"""
from __future__ import annotations

import io
import threading
import uuid

import pytest
from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Customer, Purchase, Store, StoreSetting, external_ref_hash
from dangol_cloud.sale_locks import share_sale_keys
from dangol_cloud.sale_zones import retime_naive_sales
from dangol_cloud.settings import Settings
from dangol_cloud.web.customer_link import LinkError, link_customers
from dangol_cloud.zone_jobs import ZoneJobs
from tests.conftest import data_dir  # noqa: F401
from tests.cloud.conftest import *  # noqa: F401,F403
from tests.cloud.conftest import OWNER_EMAIL, add_owner, sqlite_write_lock_held
from tests.cloud.test_cloud_web import csrf_of, sign_in, wait_for_import
from tests.cloud.test_owner_link import _door_enrolment
from tests.cloud.test_races_dec7 import _lines, _store, _wait_done_or_blocked


def _site(db, db_url, tmp_path):
    add_owner(db)
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k",
                              timezone="Europe/Berlin", _env_file=None), db=db, TESTING=True)
    client = app.test_client()
    sign_in(client)
    return client, csrf_of(client.get("/stores/").get_data(as_text=True))


def test_a_timezone_retime_waits_for_a_running_import(db, ta_feng_slice):
    store_id = _store(db, "Taipei")
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                    tz="Europe/Berlin", store_id=store_id)
    moved, finished = {}, threading.Event()

    def restart_with_another_timezone():  # as `dangol-cloud serve` does at start (cli.py), TIMEZONE now Asia/Taipei
        with db.transaction() as s:
            moved["lines"] = retime_naive_sales(s, "Asia/Taipei").lines
        finished.set()

    with db.transaction() as importing:
        share_sale_keys(importing)
        thread = threading.Thread(target=restart_with_another_timezone, daemon=True)
        thread.start()
        order = _wait_done_or_blocked(db, finished)
    thread.join(60)
    assert order == "waiting"
    assert moved["lines"] == 3000 and _lines(db, read_zone="Asia/Taipei") == 3000


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_zone_set_at_once_is_refused_while_an_import_of_another_process_runs(db, db_url, tmp_path):
    client, token = _site(db, db_url, tmp_path)
    store_id = _store(db, "Taipei")  # no sales yet: its zone is set at once
    with db.transaction() as importing:
        share_sale_keys(importing)
        page = client.post(f"/stores/{store_id}/timezone", data={"csrf_token": token, "timezone": "Asia/Taipei"},
                           follow_redirects=True)
    assert page.status_code == 200
    assert "Taipei keeps its time zone for now: an import is running" in page.get_data(as_text=True)
    with db.sessions() as s:
        assert s.get(StoreSetting, store_id) is None
    page = client.post(f"/stores/{store_id}/timezone", data={"csrf_token": token, "timezone": "Asia/Taipei"},
                       follow_redirects=True)
    assert "Taipei: sales hours and door day-parts follow Asia/Taipei" in page.get_data(as_text=True)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_customer_link_is_refused_while_an_import_runs(db):
    door = _door_enrolment(db)
    loyalty = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(Customer(id=loyalty, external_ref="01607000", external_ref_hash=external_ref_hash(s, "01607000"),
                       status="active", source="import"))
    with db.transaction() as importing:
        share_sale_keys(importing)
        with db.sessions() as s, pytest.raises(LinkError, match="an import is running"):
            link_customers(s, s.get(Customer, door), s.get(Customer, loyalty), actor=OWNER_EMAIL)
    with db.transaction() as s:
        link_customers(s, s.get(Customer, door), s.get(Customer, loyalty), actor=OWNER_EMAIL)
    with db.sessions() as s:
        assert s.get(Customer, loyalty) is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_busy_past_its_timeout_is_a_clear_refusal(db, db_url, tmp_path, ta_feng_slice):
    client, token = _site(db, db_url, tmp_path)
    store_id = _store(db, "Popup")
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                    tz="Europe/Berlin", store_id=_store(db, "Taipei"))
    with sqlite_write_lock_held(db):  # another process's import holds the write lock
        page = client.post(f"/stores/{store_id}/delete", data={"csrf_token": token, "confirm": "yes"},
                           follow_redirects=True)
        assert page.status_code == 200
        assert "The store was not removed: the database was busy with another write" in page.get_data(as_text=True)
        taipei = next(iter(_stores_named(db, "Taipei")))
        job = ZoneJobs().start(db, "Europe/Berlin", store_id=taipei, store_name="Taipei", zone="Asia/Taipei",
                               before="Europe/Berlin", after="Asia/Taipei", total=3000)
        job._thread.join(60)
        assert job.error is not None and job.error.startswith("the database was busy with another write")
        # a dashboard upload meanwhile: the job page says so in a sentence, not SQLite's "database is locked"
        form = client.get("/purchases/").get_data(as_text=True)
        sent = client.post("/purchases/", content_type="multipart/form-data", data={
            "csrf_token": csrf_of(form), "format": "ta-feng", "store": store_id,
            "file": (io.BytesIO(ta_feng_slice.read_bytes()), "till.csv")})
        assert sent.status_code in (302, 303), sent.get_data(as_text=True)
        done = wait_for_import(client, sent.location, timeout=60)
        assert "The database was busy with another write" in done and "Nothing was imported" in done
        assert "database is locked" not in done
    with db.sessions() as s:
        assert s.get(Store, store_id) is not None
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.read_zone == "Europe/Berlin")) == 3000


def _stores_named(db, name: str) -> list[str]:
    with db.sessions() as s:
        return list(s.scalars(select(Store.id).where(Store.name == name)))
