"""Clock steps and retention, sign-ups and a running model upgrade (the review of Dec 7):

* a regular seen, or activated, while the clock was behind is not erased early once NTP steps it forward, even when
  the visit was passes before the step;
* a box whose NTP client never synchronises and that is switched off every night still runs retention: the day's wait
  for NTP counts across daemon starts;
* a sign-up made in the seconds after a backward step is not erased by that step's repair.

The wall clock, the boot clock, the boot id and the system's word on the clock are faked (the fixtures of
test_clock_step and test_edge_left_dec7_clock_restart); the gallery and state are real files."""

from __future__ import annotations

import datetime as _dt

import pytest

from tests.edge.test_clock_step import DAY, _regular, _template, clock, door  # noqa: F401
from tests.edge.test_edge_left_dec7_clock_restart import HOUR, box  # noqa: F401


@pytest.fixture(autouse=True)
def retention_30_days(box):  # noqa: F811
    """The box's daemons (each :meth:`restart`) keep regulars 30 days unseen."""
    cfg = box.hk.config
    box.hk.config = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"retention_days": 30})})


def passes(box, seconds: float, every: float = 30.0) -> None:  # noqa: F811
    """Housekeeping passes every ``every`` seconds for ``seconds`` seconds of time passing."""
    for _ in range(int(seconds // every)):
        box.clock.advance(every)
        box.hk.tidy()


def _regulars(box) -> list[str]:  # noqa: F811
    return sorted(c.id for c in box.gallery.customers())


def test_a_regular_seen_passes_before_ntp_steps_the_clock_is_not_erased_early(box):  # noqa: F811
    """The café was closed 20 days; the box boots with fake-hwclock's last saved time (20 days behind) and NTP syncs
    half an hour after the daemon started. Lin was greeted ten minutes after opening (two passes before the step);
    Mina was signed up and activated by staff while the clock was behind (updated_at in the old timeline, never seen
    since). With a 30-day retention neither is erased 11 days later; both are, once their 30 days are up."""
    lin = _regular(box.gallery, "Lin Miranda", 2)  # a regular since before the café closed
    box.clock.step(-20 * DAY)  # boot: the wall clock reads the last saved time
    box.restart().tidy()
    passes(box, 600)
    box.gallery.touch(lin)  # recognised at the door
    mina = _regular(box.gallery, "Mina Park", 3)  # activated now (never seen since)
    passes(box, 1200)
    box.clock.step(20 * DAY)  # NTP syncs
    passes(box, 900)
    assert box.hk.stats.clock_steps == 1
    passes(box, 11 * DAY, every=600)
    assert _regulars(box) == sorted([lin, mina]) and box.reports() == []
    passes(box, 19 * DAY - 1800, every=3600)  # Lin's and Mina's 30 days are up (bounded: the shift is the step)
    passes(box, 2 * HOUR, every=600)
    assert _regulars(box) == [] and sorted(box.reports()) == sorted([lin, mina])


def test_a_regular_last_seen_before_the_box_was_off_is_still_erased_on_time(box):  # noqa: F811
    """Stamps from before the daemon started are in the right timeline: a step forward after the start leaves them."""
    ana = _regular(box.gallery, "Ana Lopes", 4)
    box.gallery.db.execute("UPDATE customers SET updated_at = ? WHERE id = ?", [
        (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=31)).isoformat(timespec="seconds"), ana])
    box.clock.step(-2 * DAY)  # booted two days behind
    box.restart().tidy()
    passes(box, 600)
    box.clock.step(2 * DAY)  # NTP syncs
    passes(box, 1800)
    assert _regulars(box) == [] and box.reports() == [ana]


def test_retention_runs_on_a_box_never_synchronised_that_is_switched_off_every_night(box, monkeypatch):  # noqa: F811
    """systemd-timesyncd runs but never synchronises (no internet; the box keeps time with an RTC) and the box is
    switched off after 13 hours every day: the day's wait for NTP adds up across daemon starts, so Mina, unseen 40
    days with a 30-day retention, is erased once the box has waited a day of running — not never."""
    import dangol_edge.clock as clock_module

    monkeypatch.setattr(clock_module, "system_synchronised", lambda: False)
    mina = _regular(box.gallery, "Mina Park", 3)
    box.gallery.db.execute("UPDATE customers SET updated_at = ?", [
        (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=40)).isoformat(timespec="seconds")])
    days = 0
    while _regulars(box) and days < 10:
        box.restart()  # the morning: box powered on, the daemon starts
        passes(box, 13 * HOUR, every=600)
        box.reboot(uptime=0.0, wall_step=11 * HOUR)  # the night: off (the RTC keeps the time)
        days += 1
    assert _regulars(box) == [] and box.reports() == [mina]
    assert days == 2  # held the first day (waiting for NTP), erased on the second


