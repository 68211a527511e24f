"""A step of the wall clock while the daemon is stopped — or across a reboot — never erases a sign-up early, and never
keeps one for ever. A Pi has no real-time clock: it boots with the last saved time and steps when NTP syncs, maybe
while the daemon is down (a restart, an update) or before it starts (the next boot).

The wall clock, the boot clock (CLOCK_BOOTTIME: reset by a reboot), the boot id and whether the system confirms the
clock are faked (the fixtures of test_clock_step); each "restart" opens the files again with a new housekeeping worker,
as a new daemon does."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from dangol_edge.events import EventFactory, Outbox
from dangol_edge.gallery import Gallery
from dangol_edge.workers.base import Stats
from dangol_edge.workers.housekeeping import HousekeepingWorker
from tests.edge.test_clock_step import DAY, _template, clock, door  # noqa: F401

HOUR = 3600.0


@pytest.fixture
def box(door, monkeypatch):  # noqa: F811
    """``door`` whose boot id and clock confirmation are faked too: ``box.reboot(uptime, wall_step)`` and
    ``box.confirmed``; ``box.restart()`` is a new daemon on the same files (returns its housekeeping worker)."""
    import dangol_edge.clock as clock_module

    door.boot = "boot-1"
    door.confirmed = False
    monkeypatch.setattr(clock_module, "boot_id", lambda: door.boot, raising=False)
    monkeypatch.setattr(clock_module, "clock_confirmed", lambda: door.confirmed, raising=False)
    opened = []

    def restart() -> HousekeepingWorker:
        gallery = Gallery(door.gallery.path, "0" * 64).open()
        opened.append(gallery)
        door.gallery = gallery
        events, outbox = EventFactory(uuid.UUID(int=0)), Outbox(uuid.UUID(int=0), door.state, None)
        door.hk = HousekeepingWorker(door.hk.config, gallery, door.state, outbox, None, Stats(),
                                     lambda cid: outbox.erase([cid], [events.erasure_done([cid])]), lambda: None,
                                     threading.Event())
        return door.hk

    def reboot(uptime: float, wall_step: float) -> None:
        """The box was off: a new boot id, the boot clock at ``uptime``, the wall clock stepped by ``wall_step``."""
        door.boot = f"boot-{int(door.boot.split('-')[1]) + 1}"
        door.clock.boot = uptime
        door.clock.step(wall_step)

    door.restart, door.reboot = restart, reboot
    yield door
    for g in opened:
        g.close()


def _pending(box) -> list[str]:
    return [c.id for c in box.gallery.customers(status="pending")]


def test_ntp_stepping_the_clock_while_the_daemon_is_stopped_erases_no_sign_up_early(box):
    box.clock.step(-2 * DAY)  # booted without network: the clock reads the last saved time, two days behind
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    box.clock.advance(10)
    box.hk.tidy()
    box.clock.advance(5)  # the daemon stops (an update); NTP syncs meanwhile
    box.clock.step(2 * DAY)
    box.clock.advance(5)
    box.restart().tidy()  # same boot, a new daemon
    assert _pending(box) == [signup] and box.reports() == []
    box.clock.advance(DAY - 20 - 60)  # the rest of its day: still there
    box.hk.tidy()
    assert _pending(box) == [signup]
    box.clock.advance(120)  # its day is up: erased and reported
    box.hk.tidy()
    assert _pending(box) == [] and box.reports() == [signup]


def test_a_sign_up_made_on_an_unconfirmed_clock_survives_a_reboot_onto_the_right_time(box):
    """Made on a boot whose clock was two days behind and never synchronised; the box is switched off for ten minutes
    and the next boot has the right time before the daemon starts. Its age so far is known (an hour), the time the
    box was off is not: it keeps the rest of its day from now, never less."""
    box.clock.step(-2 * DAY)
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    for _ in range(12):  # an hour of housekeeping passes
        box.clock.advance(300)
        box.hk.tidy()
    box.reboot(uptime=30.0, wall_step=2 * DAY + 600)  # off for 10 minutes, NTP synced before the daemon started
    box.confirmed = True
    box.restart().tidy()
    assert _pending(box) == [signup] and box.reports() == []
    box.clock.advance(DAY - HOUR - 30 - 60)  # within what it can have left
    box.hk.tidy()
    assert _pending(box) == [signup]
    box.clock.advance(600 + 120)  # bounded: its day of the box running is up
    box.hk.tidy()
    assert _pending(box) == [] and box.reports() == [signup]


def test_a_sign_up_on_a_clock_ahead_when_the_daemon_stopped_is_not_kept_for_ever(box):
    """A wrong date a year ahead (typed by hand) when the sign-up was made, corrected while the daemon was stopped: it
    expires within its lifetime from the correction, not a year later."""
    box.clock.step(365 * DAY)
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    box.clock.advance(10)
    box.hk.tidy()
    box.clock.step(-365 * DAY)
    box.clock.advance(5)
    box.restart().tidy()
    assert _pending(box) == [signup]
    box.clock.advance(DAY + 60)
    box.hk.tidy()
    assert _pending(box) == [] and box.reports() == [signup]


def test_a_confirmed_clock_on_both_boots_counts_the_time_the_box_was_off(box):
    """Both boots' clocks confirmed by the system (NTP): the wall clock is right, the time the box was off counts."""
    box.confirmed = True
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    box.clock.advance(2 * HOUR)
    box.hk.tidy()
    box.reboot(uptime=40.0, wall_step=20 * HOUR)  # off for 20 hours
    box.restart().tidy()
    assert _pending(box) == [signup]
    box.clock.advance(2 * HOUR - 40 - 60)
    box.hk.tidy()
    assert _pending(box) == [signup]
    box.clock.advance(120)
    box.hk.tidy()
    assert _pending(box) == [] and box.reports() == [signup]


