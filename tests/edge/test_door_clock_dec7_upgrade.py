"""A step of the wall clock never ends a running model upgrade (which deletes every unmigrated regular's old templates):
the upgrade's age moves with each step the daemon sees, and its deadline passes only on a clock retention trusts.
Real models (FaceNet → SFace), a real gallery; the wall and boot clocks faked as in test_clock_step."""

from __future__ import annotations

import threading
import uuid

import pytest

from dangol_edge.config import EdgeConfig
from dangol_edge.events import Outbox
from dangol_edge.state import StateStore
from dangol_edge.workers.base import Stats
from dangol_edge.workers.housekeeping import HousekeepingWorker
from tests.edge.test_clock_step import DAY, clock  # noqa: F401
from tests.edge.test_recognition_review_fixes import old_pipeline, upgrading  # noqa: F401


@pytest.fixture
def running(tmp_path, model_path, facenet_path, pipeline, old_pipeline, clips, clock, monkeypatch):  # noqa: F811
    """``start()`` → (recognizer, gallery, housekeeping worker, ids): Obama and Biden enrolled with FaceNet, an upgrade
    to SFace started now (by the faked wall clock)."""
    import dangol_edge.gallery_expiry as expiry_module
    import dangol_edge.upgrade as upgrade_module

    monkeypatch.setattr(upgrade_module, "datetime", expiry_module.datetime)  # the faked wall clock
    opened = []

    def start():
        rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                      {"Barack Obama": [clips / "obama2.jpg"], "Joe Biden": [clips / "biden.jpg"]})
        state = StateStore(tmp_path / "state.sqlite").open()
        opened.extend([state, rec, gallery])
        hk = HousekeepingWorker(EdgeConfig(home=tmp_path / "home"), gallery, state, Outbox(uuid.UUID(int=0), state),
                                None, Stats(), lambda cid: None, lambda: None, threading.Event(), upgrade=rec.upgrade)
        return rec, gallery, hk, ids

    yield start
    for thing in reversed(opened):
        thing.close()


def _old_templates(gallery, upgrade) -> int:
    return sum(m.get(upgrade.previous.sha256, 0) for m in gallery.template_models().values())


@pytest.mark.parametrize("ahead_days", [31, 400])
def test_a_clock_ahead_for_a_minute_leaves_the_upgrade_running(running, clock, ahead_days):  # noqa: F811
    """A bad NTP answer (or a wrong date typed by hand) puts the clock ahead for a minute, seen by a pass: the upgrade
    keeps running with every old template, and still ends at its deadline."""
    rec, gallery, hk, ids = running()
    hk.tidy()
    old = _old_templates(gallery, rec.upgrade)
    assert not rec.upgrade.done and old == 2
    clock.step(ahead_days * DAY)
    clock.advance(30)
    hk.tidy()
    clock.step(-ahead_days * DAY)  # corrected a minute later
    clock.advance(30)
    hk.tidy()
    clock.advance(3600)  # the clock steady again
    hk.tidy()
    assert not rec.upgrade.done and _old_templates(gallery, rec.upgrade) == old
    clock.advance(30 * DAY)  # the upgrade's 30 days are up
    hk.tidy()
    assert rec.upgrade.done and _old_templates(gallery, rec.upgrade) == 0


def test_an_upgrade_started_on_a_clock_behind_outlives_the_ntp_step(running, clock):  # noqa: F811
    """The box boots 40 days behind (fake-hwclock's saved time), the daemon starts the upgrade, NTP syncs 20 minutes
    later: the upgrade has run 20 minutes, not 40 days. It ends 30 days after it started, not later."""
    clock.step(-40 * DAY)
    rec, gallery, hk, ids = running()
    for _ in range(40):
        clock.advance(30)
        hk.tidy()
    clock.step(40 * DAY)  # NTP syncs
    for _ in range(60):  # half an hour: well past the steady wait
        clock.advance(30)
        hk.tidy()
    assert not rec.upgrade.done and _old_templates(gallery, rec.upgrade) == 2
    clock.advance(30 * DAY - 3000 - 60)  # 30 days since it started, but a minute
    hk.tidy()
    assert not rec.upgrade.done
    clock.advance(120)
    hk.tidy()
    assert rec.upgrade.done


def test_an_upgrade_outlives_ntp_stepping_the_clock_while_the_daemon_is_stopped(running, clock):  # noqa: F811
    """The upgrade started on a clock 40 days behind; the daemon is restarted (an update) and NTP syncs while it is
    stopped: the next daemon's clock anchor moves the upgrade's start with the step (same boot). (The new daemon's
    housekeeping is a new worker with a new clock watch; the upgrade keeps all it knows of the clock in the gallery.)"""
    clock.step(-40 * DAY)
    rec, gallery, hk, ids = running()
    for _ in range(20):
        clock.advance(30)
        hk.tidy()
    clock.advance(5)  # stopped; NTP syncs
    clock.step(40 * DAY)
    clock.advance(5)
    hk = HousekeepingWorker(hk.config, gallery, hk.state, hk.outbox, None, Stats(), lambda cid: None, lambda: None,
                            threading.Event(), upgrade=rec.upgrade)
    for _ in range(60):
        clock.advance(30)
        hk.tidy()
    assert not rec.upgrade.done and _old_templates(gallery, rec.upgrade) == 2
    clock.advance(30 * DAY - 2410 - 60)  # 30 days since it started, but a minute
    hk.tidy()
    assert not rec.upgrade.done
    clock.advance(120)
    hk.tidy()
    assert rec.upgrade.done
