"""The zone naive sale times are read in, changed after an import (SQLite and PostgreSQL, real Ta-Feng rows).

A file's naive sale times are read in the store's own zone (Stores page) or else in ``TIMEZONE`` and stored in UTC,
and each line's idempotency key hashes that UTC time. The first hour of a café: import, notice the hours are off,
set the zone, import the same cumulative export again — every naive line got another UTC time, another key, and
the whole history was stored twice (the old copy at the wrong hours). A store's own zone could not be fixed at
all once it held imports (the Stores page refused). Now each line records the zone its naive time was read in
(``purchases.read_zone``, migration 0013): a change of ``TIMEZONE`` moves the lines to the new hours at the next
import, a store's new zone moves its lines when the owner confirms it on the Stores page — re-timed and re-keyed
in one transaction — and a re-import adds nothing. Times a file gave with their offset stay where they are.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, text

from dangol_cloud.app import create_app
from dangol_cloud.db import Database, _alembic_config, migrate
from dangol_cloud.importers import PurchaseRow, parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Purchase, Store, StoreSetting
from dangol_cloud.settings import Settings
from dangol_cloud.store_zones import store_zones

from .conftest import DEV_KEY_BYTES, add_owner
from .test_cloud_web import csrf_of, sign_in, wait_for_import
from .test_owner_import import _upload, cj  # noqa: F401 - the fixture

CSV_HEADER = "customer,item,quantity,timestamp,amount,product_id,category,store"


# --- helpers -----------------------------------------------------------------------------------------------------
def _import(db: Database, path: Path, tz: str, store_id: str | None = None, fmt: str = "ta-feng"):
    with db.transaction() as s:
        return import_rows(s, parse_purchases(path, fmt), source=fmt, key_prefix=fmt, tz=tz, store_id=store_id)


def _naive_times(path: Path, fmt: str = "ta-feng") -> list[datetime]:
    """The sale times of a file's valid rows as written (Ta-Feng: dates, local midnight)."""
    return sorted(row.ts for row in parse_purchases(path, fmt) if isinstance(row, PurchaseRow))


def _stored(db: Database) -> list[datetime]:
    with db.sessions() as s:
        return sorted(s.scalars(select(Purchase.ts)))


def _count(db: Database) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(Purchase))


def _in(zone: str, times: list[datetime]) -> list[datetime]:
    """Naive wall times read in ``zone`` (fold 0, as the import reads them), as sorted UTC instants."""
    return sorted(t.replace(tzinfo=ZoneInfo(zone)).astimezone(timezone.utc) for t in times)


def _store(db: Database, name: str = "Taipei", zone: str | None = None) -> str:
    with db.transaction() as s:
        store = Store(name=name, ref=name.lower())
        s.add(store)
        s.flush()
        if zone:
            s.add(StoreSetting(store_id=store.id, timezone=zone))
        return store.id


def _real_csv(data_dir: Path, dst: Path, times: list[str], *, first: int = 1) -> Path:
    """A plain CSV of real Ta-Feng lines (customer, product subclass, quantity, sales price, product id) from data
    row ``first`` on, one per entry of ``times`` (the sale time as written in the file: naive or with an offset)."""
    src = data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv"
    with src.open() as fin:
        lines = [line.rstrip("\n").split(",") for _n, line in zip(range(first + len(times)), fin)][first:]
    body = [f"{f[1]},{f[4]},{f[6]},{ts},{f[8]},{f[5]},," for f, ts in zip(lines, times)]
    dst.write_text(CSV_HEADER + "\n" + "\n".join(body) + "\n")
    return dst


