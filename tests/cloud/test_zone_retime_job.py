"""A store's zone change on the Stores page runs as a background job (SQLite and PostgreSQL, real Ta-Feng rows).

Moving a store's imported sales to its new zone's hours took about two minutes on the whole Ta-Feng history on
SQLite, inside the web request: the confirmed post hung until the browser or the proxy gave up. Now the confirmed
post starts a job on the app's :class:`~dangol_cloud.zone_jobs.ZoneJobs` and answers at once with the job's page;
the job commits the new zone and the moved sales together, or on an error neither, and the page says which. While it
runs no other zone change starts.

A "gate" holds the job's first chunk of moved lines until the test lets it go, so the tests see the job running —
and see that the request answered while the move had not finished (it runs on the job's thread, not the request's).
Also: the re-time that every start, import and training run does is read-only when nothing moves (no UPDATE, no
grouped scan of the purchases), answered from the index on ``(store_id, read_zone)`` (revision 0014).
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, text

from dangol_cloud.app import create_app
from dangol_cloud.models import StoreSetting
from dangol_cloud.settings import Settings
from dangol_cloud.store_zones import store_zones

from .conftest import add_owner
from .test_cloud_web import csrf_of, sign_in
from .test_zone_change_reimport import _count, _import, _in, _naive_times, _store, _stored


class Gate:
    """Holds the first call of :func:`dangol_cloud.sale_zones._move` (the first chunk of moved lines) until
    :attr:`release` is set; records the thread it ran on."""

    def __init__(self, monkeypatch, *, fail_at: int | None = None) -> None:
        import dangol_cloud.sale_zones as sale_zones

        self.entered, self.release = threading.Event(), threading.Event()
        self.thread: str | None = None
        self.calls = 0
        original = sale_zones._move

        def held(*args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                self.thread = threading.current_thread().name
                self.entered.set()
                self.release.wait(30)  # bounded: on a request thread (the old code) the post goes on after it
            if fail_at is not None and self.calls == fail_at:
                raise RuntimeError("disk I/O error (injected after two chunks were moved)")
            return original(*args, **kwargs)

        monkeypatch.setattr(sale_zones, "_move", held)


@pytest.fixture
def site(db, db_url, tmp_path):
    add_owner(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k", timezone="Europe/Berlin",
                        _env_file=None)
    app = create_app(settings, db=db, TESTING=True)
    client = app.test_client()
    sign_in(client)
    return client


def _post_zone(client, store_id: str, zone: str, confirm: bool = True):
    token = csrf_of(client.get("/stores/").get_data(as_text=True))
    data = {"csrf_token": token, "timezone": zone} | ({"confirm": "yes"} if confirm else {})
    return client.post(f"/stores/{store_id}/timezone", data=data)


def wait_for_zone_job(client, url: str, timeout: float = 60.0) -> str:
    """The zone job's page once the job finished (it refreshes itself while running)."""
    deadline = time.monotonic() + timeout
    while True:
        page = client.get(url).get_data(as_text=True)
        if 'data-state="running"' not in page or time.monotonic() > deadline:
            return page
        time.sleep(0.1)


def _taipei_with_berlin_sales(db, ta_feng_slice):
    """A store "Taipei" without its own zone (TIMEZONE Europe/Berlin) holding the slice's sales read as Berlin time:
    ``(store id, import report)``."""
    store_id = _store(db, "Taipei")
    first = _import(db, ta_feng_slice, "Europe/Berlin", store_id)
    assert first.inserted > 2000
    return store_id, first


def test_the_confirmed_change_answers_at_once_and_the_job_moves_the_sales(db, site, ta_feng_slice, monkeypatch):
    store_id, first = _taipei_with_berlin_sales(db, ta_feng_slice)
    naive = _naive_times(ta_feng_slice)
    gate = Gate(monkeypatch)
    response = _post_zone(site, store_id, "Asia/Taipei")
    # the request answered while the move is held: it did not do the move (before: it did, then redirected to /stores)
    assert response.status_code == 303 and "/stores/zone-jobs/" in response.location, response.location
    assert gate.entered.wait(30)
    assert gate.thread is not None and gate.thread.startswith("dangol-zone-")   # the job's thread
    page = site.get(response.location).get_data(as_text=True)
    assert 'data-state="running"' in page and "Applying Asia/Taipei to Taipei" in page
    assert 'http-equiv="refresh"' in page                                         # it updates itself
    stores = site.get("/stores/").get_data(as_text=True)
    assert 'id="zone-job-banner"' in stores and f'id="zone-pending-{store_id}"' in stores
    with db.sessions() as s:                                                       # nothing committed yet
        assert store_zones(s) == {}
    assert _stored(db) == _in("Europe/Berlin", naive)
    gate.release.set()
    page = wait_for_zone_job(site, response.location)
    assert 'data-state="done"' in page, page
    assert f"Its {first.inserted:,} imported sales moved to the same hours in Asia/Taipei" in page
    assert 'http-equiv="refresh"' not in page
    with db.sessions() as s:
        assert store_zones(s) == {store_id: "Asia/Taipei"}
    assert _stored(db) == _in("Asia/Taipei", naive)
    assert 'id="zone-job-banner"' not in site.get("/stores/").get_data(as_text=True)
    again = _import(db, ta_feng_slice, "Europe/Berlin", store_id)                 # a re-import adds nothing
    assert (again.inserted, again.duplicates) == (0, first.inserted)


