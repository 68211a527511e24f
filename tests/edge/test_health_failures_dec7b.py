"""Arrivals and housekeeping that keep failing reach the device's health (``status/1``), and clear once they work
again (a real daemon on a real clip; the fault is the edge database failing one kind of read or write)."""

from __future__ import annotations

import sqlite3
import types

from dangol_edge.daemon import Appliance
from dangol_edge.gallery import Gallery
from dangol_edge.state import StateStore
from dangol_protocol import Health
from tests.edge.test_daemon import config, home  # noqa: F401
from tests.edge.test_sync import wait_for


def test_arrivals_that_all_fail_are_reported_in_health(home, model_path, clips, monkeypatch):  # noqa: F811
    """The cached menu cannot be read: the door greets nobody; health must say so, not read ok."""
    menu = StateStore.menu

    def unreadable(self, customer_id):
        raise ValueError("the cached menu row cannot be opened")

    monkeypatch.setattr(StateStore, "menu", unreadable)
    app = Appliance(config(home, model_path, clips))
    app.start()
    try:
        # failing from a regular's failed arrival until the next arrival is handled (a stranger's, on the clip, may
        # come between two reads of health: wait for the moment rather than read it once)
        assert wait_for(lambda: app.health().arrivals == "failing", timeout=120)
        assert app.stats.arrival_failures >= 1 and app.stats.arrivals == 0
        h = app.health()
        assert h.camera in ("ok", "missing") and h.storage == "ok" and h.recognition == "ok"
        monkeypatch.setattr(StateStore, "menu", menu)  # the menu is readable again: the next arrival is handled
        app.arrivals.handle(types.SimpleNamespace(kind="unknown", customer_id=None, score=None, first_ts=0.0))
        assert wait_for(lambda: app.health().arrivals == "ok", timeout=30)  # and nothing fails any more
    finally:
        app.stop()


def test_housekeeping_that_keeps_failing_is_reported_in_health(home, model_path, clips, monkeypatch):  # noqa: F811
    """A housekeeping step fails on every pass (the gallery's expiry query on a damaged page): health says so, and
    reads ok again after the first pass whose every step succeeded."""
    expire = Gallery.expire_pending
    broken = [True]

    def damaged(self, *args, **kwargs):
        if broken[0]:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return expire(self, *args, **kwargs)

    monkeypatch.setattr(Gallery, "expire_pending", damaged)
    app = Appliance(config(home, model_path, clips))
    app.start()
    try:
        assert wait_for(lambda: app.stats.housekeeping_failures >= 2, timeout=30)
        h = app.health()
        assert h.storage == "ok"
        assert h.housekeeping == "failing"
        broken[0] = False
        assert wait_for(lambda: app.health().housekeeping == "ok", timeout=15)
    finally:
        app.stop()


def test_the_new_health_fields_are_optional():
    """An older device's health (without them) still parses; the new values are checked."""
    old = Health(camera="ok", fps=1.0, gallery_size=0, queue_depth=0)
    assert old.arrivals is None and old.housekeeping is None and old.refused_events is None
    new = Health(camera="ok", fps=1.0, gallery_size=0, queue_depth=0, arrivals="failing", housekeeping="ok",
                 refused_events=3)
    assert Health.model_validate_json(new.model_dump_json()) == new
    for bad in ({"arrivals": "sad"}, {"housekeeping": "x"}, {"refused_events": -1}):
        try:
            Health(camera="ok", fps=1.0, gallery_size=0, queue_depth=0, **bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_the_dashboard_lists_them_among_the_device_warnings():
    """The owner's device list (``health_warnings``, rendered by cloud/templates/_macros.html) names each one; a
    report without the fields (an older device) or with them ok shows nothing."""
    from dangol_cloud.web.devices import health_warnings

    def report(**kw):  # as the cloud's listener stores it: validated by the protocol model first
        return Health(**{"camera": "ok", "fps": 8.0, "gallery_size": 3, "queue_depth": 0, **kw}).model_dump(mode="json")

    assert health_warnings(report(arrivals="ok", housekeeping="ok", refused_events=0)) == []
    assert health_warnings(report(arrivals="failing")) == [
        ("bad", "arrivals failing — the door greets nobody")]
    assert health_warnings(report(housekeeping="failing")) == [
        ("bad", "housekeeping failing — retention may keep faces past their time")]
    assert health_warnings(report(refused_events=3)) == [
        ("warn", "3 events refused by the broker — check the device's login and the broker's ACL")]
