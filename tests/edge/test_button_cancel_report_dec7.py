"""Cancelling a sign-up by holding the button: the erasure's report for the cloud is recorded in the gallery in the
erasure's own transaction, so a report the state file cannot take now survives a restart and is sent by the next
daemon's housekeeping (as the staff page's erase and discard are). Real int8 SFace pipeline on real LFW photos,
gpiozero's MockFactory for the button, real SQLite gallery and state file.

Before: a failed report was kept in the worker's memory only and retried every 30 s; a daemon stopped while the state
file could not be written lost it, and the cloud never heard of the erasure."""

from __future__ import annotations

import sqlite3
import threading

from gpiozero.pins.mock import MockFactory

from dangol_edge.config import GPIOConfig
from dangol_edge.embed import file_sha256
from dangol_edge.gallery import Gallery
from dangol_edge.workers import Stats
from dangol_edge.workers.housekeeping import HousekeepingWorker
from tests.edge.test_door_review_fixes import LEFT, canvas, outbox, people, run, signup_worker  # noqa: F401
from tests.edge.test_sync import wait_for


def held_sign_up(tmp_path, model_path, pipeline, people, monkeypatch, fail: bool):  # noqa: F811
    """A press stores a sign-up of John Ashcroft; the button is then held to cancel it, with the state file refusing
    writes when ``fail``: ``(worker, gallery, state, screen, pending id)``."""
    from dangol_edge.buttons import EnrolButton

    e, gallery, state, screen = signup_worker(tmp_path, model_path)
    factory = MockFactory()
    button = EnrolButton(GPIOConfig(hold_cancel_s=0.5), e.request("enrol"), e.request("cancel"),
                         pin_factory=factory).open()
    e.button = button
    pin = factory.pin(17)
    try:
        pin.drive_low()  # press …
        assert wait_for(lambda: not e.requests.empty(), timeout=2)
        e.handle_requests()
        run(e, pipeline, [canvas((a, LEFT)) for a in people["John_Ashcroft"]])
        (pending,) = gallery.customers(status="pending")
        if fail:
            def full(*args, **kwargs):
                raise sqlite3.OperationalError("database or disk is full")
            monkeypatch.setattr(e.outbox, "erase", full)
        assert wait_for(lambda: button.button.is_held, timeout=3)  # … and hold
        assert wait_for(lambda: not e.requests.empty(), timeout=2)
        e.handle_requests()
        pin.drive_high()
    finally:
        button.close()
    assert gallery.customers(status=None) == [] and screen.snapshot()["stage"] == "cancelled"
    return e, gallery, state, screen, pending.id


def test_a_report_the_state_file_refused_survives_a_restart(tmp_path, model_path, pipeline, people, monkeypatch,
                                                            caplog):  # noqa: F811
    e, gallery, state, screen, cid = held_sign_up(tmp_path, model_path, pipeline, people, monkeypatch, fail=True)
    assert e.stats.storage == "full" and "could not be recorded for the cloud" in caplog.text
    assert outbox(state) == [("enrolment", "pending")]  # the cloud has not been told
    assert gallery.unreported_erasures() == [cid]
    # the daemon stops before the state file can be written again …
    gallery.close()
    state.close()
    # … and starts again: its housekeeping reports the erasure and forgets the record
    from dangol_edge.events import EventFactory, Outbox
    from dangol_edge.state import StateStore
    from tests.edge.test_door_review_fixes import DEVICE

    gallery = Gallery(tmp_path / "gallery.sqlite", file_sha256(model_path)).open()
    state = StateStore(tmp_path / "state.sqlite").open()
    try:
        assert gallery.unreported_erasures() == [cid]
        box, events = Outbox(DEVICE, state), EventFactory(DEVICE)
        hk = HousekeepingWorker(e.config, gallery, state, box, None, Stats(),
                                lambda c: box.erase([c], [events.erasure_done([c])]), lambda: None,
                                threading.Event())
        hk.tidy()
        assert ("erasure-done", [cid]) in outbox(state)
        assert gallery.unreported_erasures() == []
    finally:
        gallery.close()
        state.close()


def test_a_report_retried_while_running_clears_the_record(tmp_path, model_path, pipeline, people,
                                                          monkeypatch):  # noqa: F811
    """The state file works again before a restart: the worker's retry reports it and the gallery's record goes."""
    e, gallery, state, screen, cid = held_sign_up(tmp_path, model_path, pipeline, people, monkeypatch, fail=True)
    try:
        monkeypatch.undo()
        e._retry_at = 0.0
        e.handle_requests()
        assert outbox(state) == [("erasure-done", [cid])]  # its queued event went with it
        assert gallery.unreported_erasures() == []
    finally:
        gallery.close()
        state.close()


def test_a_report_written_at_once_leaves_no_record(tmp_path, model_path, pipeline, people, monkeypatch):  # noqa: F811
    e, gallery, state, screen, cid = held_sign_up(tmp_path, model_path, pipeline, people, monkeypatch, fail=False)
    try:
        assert outbox(state) == [("erasure-done", [cid])]  # its queued event went with it
        assert gallery.unreported_erasures() == []
    finally:
        gallery.close()
        state.close()