def test_a_second_change_while_one_runs_is_refused_and_nothing_is_mixed(db, site, ta_feng_slice, monkeypatch):
    store_id, first = _taipei_with_berlin_sales(db, ta_feng_slice)
    other = _store(db, "Seoul")
    naive = _naive_times(ta_feng_slice)
    gate = Gate(monkeypatch)
    started = _post_zone(site, store_id, "Asia/Taipei")
    assert started.status_code == 303
    assert gate.entered.wait(30)
    for store, zone in ((store_id, "Asia/Tokyo"), (store_id, ""), (other, "Asia/Seoul")):
        refused = _post_zone(site, store, zone)
        assert refused.status_code == 302 and refused.location.endswith("/stores/")
        flashed = site.get("/stores/").get_data(as_text=True)
        assert "keeps its time zone for now" in flashed and "change to Asia/Taipei is being applied" in flashed
    gate.release.set()
    assert 'data-state="done"' in wait_for_zone_job(site, started.location)
    with db.sessions() as s:
        assert store_zones(s) == {store_id: "Asia/Taipei"}                         # only the first change
    assert _stored(db) == _in("Asia/Taipei", naive) and _count(db) == first.inserted
    back = _post_zone(site, store_id, "")                                          # then the next one runs
    assert back.status_code == 303
    assert 'data-state="done"' in wait_for_zone_job(site, back.location)
    with db.sessions() as s:
        assert store_zones(s) == {}
    assert _stored(db) == _in("Europe/Berlin", naive)
    assert _import(db, ta_feng_slice, "Europe/Berlin", store_id).inserted == 0


def test_no_zone_changes_while_a_dashboard_import_runs(db, site, ta_feng_slice, monkeypatch):
    """An import reads the stores' zones when it starts (and on SQLite holds the only write transaction): a zone
    change meanwhile is refused by name, and works once the import finished."""
    import dangol_cloud.ingest as ingest

    from .test_cloud_web import wait_for_import
    from .test_owner_import import _upload

    store_id, first = _taipei_with_berlin_sales(db, ta_feng_slice)
    entered, release = threading.Event(), threading.Event()
    original = ingest.import_rows

    def held(*args, **kwargs):
        entered.set()
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(ingest, "import_rows", held)
    upload = _upload(site, [ta_feng_slice])
    assert upload.status_code == 303 and entered.wait(30)
    for zone in ("Asia/Taipei", ""):
        refused = _post_zone(site, store_id, zone)
        assert refused.status_code == 302 and refused.location.endswith("/stores/")
        assert "an import is running" in site.get("/stores/").get_data(as_text=True)
    with db.sessions() as s:
        assert store_zones(s) == {}
    release.set()
    assert 'data-state="done"' in wait_for_import(site, upload.location)
    changed = _post_zone(site, store_id, "Asia/Taipei")
    assert 'data-state="done"' in wait_for_zone_job(site, changed.location)
    assert _stored(db) == _in("Asia/Taipei", _naive_times(ta_feng_slice)) and _count(db) == first.inserted