def test_an_offline_box_rebooting_every_day_still_erases_the_sign_up(box):
    """No NTP at all: every boot starts at the time fake-hwclock saved last (up to an hour before the power went),
    nothing is ever confirmed. The sign-up's life is then counted by the boot clock, boot after boot: it is erased
    once the box has run for its lifetime (bounded), however much of each boot's time the saved clock lost."""
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=4 * HOUR).id
    boots = 0
    while _pending(box) and boots < 10:
        for _ in range(12):  # an hour of passes
            box.clock.advance(300)
            box.hk.tidy()
        # a power cut; fake-hwclock's last save was half an hour before it, and the next boot starts there
        box.reboot(uptime=30.0, wall_step=-HOUR / 2)
        box.restart().tidy()
        boots += 1
    assert _pending(box) == [] and box.reports() == [signup]
    assert 4 <= boots <= 6


def test_the_anchor_is_kept_in_the_gallery_and_written_rarely(box):
    """The wall/boot clock pair is written at the first pass, then only while sign-ups wait (every few minutes) and
    after a step: an idle box does not write its memory card every pass."""
    box.hk.tidy()
    versions = []
    for _ in range(20):
        box.clock.advance(30)
        box.hk.tidy()
        versions.append(box.gallery.db.execute("SELECT value FROM meta WHERE key = 'clock_anchor'").fetchone()[0])
    assert len(set(versions)) == 1
    anchor = json.loads(versions[0])
    assert anchor["boot"] == "boot-1" and set(anchor) >= {"boot", "boot_s", "wall", "confirmed"}


def test_a_step_the_gallery_cannot_record_yet_erases_nobody_meanwhile(box):
    """The step is found at the start but the gallery cannot be written (a card remounted read-only): the pass fails
    (counted, logged) and no sign-up expires by stamps still in the old timeline; once it can be written, the step is
    repaired."""
    box.clock.step(-2 * DAY)
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    box.clock.advance(10)
    box.hk.tidy()
    box.clock.step(2 * DAY)
    box.clock.advance(5)
    hk = box.restart()
    with box.gallery._lock:
        box.gallery.db.execute("PRAGMA query_only = ON")  # every write fails as on a read-only medium
    try:
        assert not hk.tidy()
        assert _pending(box) == [signup] and hk.stats.housekeeping_failures >= 1
    finally:
        with box.gallery._lock:
            box.gallery.db.execute("PRAGMA query_only = OFF")
    hk.tidy()
    assert _pending(box) == [signup] and box.reports() == []
    box.clock.advance(DAY - 15 - 60)
    hk.tidy()
    assert _pending(box) == [signup]
