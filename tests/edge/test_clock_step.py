"""A step of the wall clock (a Pi has no RTC: it boots with the last saved time and steps when NTP syncs; a wrong
manual date; a bad NTP answer) never erases a sign-up or a regular early, and never leaves a regular's
``last_seen_at`` in the future. The wall clock is faked in the gallery and clock modules; the boot clock moves only
when time passes (as with a real step)."""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from dangol_edge.config import EdgeConfig
from dangol_edge.events import Outbox
from dangol_edge.gallery import Gallery
from dangol_edge.state import StateStore
from dangol_edge.workers.base import Stats
from dangol_edge.workers.housekeeping import HousekeepingWorker
from dangol_protocol import Consent

DAY = 86_400.0


class FakeClock:
    """A wall clock that can step (``step``) and a boot clock; ``advance`` moves both (time passing)."""

    def __init__(self):
        self.wall_offset = 0.0
        self.boot = 1000.0

    def step(self, seconds: float) -> None:
        self.wall_offset += seconds

    def advance(self, seconds: float) -> None:
        self.wall_offset += seconds
        self.boot += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()

    class FakeDateTime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _dt.datetime.now(tz) + _dt.timedelta(seconds=fake.wall_offset)

    for name in ("dangol_edge.gallery", "dangol_edge.gallery_expiry", "dangol_edge.clock"):
        try:
            monkeypatch.setattr(importlib.import_module(name), "datetime", FakeDateTime)
        except ImportError:  # before the fix only the gallery module exists
            pass
    try:
        clock_module = importlib.import_module("dangol_edge.clock")
        monkeypatch.setattr(clock_module, "boot_clock", lambda: fake.boot)
        monkeypatch.setattr(clock_module, "system_synchronised", lambda: None)  # a box without the signal
    except ImportError:
        pass
    return fake


@pytest.fixture
def door(tmp_path, clock):
    """A gallery, state and housekeeping worker (no thread: the test runs its passes); ``reports`` lists the ids the
    cloud was told of (queued ``erasure-done`` events)."""
    config = EdgeConfig(home=tmp_path / "home")
    state = StateStore(config.state_path).open()
    gallery = Gallery(config.gallery_path, "0" * 64).open()
    outbox = Outbox(_uuid0(), state, None)
    stats = Stats()
    from dangol_edge.events import EventFactory

    events = EventFactory(_uuid0())
    hk = HousekeepingWorker(config, gallery, state, outbox, None, stats,
                            lambda cid: outbox.erase([cid], [events.erasure_done([cid])]), lambda: None,
                            threading.Event())

    def reports() -> list[str]:
        return [c for r in state.pending(1000) for e in [json.loads(r["payload"])] if e["kind"] == "erasure-done"
                for c in e["customer_ids"]]

    yield SimpleNamespace(gallery=gallery, state=state, hk=hk, stats=stats, reports=reports, clock=clock)
    gallery.close()
    state.close()


def _uuid0():
    import uuid

    return uuid.UUID(int=0)


def _template(seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((1, 128)).astype(np.float32)
    return e / np.linalg.norm(e)


def _regular(gallery: Gallery, name: str, seed: int) -> str:
    consent = Consent(recorded_by="Jo", recorded_at=_dt.datetime.now(_dt.timezone.utc), text_version="1")
    return gallery.enroll(name, _template(seed), consent=consent).id


def _last_seen(gallery: Gallery, cid: str) -> str:
    return gallery.db.execute("SELECT COALESCE(last_seen_at, updated_at) FROM customers WHERE id = ?",
                              [cid]).fetchone()[0]


def test_a_signup_made_before_a_forward_step_keeps_its_lifetime(door):
    door.clock.step(-2 * DAY)  # booted without network: the clock reads the last saved time, two days behind
    door.hk.tidy()
    pending = door.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY)
    door.clock.advance(10)
    door.hk.tidy()
    door.clock.step(2 * DAY)  # NTP syncs
    door.clock.advance(1)
    door.hk.tidy()
    assert [c.id for c in door.gallery.customers(status="pending")] == [pending.id]
    assert door.reports() == []
    assert door.stats.clock_steps == 1
    door.clock.advance(DAY - 60)  # the rest of its day: still there
    door.hk.tidy()
    assert [c.id for c in door.gallery.customers(status="pending")] == [pending.id]
    door.clock.advance(120)  # its day is up: erased and reported
    door.hk.tidy()
    assert door.gallery.customers(status="pending") == []
    assert door.reports() == [pending.id]


