"""The clock anchor (dangol_edge.clock_anchor) never erases a sign-up early because of what it cannot read:

* a boot id that cannot be read — none at all (not Linux: every daemon is its own "boot"), or one read that fails —
  never makes a restart count the sign-up's age twice, nor a running daemon look rebooted;
* a damaged anchor row (NaN, a number beyond any boot, a wall clock beyond the calendar, a string for a bool) is
  written afresh at once — logged and counted — instead of being trusted (a step never repaired) or failing every pass
  (sign-ups never expiring, the model upgrade never ending);
* an unreadable wait for NTP (``clock_sync_waited_s``) is written afresh by the pass that finds it.

The wall clock, the boot clock and whether the system confirms the clock are faked (the fixtures of test_clock_step and
test_edge_left_dec7_clock_restart); the boot id is read from a file by the real ``dangol_edge.clock.boot_id`` where
the test says so, and each restart there is a new process (its boot id read afresh)."""

from __future__ import annotations

import json
import uuid

import pytest

import dangol_edge.clock as clock_module
from dangol_edge.clock import boot_id as real_boot_id
from dangol_edge.clock_anchor import Anchor
from tests.edge.test_clock_step import DAY, _template, clock, door  # noqa: F401
from tests.edge.test_edge_left_dec7_clock_restart import box  # noqa: F401

HOUR = 3600.0
BOOT_ID = "11111111-1111-1111-1111-111111111111"


def _new_process(monkeypatch) -> None:
    """What a new daemon process starts with: no boot id read yet, and its own id should the kernel give none."""
    monkeypatch.setattr(clock_module, "_BOOT", clock_module._BootId())
    monkeypatch.setattr(clock_module, "_PROCESS_BOOT", f"process-{uuid.uuid4()}")


@pytest.fixture
def proc(box, monkeypatch, tmp_path):  # noqa: F811
    """``box`` whose boot id is read by the real ``boot_id`` from ``proc.boot_file`` (missing unless the test writes
    it); ``proc.restart()`` is a new daemon process on the same files."""
    monkeypatch.setattr(clock_module, "boot_id", real_boot_id)
    box.boot_file = tmp_path / "boot_id"
    monkeypatch.setattr(clock_module, "BOOT_ID_PATH", box.boot_file)
    _new_process(monkeypatch)
    restart = box.restart

    def restart_process():
        _new_process(monkeypatch)
        return restart()

    box.restart = restart_process
    return box


def _pending(box) -> list[str]:
    return [c.id for c in box.gallery.customers(status="pending")]


def _hours(box, hours: int) -> None:
    for _ in range(hours):
        box.clock.advance(HOUR)
        assert box.hk.tidy()


# -- no boot id, or one that cannot be read --------------------------------------------------------------------------

def test_a_restart_where_the_kernel_gives_no_boot_id_erases_no_sign_up_early(proc):
    """No boot id (the file is missing): every daemon is a boot of its own. A restart 20 h into a 24 h sign-up's life
    leaves it its 4 h; the time before the restart is not taken off twice."""
    proc.hk.tidy()
    signup = proc.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    _hours(proc, 20)
    proc.clock.advance(5)  # the daemon restarts (an update)
    assert proc.restart().tidy()
    assert _pending(proc) == [signup], "erased 20 h into its 24 h lifetime, at a mere restart"
    proc.clock.advance(4 * HOUR - 60)
    proc.hk.tidy()
    assert _pending(proc) == [signup]
    proc.clock.advance(120)
    proc.hk.tidy()
    assert _pending(proc) == [] and proc.reports() == [signup]


def test_without_a_boot_id_a_restart_counts_only_the_new_daemons_running_time(proc):
    """No boot id, and NTP steps the clock two days forward while the daemon is stopped: the boot clock (the box has
    run 21 h) is not time surely passed since the anchor — only the new daemon's own running time is."""
    proc.hk.tidy()
    signup = proc.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    _hours(proc, 20)
    proc.clock.step(2 * DAY)
    proc.clock.advance(5)
    assert proc.restart().tidy()
    assert _pending(proc) == [signup]
    proc.clock.advance(4 * HOUR - 60)
    proc.hk.tidy()
    assert _pending(proc) == [signup]
    proc.clock.advance(120)
    proc.hk.tidy()
    assert _pending(proc) == [] and proc.reports() == [signup]


