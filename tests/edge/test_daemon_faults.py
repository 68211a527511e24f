"""Daemon faults: the camera disappears and returns; the disk fills up; retention erases the unseen."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import cv2
import pytest

from dangol_edge.daemon import Appliance
from tests.edge.test_daemon import LIN, catalogue_payload, config, home, menu_payload  # noqa: F401
from tests.edge.test_sync import wait_for


def test_camera_disappears_and_returns(tmp_path, home, model_path, clips):  # noqa: F811
    cam = tmp_path / "camera"
    cam.mkdir()
    img = cv2.imread(str(clips / "obama.jpg"))
    for i in range(5):
        cv2.imwrite(str(cam / f"f{i}.jpg"), img)
    app = Appliance(config(home, model_path, clips, camera={"source": str(cam), "loop": True, "realtime": True,
                                                             "retry_min_s": 0.2, "retry_max_s": 0.5}))
    app.start()
    try:
        assert wait_for(lambda: app.health().camera == "ok" and app.stats.frames_processed > 3, timeout=20)
        away = tmp_path / "unplugged"
        cam.rename(away)  # the camera is unplugged
        assert wait_for(lambda: app.health().camera == "missing", timeout=10)
        n = app.stats.frames_processed
        time.sleep(1.0)
        # no new frames while it is gone (the ≤ 4 already queued may still drain on a loaded machine),
        # and the daemon lives on
        assert app.stats.frames_processed <= n + 5
        assert time.monotonic() - app.stats.last_heartbeat < 2
        away.rename(cam)  # plugged back in
        assert wait_for(lambda: app.health().camera == "ok", timeout=10)
        assert wait_for(lambda: app.stats.frames_processed > n + 5, timeout=20)
    finally:
        app.stop()


def fill_the_disk(app: Appliance, *, gallery: bool) -> None:
    """The medium is full: SQLite cannot grow the running app's databases any more, and every free byte of the
    state database's pages (and, with ``gallery``, of the gallery's) is used up."""
    for db in (app.state.db, app.gallery.db):
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for i in range(100_000):
            app.state.enqueue(f"filler-{i}", "filler", "x" * 64)
    if gallery:
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for i in range(100_000):
                with app.gallery._lock, app.gallery.db.conn:
                    app.gallery.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", [f"filler-{i}", "x" * 64])


def test_disk_full_keeps_greeting_reports_and_does_not_corrupt(home, model_path, clips):  # noqa: F811
    from dangol_edge.state import StateStore

    st = StateStore(home / "state.sqlite").open()
    st.put_catalogue(catalogue_payload())
    st.put_menu(menu_payload(["scone", "flat-white"]))
    st.close()
    app = Appliance(config(home, model_path, clips))
    app.start()
    try:
        fill_the_disk(app, gallery=False)
        assert wait_for(lambda: app.stats.arrivals >= 1, timeout=120)
        assert app.screen.snapshot()["screen"] == "welcome"  # the customer is still greeted, from the cache
        assert [p["id"] for p in app.screen.snapshot()["picks"]] == ["scone", "flat-white"]
        assert wait_for(lambda: app.health().storage == "full", timeout=60)
        assert time.monotonic() - app.stats.last_heartbeat < 2  # recognition is alive
    finally:
        app.stop()
    for name in ("state.sqlite", "gallery.sqlite"):
        con = sqlite3.connect(home / name)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()


@pytest.mark.parametrize("report_delay", [0.0, 1.5], ids=["as-is", "descheduled-between-erasure-and-report"])
def test_retention_erases_customers_not_seen(home, model_path, clips, monkeypatch, report_delay):  # noqa: F811
    """A customer unseen for ``privacy.retention_days`` is erased and reported. The erasure and its report are two
    commits of two files, in that order, one housekeeping step apart (``report_delay``: the thread descheduled in
    between, as on a loaded machine), so the test waits for the report, not for the customer to leave the gallery."""
    from dangol_edge.gallery import Gallery
    from dangol_edge.embed import file_sha256
    from dangol_edge.workers.housekeeping import HousekeepingWorker

    if report_delay:   # what a loaded machine does now and then: the report step runs late
        real = HousekeepingWorker._report_all

        def late(self):
            if self.unreported:
                time.sleep(report_delay)
            return real(self)

        monkeypatch.setattr(HousekeepingWorker, "_report_all", late)

    with Gallery(home / "gallery.sqlite", file_sha256(model_path)) as g:
        old = (datetime.now(timezone.utc) - timedelta(days=40)).isoformat(timespec="seconds")
        g.touch(LIN, datetime.now(timezone.utc) - timedelta(days=40))
        g.db.execute("UPDATE customers SET updated_at = ?", [old])
    app = Appliance(config(home, model_path, clips, privacy={"retention_days": 30},
                           camera={"source": str(clips / "obama.jpg")}))
    app.start()

    def reports() -> list[dict]:
        return [e for e in (json.loads(r["payload"]) for r in app.state.pending(100)) if e["kind"] == "erasure-done"]

    try:
        # The end state, not its first half: the pass erases the customer (a commit of the gallery file), then its
        # report step queues the erasure-done (a commit of the state file) — the cloud is told only what was done.
        assert wait_for(reports, timeout=15)
        assert app.gallery.customers() == []   # erased before it was reported
        assert [(e["customer_ids"], e["erasure_id"]) for e in reports()] == [([LIN], None)]
    finally:
        app.stop()


def test_retention_is_capped_by_bipa():
    from dangol_edge.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="privacy.retention_days"):
        load_config(privacy={"retention_days": 4 * 365})


def test_an_unreadable_cached_catalogue_is_logged_once_and_counted(tmp_path, caplog):
    """The screen asks for the catalogue every second: a cached row that no longer parses (an older version's
    file, a disk fault) must be reported once per version and counted, not logged every second."""
    import logging

    from dangol_edge.state import StateStore

    st = StateStore(tmp_path / "state.sqlite").open()
    st.put_catalogue(catalogue_payload())
    st.close()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        db.execute("UPDATE catalogue SET payload = ?", ['{"schema": "catalogue/1", "items": "no"}'])
    st = StateStore(tmp_path / "state.sqlite").open()
    with caplog.at_level(logging.ERROR, logger="dangol_edge.state"):
        assert [st.catalogue() for _ in range(5)] == [None] * 5
    errors = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(errors) == 1 and "state.sqlite" in errors[0].getMessage()
    assert st.catalogue_read_errors == 1
    assert st.put_catalogue(catalogue_payload(version=1))  # the cloud re-publishing the same version heals it
    assert st.catalogue() is not None and st.catalogue_read_errors == 1
    assert not st.put_catalogue(catalogue_payload(version=1))  # a readable copy is not replaced by the same
    st.close()


def test_a_sign_up_on_a_full_disk_fails_cleanly_and_reports_it(tmp_path, home, model_path, clips, browser,  # noqa: F811
                                                               data_dir):
    """Staff start a sign-up while the medium is full: the screen says it could not be saved (not "capturing"
    for ever), health reports the storage, nothing half-written stays in the gallery, recognition stays alive.
    (A new face, one person's LFW photos: Lin, enrolled, signing up again would make no record at all.)"""
    from tests.edge.test_signup_outcome import folder

    photos = sorted((data_dir / "faces" / "lfw-deepfunneled" / "George_W_Bush").glob("*.jpg"))[:200]
    app = Appliance(config(home, model_path, clips,
                           camera={"source": folder(tmp_path, "one", photos), "loop": True, "realtime": True}))
    app.start()
    try:
        fill_the_disk(app, gallery=True)
        before = {c.id for c in app.gallery.customers(status=None)}
        page = browser.new_page()  # the kiosk, live: the customer is told, not left looking at the camera
        page.goto(app.web.url.rstrip("/") + "/")
        page.wait_for_function("document.body.dataset.live === '1'")
        assert app.enrolment.ask("enrol", source="test")
        heading = page.wait_for_selector("section.enrol.stage-not-saved h1", timeout=90_000)
        assert "couldn't save your sign-up" in heading.inner_text()
        page.goto(app.web.url.rstrip("/") + "/staff")  # and the staff are told why
        assert "storage is full" in page.inner_text("#storage-problem")
        page.close()
        assert app.health().storage == "full"
        assert {c.id for c in app.gallery.customers(status=None)} == before
        assert not app.enrolment.active
        n = app.stats.frames_processed
        assert wait_for(lambda: app.stats.frames_processed > n + 3, timeout=30)  # recognising again
        assert app.stats.recognition == "ok"
    finally:
        app.stop()
    con = sqlite3.connect(home / "gallery.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_health_tells_the_cloud_the_cached_catalogue_is_unreadable(home, model_path, clips):  # noqa: F811
    """The owner sees it on the Stores page (status/1 health), not only the staff on the device."""
    from dangol_edge.state import StateStore

    st = StateStore(home / "state.sqlite").open()
    st.put_catalogue(catalogue_payload())
    st.close()
    with sqlite3.connect(home / "state.sqlite") as db:
        db.execute("UPDATE catalogue SET payload = ?", ['{"schema": "catalogue/1", "items": "no"}'])
    app = Appliance(config(home, model_path, clips))
    app.start()
    try:
        assert app.health().catalogue == "unreadable"
        assert app.state.put_catalogue(catalogue_payload(version=2))
        assert app.health().catalogue == "ok"
    finally:
        app.stop()


def test_an_erased_customers_welcome_leaves_the_screen_at_once(home, model_path, clips):  # noqa: F811
    """Staff erase a customer (or the cloud, or retention) while their "Welcome back" is on the door screen: their
    name must go with them, not stay until the welcome times out."""
    import uuid as uuid_

    from dangol_protocol import Erasures

    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "biden.jpg")}))
    app.start()
    try:
        app.screen.show_welcome("Lin-Manuel", [], LIN, seconds=120)
        app.gallery.delete(LIN)  # the staff page's "Erase": delete, then the daemon's callback
        app._on_erase_local(LIN)
        assert app.screen.snapshot()["screen"] == "house"
        other = str(uuid_.uuid4())
        app.screen.show_welcome("Mina", [], other, seconds=120)
        app._on_erasures(Erasures(store_id=app.store_id, erasure_id=uuid_.uuid4(),
                                  requested_at=datetime.now(timezone.utc), customer_ids=[LIN]))
        assert app.screen.snapshot()["first_name"] == "Mina"  # somebody else's welcome stays
        app._on_erasures(Erasures(store_id=app.store_id, erasure_id=uuid_.uuid4(),
                                  requested_at=datetime.now(timezone.utc), customer_ids=[uuid_.UUID(other)]))
        assert app.screen.snapshot()["screen"] == "house"
    finally:
        app.stop()