def test_the_wait_for_ntp_starts_again_once_the_system_synchronised(box, monkeypatch):  # noqa: F811
    """A day of waiting counted earlier does not let retention run on a later boot's unsynchronised clock at once
    after the system synchronised in between: the wait counts from the last time it was synchronised."""
    import dangol_edge.clock as clock_module

    synced = [False]
    monkeypatch.setattr(clock_module, "system_synchronised", lambda: synced[0])
    box.restart()
    passes(box, 20 * HOUR, every=600)  # 20 h waited
    synced[0] = True
    passes(box, 1200, every=600)
    synced[0] = False  # the next boot: not synchronised yet
    box.reboot(uptime=0.0, wall_step=HOUR)
    lin = _regular(box.gallery, "Lin Miranda", 2)
    box.gallery.db.execute("UPDATE customers SET updated_at = '2000-01-01T00:00:00+00:00'")
    box.restart()
    passes(box, 5 * HOUR, every=600)
    assert _regulars(box) == [lin]  # 20 h + 5 h waited would be over a day: the wait started again


def test_a_sign_up_made_just_after_a_step_back_is_not_erased_by_it(box):  # noqa: F811
    """The clock ran a day ahead (a wrong manual date), seen by passes, and is corrected. Sara signs up 5 s after the
    correction, before the next pass: she keeps her whole day. Tom, signed up before the wrong date, keeps what he had
    left; Ivo, signed up on the wrong date just before the correction (after the last pass), is neither erased early
    nor kept beyond his day from the correction."""
    box.hk.tidy()
    tom = box.gallery.enroll("", _template(5), status="pending", pending_ttl_s=DAY).id
    passes(box, 2 * HOUR, every=300)
    box.clock.step(DAY)  # wrong date
    passes(box, 120)
    box.clock.advance(10)
    ivo = box.gallery.enroll("", _template(6), status="pending", pending_ttl_s=DAY).id
    box.clock.step(-DAY)  # corrected
    box.clock.advance(5)
    sara = box.gallery.enroll("", _template(7), status="pending", pending_ttl_s=DAY).id
    box.clock.advance(10)
    box.hk.tidy()
    pending = lambda: sorted(c.id for c in box.gallery.customers(status="pending"))  # noqa: E731
    assert pending() == sorted([tom, ivo, sara]) and box.reports() == []
    passes(box, DAY - 2 * HOUR, every=600)
    assert pending() == sorted([ivo, sara])  # Tom's day is up (the wrong day did not count)
    passes(box, 2 * HOUR + 600, every=600)
    assert pending() == [] and sorted(box.reports()) == sorted([tom, ivo, sara])