def test_a_boot_id_read_once_is_kept_by_the_running_daemon(proc):
    """The boot id cannot change within a process: a later read that would fail (here the file is gone for a pass,
    e.g. EMFILE) does not make the daemon take itself for rebooted, there and back."""
    proc.boot_file.write_text(BOOT_ID + "\n")
    proc.hk.tidy()
    signup = proc.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    _hours(proc, 14)
    proc.boot_file.unlink()
    proc.clock.advance(60)
    assert proc.hk.tidy()
    proc.boot_file.write_text(BOOT_ID + "\n")
    proc.clock.advance(60)
    assert proc.hk.tidy()
    assert _pending(proc) == [signup], "erased 14 h into its 24 h"
    assert json.loads(proc.gallery.meta("clock_anchor"))["boot"] == BOOT_ID
    proc.clock.advance(10 * HOUR - 180)
    proc.hk.tidy()
    assert _pending(proc) == [signup]
    proc.clock.advance(120)
    proc.hk.tidy()
    assert _pending(proc) == [] and proc.reports() == [signup]


def test_a_new_daemon_that_cannot_read_the_boot_id_waits_instead_of_erasing(proc):
    """NTP stepped the clock two days forward while the daemon was stopped, and the new daemon's first pass cannot
    read the boot id (an error, not a missing file): the pass fails — counted — and expires nothing by stamps not yet
    repaired; the next pass reads it and repairs the step."""
    proc.boot_file.write_text(BOOT_ID + "\n")
    proc.hk.tidy()
    signup = proc.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    _hours(proc, 2)
    proc.clock.step(2 * DAY)
    proc.clock.advance(5)
    proc.boot_file.unlink()
    proc.boot_file.mkdir()  # reading it fails: IsADirectoryError
    hk = proc.restart()
    assert not hk.tidy()
    assert hk.stats.housekeeping_failures >= 1 and _pending(proc) == [signup] and proc.reports() == []
    proc.boot_file.rmdir()
    proc.boot_file.write_text(BOOT_ID + "\n")
    proc.clock.advance(30)
    assert hk.tidy()
    proc.clock.advance(22 * HOUR - 120)
    hk.tidy()
    assert _pending(proc) == [signup], "its remaining 22 h were taken by the step"
    proc.clock.advance(240)
    hk.tidy()
    assert _pending(proc) == [] and proc.reports() == [signup]


