"""Review R3's edge error-handling findings (dec 7b):

1. The staff page told staff "the message is kept and retried every minute" whenever reporting an activation failed,
   but the outbox holds an event only when the state file cannot be written (``sqlite3.OperationalError``); a damaged
   page (``sqlite3.DatabaseError``) or a consent record that cannot be read (``ValueError``) lost the report: the
   cloud never learnt the customer was active. Now the activation's own transaction records it for the report (the
   gallery's ``activation_reports``, as erasures have ``erasure_reports``), cleared once the event is written; staff
   are told the truth, and the next start reports what is still recorded.
2. ``read_catalogue`` logged a full traceback on every call while the state file could not be read (each open event
   stream calls it every second) and ``/api/catalogue`` answered 404 "no catalogue cached yet". Now one log line per
   streak of failures, and 503 with the reason.
3. ``SpaceReserve.ensure`` logged every failure at debug level as "the disk is full": a reserve that can never be
   allocated for another reason went unnoticed until the day the disk filled. Now logged once, as a warning.

Real SQLite files throughout: a damaged page is garbage written over a table's page of the real file while it is
open; a file that cannot be written is the real connection's ``PRAGMA query_only``.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest

from dangol_edge.activation_reports import report_activation, report_unreported_activations
from dangol_edge.config import EdgeConfig
from dangol_edge.daemon import Appliance
from dangol_edge.events import EventFactory, EventNotSaved, Outbox
from dangol_edge.reserve import RESERVE_NAME, SpaceReserve
from dangol_edge.screen import Screen
from dangol_edge.state import StateStore
from dangol_edge.web import create_app
from dangol_edge.web.menu import read_catalogue
from dangol_protocol import Consent
from tests.edge.test_daemon import catalogue_payload, config


def unit(seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((1, 128)).astype(np.float32)
    return e / np.linalg.norm(e)


def damage(path: Path, table: str) -> tuple[int, bytes]:
    """Write garbage over the root page of ``table`` in the SQLite file ``path`` (open elsewhere, as a failing SD card
    would); returns (offset, the page's old bytes) for :func:`repair`."""
    con = sqlite3.connect(path)
    try:
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * size)
        old = f.read(size)
        f.seek((root - 1) * size)
        f.write(b"\xee" * size)
    return (root - 1) * size, old


def repair(path: Path, where: tuple[int, bytes]) -> None:
    """Put the page back; another connection's write then tells the open one to read the file again."""
    with open(path, "r+b") as f:
        f.seek(where[0])
        f.write(where[1])
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA user_version = 7")
        con.commit()
    finally:
        con.close()


def queued(state) -> list[dict]:
    """The outbox's unacknowledged events as the cloud would receive them."""
    return [json.loads(e["payload"]) for e in state.pending(1000)]


def activations(app, customer_id: str) -> list[dict]:
    return [e for e in queued(app.state) if e["kind"] == "enrolment" and e.get("customer_id") == customer_id
            and e.get("status") == "active"]


def flashed(web) -> str:
    return web.get("/staff").get_data(as_text=True)


def token(web) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', flashed(web)).group(1)


# --- 1. the activation report ----------------------------------------------------------------------


def test_an_activation_the_state_file_cannot_take_is_told_truly_and_reported_at_the_next_start(tmp_path, model_path,
                                                                                               clips):
    home = tmp_path / "home"
    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")}))
    app.start()
    try:
        web = app.web.app.test_client()
        c = app.gallery.enroll("", unit(1), status="pending", pending_ttl_s=3600)
        damage(home / "state.sqlite", "outbox")  # the outbox's page is garbage: sqlite3.DatabaseError, not held
        r = web.post(f"/staff/activate/{c.id}", data={"csrf_token": token(web), "display_name": "Mina Park",
                                                      "staff": "Jo", "consent": "yes"})
        assert r.status_code == 302 and app.gallery.customer(c.id).status == "active"
        page = flashed(web)
        assert "retried every minute" not in page, "staff were told a lost report is kept and retried"
        assert "was not told" in page and "next start" in page
        assert app.outbox.held == 0
        assert app.gallery.unreported_activations() == [c.id], "nothing records the activation for a later report"
    finally:
        app.stop()
    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")}))
    app.start()  # the damaged state file is moved aside; the activation is reported again
    try:
        sent = activations(app, c.id)
        assert [(e["display_name"], e["consent"]["recorded_by"]) for e in sent] == [("Mina Park", "Jo")]
        assert app.gallery.unreported_activations() == []
    finally:
        app.stop()