def test_a_regular_seen_before_a_restart_is_not_erased_early_when_ntp_steps_later(box):  # noqa: F811
    """The box boots 20 days behind; Lin is greeted; the daemon restarts (an update) in the same boot. NTP then steps
    the clock — once while the daemon is stopped, once while the new one runs (two boxes' stories in one): Lin's visit
    still counts from when it was, not 20 days before."""
    lin = _regular(box.gallery, "Lin Miranda", 2)
    mina = _regular(box.gallery, "Mina Park", 3)
    box.clock.step(-20 * DAY)
    box.restart().tidy()
    passes(box, 600)
    box.gallery.touch(lin)
    passes(box, 600)
    box.clock.advance(20)  # restarted: the new daemon's first pass is after Lin's visit
    box.restart().tidy()
    passes(box, 600)
    box.gallery.touch(mina)
    passes(box, 300)
    box.clock.advance(5)  # stopped (an update); NTP syncs meanwhile
    box.clock.step(20 * DAY)
    box.clock.advance(5)
    box.restart().tidy()
    passes(box, 1800)
    passes(box, 11 * DAY, every=1800)
    assert _regulars(box) == sorted([lin, mina]) and box.reports() == []
    passes(box, 19 * DAY + 2 * HOUR, every=3600)  # their 30 days are up: erased (bounded)
    assert _regulars(box) == [] and sorted(box.reports()) == sorted([lin, mina])


def test_a_regular_seen_by_an_earlier_daemon_of_this_boot_survives_a_step_the_new_one_sees(box):  # noqa: F811
    lin = _regular(box.gallery, "Lin Miranda", 2)
    box.clock.step(-20 * DAY)
    box.restart().tidy()
    passes(box, 600)
    box.gallery.touch(lin)
    passes(box, 300)
    box.clock.advance(20)
    box.restart().tidy()  # same boot, a new daemon
    passes(box, 600)
    box.clock.step(20 * DAY)  # NTP syncs while it runs
    passes(box, 11 * DAY, every=1800)
    assert _regulars(box) == [lin] and box.reports() == []


def test_a_model_upgrades_age_survives_a_reboot_onto_another_clock(box):  # noqa: F811
    """A model upgrade runs (its start in the gallery's meta). The box boots on a clock 40 days behind, runs an hour,
    is switched off ten minutes and boots with NTP already done (nothing confirmed the first boot's clock): the
    upgrade's age is the hour it surely ran (and this boot's uptime), not 40 days — and never more."""
    from dangol_edge.gallery_models import UPGRADE_STARTED_KEY

    def wall_now() -> _dt.datetime:  # the faked wall clock
        return _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=box.clock.wall_offset)

    box.clock.step(-40 * DAY)
    box.restart().tidy()
    box.gallery.set_meta(UPGRADE_STARTED_KEY, wall_now().isoformat(timespec="seconds"))
    passes(box, HOUR, every=300)
    box.reboot(uptime=30.0, wall_step=40 * DAY + 600)
    box.confirmed = True
    box.restart().tidy()
    started = _dt.datetime.fromisoformat(box.gallery.meta(UPGRADE_STARTED_KEY))
    age = (wall_now() - started).total_seconds()
    assert HOUR <= age <= HOUR + 60  # an hour ran before the reboot, 30 s since; the 10 minutes off are not counted


def test_a_wait_for_ntp_the_gallery_holds_that_cannot_be_read_counts_from_now(box, monkeypatch, caplog):  # noqa: F811
    """A stored wait that is not a number of seconds (a hand-edited or damaged gallery): logged naming the key, counted,
    the wait counts from this start, and the value is written afresh."""
    import dangol_edge.clock as clock_module

    monkeypatch.setattr(clock_module, "system_synchronised", lambda: False)
    lin = _regular(box.gallery, "Lin Miranda", 2)
    box.gallery.db.execute("UPDATE customers SET updated_at = '2000-01-01T00:00:00+00:00'")
    box.gallery.set_meta("clock_sync_waited_s", "nan")
    hk = box.restart()
    hk.tidy()
    assert hk.stats.housekeeping_failures == 1 and "clock_sync_waited_s" in caplog.text
    assert box.gallery.meta("clock_sync_waited_s") is None  # written afresh (nothing waited yet)
    passes(box, 2 * HOUR, every=600)
    assert _regulars(box) == [lin] and float(box.gallery.meta("clock_sync_waited_s")) >= 1.5 * HOUR