# --- TIMEZONE changed between two imports -------------------------------------------------------------------------
@pytest.mark.parametrize("with_store", [False, True], ids=["history", "store-without-own-zone"])
def test_a_reimport_after_timezone_changed_adds_nothing_and_moves_the_hours(db, ta_feng_slice, with_store,
                                                                              monkeypatch):
    monkeypatch.setattr("dangol_cloud.sale_zones.CHUNK_LINES", 250)  # moved a few customers at a time
    store_id = _store(db) if with_store else None
    first = _import(db, ta_feng_slice, "UTC", store_id)            # TIMEZONE left at its default
    assert first.inserted > 2000
    naive = _naive_times(ta_feng_slice)
    assert _stored(db) == _in("UTC", naive)
    again = _import(db, ta_feng_slice, "Asia/Taipei", store_id)    # the owner set TIMEZONE, then re-imported
    assert (again.inserted, again.duplicates) == (0, first.inserted)   # before: every line again, the history doubled
    assert _count(db) == first.inserted
    assert _stored(db) == _in("Asia/Taipei", naive)                # Taipei midnight = 16:00 UTC the day before
    assert _import(db, ta_feng_slice, "Asia/Taipei", store_id).inserted == 0


def test_the_first_hour_upload_set_timezone_restart_upload_again(db, db_url, tmp_path, ta_feng_slice):
    """The dashboard: upload (TIMEZONE unset), set DANGOL_TIMEZONE, restart, upload the same export again."""
    add_owner(db)

    def upload(zone: str | None) -> str:
        settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k", _env_file=None,
                            **({"timezone": zone} if zone else {}))
        client = create_app(settings, db=db, TESTING=True).test_client()
        sign_in(client)
        response = _upload(client, [ta_feng_slice])
        assert response.status_code == 303
        page = wait_for_import(client, response.location)
        assert 'data-state="done"' in page, page
        return page

    upload(None)
    stored = _count(db)
    assert stored > 2000
    page = upload("Asia/Taipei")
    assert _count(db) == stored                                    # before: twice as many purchases
    assert "<b>0 imported</b>" in page and f"{stored:,} already present" in page
    assert f"{stored:,} imported sales whose file times were read as UTC time moved to the same hours in Asia/Taipei" \
        in page
    assert _stored(db) == _in("Asia/Taipei", _naive_times(ta_feng_slice))


# --- a store's own zone changed on the Stores page ----------------------------------------------------------------
@pytest.fixture
def site(db, db_url, tmp_path):
    add_owner(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k", timezone="Europe/Berlin",
                        _env_file=None)
    client = create_app(settings, db=db, TESTING=True).test_client()
    sign_in(client)
    return client


def _set_zone(client, store_id: str, zone: str, confirm: bool = False):
    """Post a zone change and follow its redirect: the Stores page, or the page of the background job that moves the
    store's sales once it finished (:func:`tests.cloud.test_zone_retime_job.wait_for_zone_job`)."""
    from .test_zone_retime_job import wait_for_zone_job

    token = csrf_of(client.get("/stores/").get_data(as_text=True))
    data = {"csrf_token": token, "timezone": zone} | ({"confirm": "yes"} if confirm else {})
    response = client.post(f"/stores/{store_id}/timezone", data=data)
    if response.status_code not in (302, 303):
        return response
    if "/stores/zone-jobs/" in response.location:
        wait_for_zone_job(client, response.location)
    return client.get(response.location)


def test_a_stores_zone_set_after_its_import_moves_its_sales_once_confirmed(db, site, ta_feng_slice):
    store_id = _store(db, "Taipei")
    first = _import(db, ta_feng_slice, "Europe/Berlin", store_id)   # read as Berlin time: 7 hours off
    naive = _naive_times(ta_feng_slice)
    asked = _set_zone(site, store_id, "Asia/Taipei")                # first: what will happen, nothing changed yet
    html = asked.get_data(as_text=True)
    assert asked.status_code == 200 and 'id="confirm"' in html
    assert "Europe/Berlin" in html and "Asia/Taipei" in html and f"{first.inserted:,}" in html
    with db.sessions() as s:
        assert store_zones(s) == {}
    assert _stored(db) == _in("Europe/Berlin", naive)
    done = _set_zone(site, store_id, "Asia/Taipei", confirm=True)   # before: refused ("set it before the import")
    assert done.status_code == 200 and f"{first.inserted:,} imported sales" in done.get_data(as_text=True)
    with db.sessions() as s:
        assert store_zones(s) == {store_id: "Asia/Taipei"}
    assert _stored(db) == _in("Asia/Taipei", naive)
    again = _import(db, ta_feng_slice, "Europe/Berlin", store_id)   # the store's own zone is used
    assert (again.inserted, again.duplicates) == (0, first.inserted)
    _set_zone(site, store_id, "", confirm=True)                     # back to TIMEZONE: back to the Berlin hours
    with db.sessions() as s:
        assert store_zones(s) == {}
    assert _stored(db) == _in("Europe/Berlin", naive)
    assert _import(db, ta_feng_slice, "Europe/Berlin", store_id).inserted == 0