def test_an_activation_held_in_memory_keeps_its_record_until_the_held_event_is_written(tmp_path, gallery):
    """The outbox holds the event (the state file is read-only: OperationalError); the gallery's record of the
    activation goes only once the retry wrote it, so a restart before that reports it again."""
    state = StateStore(tmp_path / "state.sqlite").open()
    try:
        device = uuid.uuid4()
        events, outbox = EventFactory(device), Outbox(device, state)
        c = gallery.enroll("", unit(2), status="pending", pending_ttl_s=3600)
        consent = Consent(recorded_by="Jo", recorded_at="2026-12-07T10:00:00Z", text_version="2026-01")
        active = gallery.activate(c.id, "Bo Kim", consent)
        assert gallery.unreported_activations() == [c.id]
        state.db.execute("PRAGMA query_only = ON")
        with pytest.raises(EventNotSaved):
            report_activation(gallery, outbox, events, active)
        assert outbox.held == 1 and gallery.unreported_activations() == [c.id]
        assert outbox.retry() == 0 and gallery.unreported_activations() == [c.id]
        state.db.execute("PRAGMA query_only = OFF")
        assert outbox.retry() == 1
        assert gallery.unreported_activations() == []
        assert [(e["kind"], e["customer_id"]) for e in queued(state)] == [("enrolment", c.id)]
    finally:
        state.close()


def test_an_activation_whose_consent_record_cannot_be_read_stays_recorded_until_it_can(tmp_path, gallery, caplog):
    """The stored consent record was damaged after the activation (``Customer.consent`` None: ``ValueError``): each
    start logs why and keeps the record; once the record reads again the activation is reported."""
    state = StateStore(tmp_path / "state.sqlite").open()
    try:
        device = uuid.uuid4()
        events, outbox = EventFactory(device), Outbox(device, state)
        c = gallery.enroll("", unit(3), status="pending", pending_ttl_s=3600)
        consent = Consent(recorded_by="Jo", recorded_at="2026-12-07T10:00:00Z", text_version="2026-01")
        gallery.activate(c.id, "Ana Lee", consent)
        good = gallery.db.execute("SELECT consent FROM customers WHERE id = ?", [c.id]).fetchone()[0]
        gallery.db.execute("UPDATE customers SET consent = '{\"recorded_by\": \"Jo\"}' WHERE id = ?", [c.id])
        with caplog.at_level(logging.ERROR, logger="dangol_edge.activation_reports"):
            assert report_unreported_activations(gallery, outbox, events) == 0
        assert c.id in caplog.text and "next start" in caplog.text
        assert gallery.unreported_activations() == [c.id] and queued(state) == [] and outbox.held == 0
        gallery.db.execute("UPDATE customers SET consent = ? WHERE id = ?", [good, c.id])
        assert report_unreported_activations(gallery, outbox, events) == 1
        assert [(e["kind"], e["status"], e["display_name"]) for e in queued(state)] == [("enrolment", "active",
                                                                                           "Ana Lee")]
        assert gallery.unreported_activations() == []
        other = gallery.enroll("", unit(4), status="pending", pending_ttl_s=3600)
        gallery.activate(other.id, "Bo Kim", consent)
        assert gallery.unreported_activations() == [other.id]
        gallery.delete(other.id)  # an erasure takes the record with the customer: no id of theirs stays
        assert gallery.unreported_activations() == []
    finally:
        state.close()


# --- 2. the cached catalogue --------------------------------------------------------------------


def test_a_state_file_that_cannot_be_read_is_logged_once_per_streak_and_the_api_says_503(tmp_path, gallery, caplog):
    path = tmp_path / "state.sqlite"
    state = StateStore(path).open()
    try:
        state.put_catalogue(catalogue_payload())
        app = create_app(screen=Screen(), state=state, gallery=gallery, config=EdgeConfig(home=tmp_path / "home"))
        web = app.test_client()
        assert web.get("/api/catalogue").status_code == 200
        state._catalogue = None  # (a restart: nothing parsed yet)
        where = damage(path, "catalogue")

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dangol_edge.web.menu"):
            with app.app_context():
                d = app.extensions["dangol_edge"]
                for _ in range(200):  # 200 s of one open event stream
                    assert read_catalogue(d) is None
            r = web.get("/api/catalogue")
            assert r.status_code == 503, "a catalogue that cannot be read was answered as never cached"
            assert "malformed" in r.get_json()["error"]
            records = [rec for rec in caplog.records if rec.name == "dangol_edge.web.menu"]
            assert len(records) == 1 and records[0].levelno == logging.ERROR, [r.getMessage() for r in records]
            assert records[0].exc_info is None or len(caplog.text) < 4000
            repair(path, where)
            assert web.get("/api/catalogue").status_code == 200
            records = [rec for rec in caplog.records if rec.name == "dangol_edge.web.menu"]
            assert len(records) == 2 and "again" in records[1].getMessage()
    finally:
        state.close()


# --- 3. the space reserve -------------------------------------------------------------------------


def test_a_reserve_that_cannot_be_made_for_another_reason_than_a_full_disk_is_a_warning_once(tmp_path, caplog):
    home = tmp_path / "home"
    (home / RESERVE_NAME).mkdir(parents=True)  # something else has the reserve's name: EISDIR, not ENOSPC
    reserve = SpaceReserve(home)
    with caplog.at_level(logging.DEBUG, logger="dangol_edge.reserve"):
        assert reserve.ensure() is False
        assert reserve.ensure() is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert str(home / RESERVE_NAME) in warnings[0].getMessage() and "directory" in warnings[0].getMessage()
    (home / RESERVE_NAME).rmdir()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="dangol_edge.reserve"):
        assert reserve.ensure() is True
    assert any("allocated" in r.getMessage() for r in caplog.records)
