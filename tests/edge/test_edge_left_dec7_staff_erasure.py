"""A staff-page erasure or discard reaches the cloud even when the state file cannot be written at the moment and the
daemon stops before it can be (a restart, a power cut): the gallery records the report in the erasure's own
transaction, as it does for retention and expired sign-ups, and the next start reports it. The customer's face is
erased at once all the same. The real daemon and staff page, real SQLite locks."""

from __future__ import annotations

import json

import numpy as np

from dangol_edge.daemon import Appliance
from tests.edge.test_daemon import config
from tests.edge.test_erasure_outbox import Staff, about, queued
from tests.edge.test_erasure_retry import enrol_two, lock
from tests.edge.test_sync import wait_for


def _pending(app) -> str:
    """A door sign-up waiting for staff (as the button stores it)."""
    e = np.random.default_rng(7).standard_normal((1, 128)).astype(np.float32)
    return app.gallery.enroll("", e / np.linalg.norm(e), status="pending", pending_ttl_s=3600).id


def test_a_staff_erasure_the_state_file_refused_is_reported_after_a_restart(tmp_path, model_path, clips):
    home = tmp_path / "home"
    ids = enrol_two(home, model_path)
    cfg = config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")},
                 mqtt={"status_interval_s": 3600})  # no housekeeping retry before the stop: only the start's pass
    app = Appliance(cfg)
    app.start()
    try:
        signup = _pending(app)
        staff = Staff(app)
        token = staff._token()
        locker = lock(home / "state.sqlite", app.state.db)  # the state file cannot be written
        try:
            r = staff.web.post(f"/staff/erase/{ids[0]}", data={"csrf_token": token})
            assert r.status_code == 302
            page = staff.web.get("/staff").get_data(as_text=True)
            assert "cannot write its storage" in page and "Erased Ann Lee on this device" in page
            r = staff.web.post(f"/staff/discard/{signup}", data={"csrf_token": token})
            assert r.status_code == 302
            # the faces are gone at once, whatever the cloud hears and when
            assert [c.id for c in app.gallery.customers()] == [ids[1]]
            app.stop()  # the daemon stops before the state file could be written (a restart, a power cut)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    finally:
        app.stop()
    assert not any(about(queued_of(home, cfg), c) for c in (ids[0], signup)), "nothing was queued before the stop"

    again = Appliance(cfg)
    again.start()
    try:
        assert wait_for(lambda: about(queued(again), ids[0]) == [("erasure-done", None)], timeout=10)
        assert wait_for(lambda: about(queued(again), signup) == [("erasure-done", None)], timeout=10)
        assert again.gallery.unreported_erasures() == []  # reported: the record is gone
        assert [c.id for c in again.gallery.customers()] == [ids[1]]
    finally:
        again.stop()
    third = Appliance(cfg)  # reported once, not at every start
    third.start()
    try:
        assert wait_for(lambda: third.housekeeping.streak == 0 and third.housekeeping._recorded_loaded, timeout=10)
        assert about(queued(third), ids[0]) == [("erasure-done", None)]
    finally:
        third.stop()


def test_a_staff_erasure_that_is_reported_at_once_leaves_no_record(tmp_path, model_path, clips):
    """The usual case: the erasure-done is queued at once and nothing is left for the next start to report."""
    home = tmp_path / "home"
    ids = enrol_two(home, model_path)
    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")},
                           mqtt={"status_interval_s": 3600}))
    app.start()
    try:
        Staff(app).erase(ids[0])
        assert about(queued(app), ids[0]) == [("erasure-done", None)]
        assert app.gallery.unreported_erasures() == []
    finally:
        app.stop()


def queued_of(home, cfg) -> list[dict]:
    """The outbox's events, read from the state file of a stopped daemon."""
    from dangol_edge.state import StateStore

    with StateStore(cfg.state_path).open() as state:
        return [json.loads(e["payload"]) for e in state.pending(1000)]