def test_a_zone_change_of_a_store_without_imports_asks_nothing(db, site):
    store_id = _store(db, "Taipei")
    page = _set_zone(site, store_id, "Asia/Taipei").get_data(as_text=True)
    assert 'id="confirm"' not in page and "follow Asia/Taipei" in page
    with db.sessions() as s:
        assert store_zones(s) == {store_id: "Asia/Taipei"}


# --- what moves and what stays --------------------------------------------------------------------------------------
def test_times_with_an_offset_stay_and_swapped_keys_do_not_collide(db, data_dir, tmp_path):
    """Lines whose file time had an offset are instants: never moved. Two identical real sale lines 8 hours apart
    (08:00 and 16:00 read in UTC): moved to Taipei, the 16:00 one takes the 08:00 one's UTC time and key — the
    re-keying must not trip over the unique key on the way (nor over a PostgreSQL statement order)."""
    times = ["2000-11-01T08:00:00", "2000-11-01T16:00:00", "2000-11-02T09:30:00+08:00", "2000-11-03T12:00:00Z",
             "2000-11-04T18:15:00"]
    path = _real_csv(data_dir, tmp_path / "till.csv", times)
    lines = path.read_text().splitlines()
    lines[2] = ",".join(lines[1].split(",")[:3] + lines[2].split(",")[3:4] + lines[1].split(",")[4:])  # the same sale
    path.write_text("\n".join(lines) + "\n")
    first = _import(db, path, "UTC", fmt="csv")
    assert (first.inserted, first.errors) == (5, [])
    again = _import(db, path, "Asia/Taipei", fmt="csv")
    assert (again.inserted, again.duplicates) == (0, 5)
    utc = timezone.utc
    assert _stored(db) == sorted([datetime(2000, 11, 1, 0, tzinfo=utc), datetime(2000, 11, 1, 8, tzinfo=utc),
                                  datetime(2000, 11, 2, 1, 30, tzinfo=utc), datetime(2000, 11, 3, 12, tzinfo=utc),
                                  datetime(2000, 11, 4, 10, 15, tzinfo=utc)])
    assert _import(db, path, "UTC", fmt="csv").inserted == 0             # and back
    assert _stored(db)[:2] == [datetime(2000, 11, 1, 8, tzinfo=utc), datetime(2000, 11, 1, 16, tzinfo=utc)]


def test_wall_times_around_daylight_saving_changes_are_moved_as_the_file_wrote_them(db, data_dir, tmp_path):
    """Europe/Berlin skipped 02:00–03:00 on 2000-03-26 and repeated it on 2000-10-29 (a time in the repeat is read
    as its first occurrence); America/Sao_Paulo skipped midnight on 2000-10-08, so that day's date without a time
    was read with the offset before the change (03:00 UTC, the instant of 01:00). Moved to UTC, each is the time
    the file wrote, as a re-import in UTC reads it."""
    berlin = ["2000-03-26T03:30:00", "2000-03-26T01:59:00", "2000-10-29T02:30:00", "2000-10-29T12:00:00"]
    sao_paulo = ["2000-10-08T00:00:00", "2000-10-08T09:15:00", "2000-10-07T00:00:00"]
    for zone, times, first in (("Europe/Berlin", berlin, 1), ("America/Sao_Paulo", sao_paulo, 100)):
        path = _real_csv(data_dir, tmp_path / "dst.csv", times, first=first)
        assert _import(db, path, zone, fmt="csv").inserted == len(times)
        again = _import(db, path, "UTC", fmt="csv")
        assert (again.inserted, again.duplicates) == (0, len(times)), zone
    naive = _naive_times(_real_csv(data_dir, tmp_path / "b.csv", berlin), "csv") + _naive_times(
        _real_csv(data_dir, tmp_path / "s.csv", sao_paulo, first=100), "csv")
    assert _stored(db) == _in("UTC", naive)