def test_a_boot_id_that_stays_unreadable_does_not_stop_expiry_for_ever(proc):
    """A boot id that cannot be read for BOOT_ID_RETRY_S: the daemon then counts as a boot of its own, and sign-ups
    expire again."""
    proc.boot_file.mkdir()
    proc.hk.tidy()
    signup = proc.gallery.enroll("", _template(1), status="pending", pending_ttl_s=HOUR).id
    results = []
    for _ in range(int(clock_module.BOOT_ID_RETRY_S // 60) + 2):
        proc.clock.advance(60)
        results.append(proc.hk.tidy())
    assert not results[0] and results[-1]
    assert json.loads(proc.gallery.meta("clock_anchor"))["boot"].startswith("process-")
    proc.clock.advance(HOUR)
    proc.hk.tidy()
    assert _pending(proc) == [] and proc.reports() == [signup]


# -- a damaged anchor -----------------------------------------------------------------------------------------------

def _damage(box, **values) -> None:
    anchor = json.loads(box.gallery.meta("clock_anchor"))
    box.gallery.set_meta("clock_anchor", json.dumps(anchor | values))


def test_a_nan_in_the_anchor_is_written_afresh_and_a_later_step_is_repaired(box):
    """``"boot_s": NaN`` (JSON as Python reads it) is refused: the next pass writes the anchor afresh (the pass
    counts it), so a step while the daemon is stopped later is repaired as usual."""
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    box.clock.advance(10)
    box.hk.tidy()
    _damage(box, boot_s=float("nan"))
    box.clock.advance(600)
    assert not box.hk.tidy() and box.hk.stats.housekeeping_failures == 1
    assert json.loads(box.gallery.meta("clock_anchor"))["boot_s"] == box.clock.boot  # written afresh
    for _ in range(2):
        box.clock.advance(600)
        assert box.hk.tidy()
    box.clock.step(2 * DAY)  # NTP steps the clock while the daemon is stopped (same boot)
    box.clock.advance(5)
    assert box.restart().tidy()
    assert _pending(box) == [signup] and box.reports() == []
    box.clock.advance(DAY - 1815 - 60)
    box.hk.tidy()
    assert _pending(box) == [signup]


def test_a_boot_clock_beyond_any_boot_in_the_anchor_does_not_stop_expiry(box):
    """``"boot_s": 1e300`` parses but would overflow the anchor's arithmetic at every pass: it is refused and written
    afresh, the sign-up expires on time and the model upgrade's deadline is allowed again."""
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=HOUR).id
    box.clock.advance(10)
    box.hk.tidy()
    _damage(box, boot_s=1e300)
    deadlines = []

    class Upgrade:  # records whether each pass lets the upgrade decide by its deadline
        done = False

        def check(self, now, deadline):
            deadlines.append(deadline)

    box.hk.upgrade = Upgrade()
    oks = []
    for _ in range(4):
        box.clock.advance(HOUR)
        oks.append(box.hk.tidy())
    assert oks == [False, True, True, True] and box.hk.stats.housekeeping_failures == 1
    assert deadlines[1:] == [True, True, True]
    assert _pending(box) == [] and box.reports() == [signup]


@pytest.mark.parametrize("values", [
    {"boot_s": float("inf")}, {"boot_s": -5.0}, {"boot_s": 1e10}, {"boot_s": "12"}, {"boot_s": True},
    {"wall": "9999-12-31T23:59:59+00:00"}, {"wall": "1900-01-01T00:00:00+00:00"}, {"wall": "2026-12-07T10:00:00"},
    {"since": "9999-12-31T00:00:00+00:00"}, {"confirmed": "false"}, {"confirmed": 0}, {"boot": ""}, {"boot": 7},
])
def test_a_damaged_anchor_value_is_refused_and_written_afresh(box, values):
    box.hk.tidy()
    _damage(box, **values)
    assert Anchor.loads(box.gallery.meta("clock_anchor")) is None
    box.clock.advance(30)
    assert not box.hk.tidy() and box.hk.stats.housekeeping_failures == 1
    assert Anchor.loads(box.gallery.meta("clock_anchor")).boot_s == box.clock.boot  # written afresh
    box.clock.advance(30)
    assert box.hk.tidy()


@pytest.mark.parametrize("text", ["[1, 2]", "not json", "7", "null"])
def test_an_anchor_that_is_no_json_object_is_written_afresh(box, text):
    box.hk.tidy()
    box.gallery.set_meta("clock_anchor", text)
    box.clock.advance(30)
    assert not box.hk.tidy() and box.hk.stats.housekeeping_failures == 1
    assert Anchor.loads(box.gallery.meta("clock_anchor")).boot_s == box.clock.boot  # written afresh
    box.clock.advance(30)
    assert box.hk.tidy()


def test_a_sign_up_whose_stamps_cannot_be_moved_does_not_cost_the_others_their_repair(box):
    """A sign-up whose ``expires_at`` is at the calendar's end cannot be moved by a step forward: it is left to the
    wall clock (the pass counts it), and every other sign-up keeps its remaining lifetime."""
    box.hk.tidy()
    signup = box.gallery.enroll("", _template(1), status="pending", pending_ttl_s=DAY).id
    odd = box.gallery.enroll("", _template(2), status="pending", pending_ttl_s=DAY).id
    box.gallery.db.execute("UPDATE customers SET expires_at = '9999-12-31T00:00:00+00:00' WHERE id = ?", [odd])
    box.clock.advance(10)
    box.hk.tidy()
    box.clock.step(2 * DAY)
    box.clock.advance(5)
    hk = box.restart()
    assert not hk.tidy() and hk.stats.housekeeping_failures == 1
    assert sorted(_pending(box)) == sorted([signup, odd]) and box.reports() == []
    box.clock.advance(30)
    assert hk.tidy()
    box.clock.advance(DAY - 45 - 60)
    hk.tidy()
    assert signup in _pending(box)


# -- the wait for NTP --------------------------------------------------------------------------------------------------

def test_an_unreadable_wait_for_ntp_is_written_afresh_by_the_same_pass(box, monkeypatch):
    monkeypatch.setattr(clock_module, "system_synchronised", lambda: False)  # NTP runs, not synchronised yet
    box.gallery.set_meta("clock_sync_waited_s", "nan")
    hk = box.restart()
    box.clock.advance(30)
    hk.tidy()
    assert hk.stats.housekeeping_failures == 1
    assert float(box.gallery.meta("clock_sync_waited_s")) == hk.clock.sync_waited_s == 30.0