def test_a_clock_ahead_for_seconds_erases_no_regular(door):
    lin = _regular(door.gallery, "Lin Miranda", 2)
    door.gallery.touch(lin)
    door.hk.tidy()
    door.clock.step(400 * DAY)  # a wrong date for a few seconds
    door.clock.advance(1)
    door.hk.tidy()
    door.clock.advance(2)
    door.hk.tidy()
    door.clock.step(-400 * DAY)  # corrected
    door.clock.advance(1)
    door.hk.tidy()
    assert [c.id for c in door.gallery.customers()] == [lin]
    assert door.reports() == []


def test_retention_runs_again_once_the_clock_is_steady(door):
    lin = _regular(door.gallery, "Lin Miranda", 2)
    door.hk.tidy()
    door.clock.step(400 * DAY)  # the step was real (or stays): retention waits, then runs on the steady clock
    door.clock.advance(1)
    door.hk.tidy()
    assert [c.id for c in door.gallery.customers()] == [lin]
    door.clock.advance(3600)
    door.hk.tidy()
    assert door.gallery.customers() == []
    assert door.reports() == [lin]


def test_a_regular_seen_while_the_clock_is_ahead_gets_no_future_last_seen(door):
    lin, mina = _regular(door.gallery, "Lin Miranda", 2), _regular(door.gallery, "Mina Park", 3)
    door.hk.tidy()
    door.clock.step(400 * DAY)  # ahead across a pass
    door.clock.advance(1)
    door.hk.tidy()
    door.gallery.touch(lin)
    door.clock.step(-400 * DAY)
    door.clock.advance(1)
    door.hk.tidy()
    # ahead only between two passes (never seen by a pass)
    door.clock.step(400 * DAY)
    door.gallery.touch(mina)
    door.clock.step(-400 * DAY)
    door.clock.advance(1)
    door.hk.tidy()
    now = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=door.clock.wall_offset + 5)
    for cid in (lin, mina):
        assert _last_seen(door.gallery, cid) <= now.isoformat(timespec="seconds")


def test_retention_waits_for_the_systems_clock_sync(door, monkeypatch):
    import dangol_edge.clock as clock_module

    synced = [False]
    monkeypatch.setattr(clock_module, "system_synchronised", lambda: synced[0])
    lin = _regular(door.gallery, "Lin Miranda", 2)
    door.gallery.db.execute("UPDATE customers SET updated_at = '2000-01-01T00:00:00+00:00'")
    door.hk.tidy()
    assert [c.id for c in door.gallery.customers()] == [lin]  # NTP enabled, not synchronised yet: held
    synced[0] = True
    door.clock.advance(61)  # asked again within a minute
    door.hk.tidy()
    assert door.gallery.customers() == []


def test_one_pass_erases_no_more_than_a_share_of_regulars_on_an_unconfirmed_clock(door):
    """The clock may have been wrong since the box started (no step seen, no sync signal): a pass that would erase
    most regulars at once erases none of them, logs and counts it, until the clock has been steady for a day."""
    ids = [_regular(door.gallery, f"Regular {i}", 10 + i) for i in range(12)]
    door.gallery.db.execute("UPDATE customers SET updated_at = '2000-01-01T00:00:00+00:00'")
    door.hk.tidy()
    assert len(door.gallery.customers()) == 12
    assert door.stats.retention_held == 1
    door.clock.advance(DAY + 60)
    door.hk.tidy()
    assert door.gallery.customers() == []
    assert sorted(door.reports()) == sorted(ids)


def test_a_few_regulars_are_erased_at_once_on_an_unconfirmed_clock(door):
    ids = [_regular(door.gallery, f"Regular {i}", 10 + i) for i in range(12)]
    door.gallery.db.execute("UPDATE customers SET updated_at = '2000-01-01T00:00:00+00:00' WHERE id = ?", [ids[0]])
    door.hk.tidy()
    assert len(door.gallery.customers()) == 11
    assert door.reports() == [ids[0]]