# --- migration 0013 --------------------------------------------------------------------------------------------------
def test_migration_0013_records_the_zone_of_lines_imported_before_it(db_url, ta_feng_slice, cj, data_dir, tmp_path):
    """Lines imported before 0013 (the column dropped by its downgrade) are taken as read in their store's own zone,
    else in the TIMEZONE of the next import or zone change; Complete Journey's times, marked UTC by the importer, are
    left alone. A re-import in the same zone adds nothing; one after a change moves them. (The store gets the next
    3,000 rows of the file: the same rows would be filed under it, history no more.)"""
    from alembic import command

    store_slice = tmp_path / "ta_feng_next.csv"
    with (data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv").open() as fin, store_slice.open("w") as out:
        for n, line in enumerate(fin):
            if n == 0 or 3000 < n <= 6000:
                out.write(line)
            elif n > 6000:
                break

    database = Database(db_url, data_key=DEV_KEY_BYTES)
    try:
        database.migrate()
        taipei = _store(database, "Taipei", "Asia/Taipei")

        def journey(tz: str):
            with database.transaction() as s:
                return import_rows(s, parse_purchases(cj["transactions"], "completejourney", products=cj["products"]),
                                   source="completejourney", key_prefix="completejourney", tz=tz)

        first = _import(database, ta_feng_slice, "Europe/Berlin")
        in_store = _import(database, store_slice, "Europe/Berlin", taipei)
        utc_marked = journey("Europe/Berlin").inserted
        assert utc_marked > 1000
        command.downgrade(_alembic_config(database.engine.url.render_as_string(hide_password=False)), "0012")
        migrate(database.engine, "head")
        with database.engine.connect() as conn:
            zones = dict(conn.execute(text("SELECT read_zone, count(*) FROM purchases GROUP BY read_zone")).all())
        assert zones == {"TIMEZONE": first.inserted, "Asia/Taipei": in_store.inserted, None: utc_marked}
        assert _import(database, ta_feng_slice, "Europe/Berlin").inserted == 0       # taken as read in Berlin
        again = _import(database, ta_feng_slice, "Asia/Seoul")
        assert (again.inserted, again.duplicates) == (0, first.inserted)
        with database.sessions() as s:
            history = sorted(s.scalars(select(Purchase.ts).where(Purchase.store_id.is_(None),
                                                                 Purchase.source == "ta-feng")))
        assert history == _in("Asia/Seoul", _naive_times(ta_feng_slice))
        assert _import(database, store_slice, "Asia/Seoul", taipei).inserted == 0  # its own zone: unchanged
        assert journey("Asia/Seoul").inserted == 0                                  # instants: never moved
    finally:
        database.dispose()


def test_training_after_timezone_changed_moves_the_hours_first(db, ta_feng_slice, tmp_path):
    """A TIMEZONE changed since the last import (a restart with the new setting): the next training reads the sales
    at the new hours, without waiting for an import."""
    from dangol_cloud.training import train_from_database

    first = _import(db, ta_feng_slice, "UTC")
    settings = Settings(cloud_home=tmp_path / "home", database_url=db.url, secret_key="k", timezone="Asia/Taipei",
                        _env_file=None)
    train_from_database(db, settings)
    assert _count(db) == first.inserted
    assert _stored(db) == _in("Asia/Taipei", _naive_times(ta_feng_slice))