def test_a_job_that_fails_midway_changes_nothing_and_says_so(db, site, ta_feng_slice, monkeypatch):
    monkeypatch.setattr("dangol_cloud.sale_zones.CHUNK_LINES", 250)               # several chunks, two moved first
    store_id, first = _taipei_with_berlin_sales(db, ta_feng_slice)
    naive = _naive_times(ta_feng_slice)
    with db.sessions() as s:
        keys = sorted(s.scalars(text("SELECT idempotency_key FROM purchases")))
    gate = Gate(monkeypatch, fail_at=3)
    gate.release.set()
    response = _post_zone(site, store_id, "Asia/Taipei")
    assert response.status_code == 303
    page = wait_for_zone_job(site, response.location)
    assert 'data-state="failed"' in page, page
    assert "disk I/O error" in page and "Nothing was changed: Taipei keeps Europe/Berlin" in page
    assert gate.calls == 3
    with db.sessions() as s:                                                       # neither the zone nor a line
        assert store_zones(s) == {}
        assert sorted(s.scalars(text("SELECT idempotency_key FROM purchases"))) == keys
        assert s.scalar(text("SELECT count(*) FROM purchases WHERE read_zone = 'Europe/Berlin'")) == first.inserted
    assert _stored(db) == _in("Europe/Berlin", naive)
    monkeypatch.undo()                                                             # tried again: it works
    again = _post_zone(site, store_id, "Asia/Taipei")
    assert 'data-state="done"' in wait_for_zone_job(site, again.location)
    assert _stored(db) == _in("Asia/Taipei", naive)


def test_another_stores_unknown_zone_fails_the_job_by_name(db, site, ta_feng_slice):
    """A real failure: another store's stored zone is no longer known (written by hand, or dropped from tzdata)."""
    store_id, _first = _taipei_with_berlin_sales(db, ta_feng_slice)
    broken = _store(db, "Atlantis")
    with db.transaction() as s:
        s.add(StoreSetting(store_id=broken, timezone="Asia/Atlantis"))
    response = _post_zone(site, store_id, "Asia/Taipei")
    assert response.status_code == 303                                             # before: a 500 from the request
    page = wait_for_zone_job(site, response.location)
    assert 'data-state="failed"' in page and f"store {broken}" in page and "Asia/Atlantis" in page
    assert "Nothing was changed: Taipei keeps Europe/Berlin" in page
    with db.sessions() as s:
        assert s.get(StoreSetting, store_id) is None
    assert _stored(db) == _in("Europe/Berlin", _naive_times(ta_feng_slice))


def test_an_unknown_zone_job_is_404(db, site):
    assert site.get("/stores/zone-jobs/0123456789abcdef").status_code == 404


# --- the re-time of every start, import and training: cheap when nothing moves ---------------------------------------
def _statements(db):
    """A list that collects the SQL statements run on ``db``'s engine (until the test ends)."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(" ".join(statement.split()).upper())

    event.listen(db.engine, "before_cursor_execute", record)
    return seen


def test_the_no_op_retime_writes_nothing_and_scans_no_purchases(db, ta_feng_slice):
    """Before: an UPDATE and a grouped SELECT over every purchase on each call (0.7–1.6 s on the whole Ta-Feng file,
    330,652 lines, on SQLite; 0.15–0.36 s on PostgreSQL); now one statement of min/max index seeks (1–2 ms; 12 ms)."""
    from dangol_cloud.sale_zones import retime_naive_sales

    store_id = _store(db, "Taipei", "Asia/Taipei")                                # its own zone
    _import(db, ta_feng_slice, "Europe/Berlin", store_id)
    _import(db, ta_feng_slice, "Europe/Berlin", _store(db, "Berlin"))              # TIMEZONE's
    seen = _statements(db)
    with db.transaction() as s:
        assert retime_naive_sales(s, "Europe/Berlin").lines == 0
    purchases = [q for q in seen if " PURCHASES" in q]
    assert purchases, seen
    assert not [q for q in purchases if q.startswith("UPDATE") or "GROUP BY" in q], purchases  # before: both
    probes = [q for q in purchases if "MIN(PURCHASES.READ_ZONE)" in q]
    assert len(probes) == 1 and len(purchases) == 1, purchases                    # store-less lines and 2 stores
    if db.engine.dialect.name == "sqlite":                                         # each a seek of the new index
        with db.engine.connect() as conn:
            plan = [row[-1].upper() for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + probes[0],
                                                                    _probe_params(probes[0]))]
        searches = [step for step in plan if "PURCHASES" in step]
        assert len(searches) == 6 and all(step.startswith("SEARCH PURCHASES USING COVERING INDEX "
                                                          "IX_PURCHASES_STORE_READ_ZONE") for step in searches), plan
    seen.clear()
    with db.transaction() as s:                                                    # TIMEZONE changed: it moves
        assert retime_naive_sales(s, "Asia/Seoul").lines > 2000
    assert any(q.startswith("UPDATE PURCHASES") for q in seen)
    with db.sessions() as s:
        assert set(s.scalars(text("SELECT DISTINCT read_zone FROM purchases"))) == {"Asia/Taipei", "Asia/Seoul"}


def _probe_params(query: str) -> tuple:
    """Placeholder values for a recorded SQLite probe (the plan does not depend on them)."""
    return ("x",) * query.count("?")
