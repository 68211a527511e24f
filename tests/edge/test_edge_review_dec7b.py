"""Review R5's edge daemon findings (dec 7b):

1. ``report_unreported_activations`` (the daemon's start; "never raises") let through a ``GalleryKeyError`` (a sealed
   name that fails authentication) and a ``ValueError`` (a name that is not UTF-8): one unreadable customer with a
   pending activation record stopped the daemon on every start with exit 2, which systemd never restarts. Now that
   record is logged (the customer's id, never a name) and kept, the next record is reported, and the start goes on.
2. ``Outbox.retry`` wrote the head of the held events and then popped the head: when ``Outbox.erase`` (a staff-page
   erasure, another thread) removed that event meanwhile, the *next* held event was popped unwritten: lost, its
   ``on_saved`` never called.
3. Past ``REFUSED_MAX`` refused events the back-off stopped working: an event forgotten from the refused map was sent
   again on the next flusher pass, refused, evicting another — a re-send and a warning per event per second.
4. The wrapper ``systemd/dangol-edge`` read backslash escapes and multi-line quoted values of ``edge.env`` otherwise
   than systemd does: it now refuses such a line, naming its number and the variable.
5. A config file that is not UTF-8 gave an error not naming the file.

Real SQLite files and a real Mosquitto (``tests/broker.py``) throughout; a file that cannot be written is the real
connection's ``PRAGMA query_only``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid

import numpy as np
import pytest

import dangol_edge.sync_uplink as uplink
from dangol_edge.activation_reports import report_unreported_activations
from dangol_edge.config import ConfigError, MQTTConfig, load_config
from dangol_edge.crypto import FieldCipher
from dangol_edge.daemon import Appliance
from dangol_edge.events import EventFactory, EventNotSaved, Outbox
from dangol_edge.gallery import Gallery
from dangol_edge.state import StateStore
from dangol_edge.sync import MQTTSync
from dangol_protocol import Consent, dump_payload
from dangol_protocol.topics import events_topic
from tests.broker import MosquittoBroker
from tests.edge.test_daemon import config
from tests.edge.test_sync import DEVICE, STORE, arrival, wait_for
from tests.edge.test_units_dec7b import _wrapper, box  # noqa: F401  (box: the fixture)

CONSENT = Consent(recorded_by="Jo", recorded_at="2026-12-07T10:00:00Z", text_version="2026-01")


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(3, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def queued(state) -> list[dict]:
    return [json.loads(r["payload"]) for r in state.pending(limit=100)]


def _flip_sealed_name(db, customer_id: str) -> None:
    """One damaged byte in the sealed display name (bit rot, a bad page): its authentication fails."""
    blob = bytearray(db.execute("SELECT display_name FROM customers WHERE id = ?", [customer_id]).fetchone()[0])
    blob[-1] ^= 1
    db.execute("UPDATE customers SET display_name = ? WHERE id = ?", [bytes(blob), customer_id])
    db.conn.commit()


# --- 1. an unreadable customer at the start ------------------------------------------------------------------


def test_an_unreadable_customer_does_not_stop_the_reports_of_the_others(tmp_path, caplog):
    """A name whose seal fails (GalleryKeyError) and a name that is not UTF-8 (ValueError): each logged with the id
    and kept; the readable activation after them is reported."""
    g = Gallery(tmp_path / "g.sqlite", "sha-a", FieldCipher(b"k" * 32)).open()
    state = StateStore(tmp_path / "state.sqlite").open()
    try:
        ids = []
        for seed, name in enumerate(["Sealed Broken", "Not Utf8", "Ana Lee"]):
            c = g.enroll("", unit(seed), status="pending", pending_ttl_s=3600)
            g.activate(c.id, name, CONSENT)
            ids.append(c.id)
        _flip_sealed_name(g.db, ids[0])
        g.db.execute("UPDATE customers SET display_name = ? WHERE id = ?", [b"\xff\xfeNot Utf8", ids[1]])
        g.db.conn.commit()
        device = uuid.uuid4()
        with caplog.at_level(logging.ERROR, logger="dangol_edge.activation_reports"):
            assert report_unreported_activations(g, Outbox(device, state), EventFactory(device)) == 1
        assert [(e["customer_id"], e["display_name"]) for e in queued(state)] == [(ids[2], "Ana Lee")]
        assert g.unreported_activations() == ids[:2], "the unreadable ones are kept for a later start"
        assert ids[0] in caplog.text and ids[1] in caplog.text
        assert "Broken" not in caplog.text and "Utf8" not in caplog.text, "a name (or part of one) was logged"
    finally:
        state.close()
        g.close()


def test_the_daemon_starts_with_an_unreadable_customer_awaiting_its_report(tmp_path, model_path, clips):
    home = tmp_path / "home"
    cfg = config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")})
    app = Appliance(cfg)
    app.start()
    try:
        c = app.gallery.enroll("", unit(7), status="pending", pending_ttl_s=3600)
        app.gallery.activate(c.id, "Mina Park", CONSENT)  # recorded; its report is not made (killed before it)
    finally:
        app.stop()
    db = sqlite3.connect(home / "gallery.sqlite")
    try:
        blob = bytearray(db.execute("SELECT display_name FROM customers WHERE id = ?", [c.id]).fetchone()[0])
        blob[-1] ^= 1
        db.execute("UPDATE customers SET display_name = ? WHERE id = ?", [bytes(blob), c.id])
        db.commit()
    finally:
        db.close()
    app = Appliance(cfg)
    app.start()  # raised GalleryKeyError: exit 2, never restarted by systemd
    try:
        assert app.gallery.unreported_activations() == [c.id]
        assert app.web is not None and app.workers
    finally:
        app.stop()


# --- 2. Outbox.retry and an erasure meanwhile -------------------------------------------------------------------


def test_an_erasure_during_a_retry_never_loses_another_held_event(tmp_path):
    state = StateStore(tmp_path / "state.sqlite").open()
    try:
        device = uuid.uuid4()
        events, outbox = EventFactory(device), Outbox(device, state)
        x, y = str(uuid.uuid4()), str(uuid.uuid4())
        a, b, c = events.arrival(x, 0.9, []), events.arrival(y, 0.8, []), events.arrival(None, None, [])
        saved = []
        state.db.execute("PRAGMA query_only = ON")  # the state file cannot be written: the outbox holds them
        for event, on_saved in ((a, None), (b, lambda: saved.append("b")), (c, None)):
            with pytest.raises(EventNotSaved):
                outbox.send(event, on_saved=on_saved)
        assert outbox.held == 3
        state.db.execute("PRAGMA query_only = OFF")
        enqueue = state.enqueue

        def erase_x_meanwhile(event_id, topic, payload):  # the staff page erases X while the retry writes X's event
            if event_id == str(a.event_id):
                outbox.erase([x])
            return enqueue(event_id, topic, payload)
        state.enqueue = erase_x_meanwhile
        outbox.retry()
        written = {e["event_id"] for e in queued(state)}
        assert str(b.event_id) in written, "the arrival of Y was popped unwritten"
        assert str(c.event_id) in written
        assert str(a.event_id) not in written, "X's arrival outlived X's erasure"
        assert saved == ["b"] and outbox.held == 0 and outbox._on_saved == {}
    finally:
        state.close()


# --- 3. more refused events than REFUSED_MAX ------------------------------------------------------------------------


def test_refused_events_beyond_the_bound_keep_their_back_off_and_are_logged_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(uplink, "REFUSED_MAX", 5)
    state = StateStore(tmp_path / "state.sqlite").open()
    other = uuid.uuid4()  # events on another device's topic: this login's ACL refuses each of them
    for _ in range(20):
        ev = arrival()
        state.enqueue(str(ev.event_id), events_topic(other), dump_payload(ev))
    acl = "user device\ntopic read dangol/v1/stores/#\n" + f"topic write {events_topic(DEVICE)}\n"
    with MosquittoBroker(tmp_path / "broker", users={"device": "pw"}, acl=acl) as b:
        cfg = MQTTConfig(url=b.url_for("device"), keepalive_s=5, reconnect_min_s=1, reconnect_max_s=2)
        sync = MQTTSync(cfg, DEVICE, STORE, state)
        with caplog.at_level(logging.WARNING, logger="dangol_edge.sync"):
            sync.start()
            try:
                assert sync.connected.wait(10)
                assert wait_for(lambda: sync.rejected_events >= 20, timeout=10)
                start = sync.rejected_events
                time.sleep(6)  # back-offs 1 + 2 s (4 s next): at most two more tries of each event
                assert sync.rejected_events - start <= 40, \
                    f"{sync.rejected_events - start} refusals in 6 s: the overflow is re-sent on every pass"
                assert sync.refused_held == 5 and state.outbox_depth() == 20
                overflow = [r for r in caplog.records if "more than 5 refused events" in r.getMessage()]
                assert len(overflow) == 1, [r.getMessage() for r in overflow]
            finally:
                sync.stop(timeout=1)
    state.close()


# --- 4. the wrapper and edge.env ------------------------------------------------------------------------------------


def _stub_venv(root):
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "dangol-edge"
    stub.write_text('#!/bin/sh\nenv\necho "args=$*"\n')
    stub.chmod(0o755)
    return venv


@pytest.mark.parametrize("lines, number, name, why", [
    (["DANGOL_A=plain", "DANGOL_B=back\\slash"], 2, "DANGOL_B", "backslash"),
    (['DANGOL_MQTT_URL="mqtts://dev:pa\\"ss@host:8883"'], 1, "DANGOL_MQTT_URL", "backslash"),
    (["# comment", 'DANGOL_C="multi', 'line"'], 2, "DANGOL_C", "close on the same line"),
    (["DANGOL_D='multi", "line'"], 1, "DANGOL_D", "close on the same line"),
    (['DANGOL_E="a"b'], 1, "DANGOL_E", "the whole value"),
])
def test_wrapper_refuses_a_line_systemd_reads_otherwise(box, lines, number, name, why):  # noqa: F811
    root, etc, state = box
    (etc / "edge.env").write_text("\n".join(lines) + "\n")
    proc = _wrapper(root, etc, state, _stub_venv(root), "nobody", "customers", "list")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "args=" not in proc.stdout, "the command ran with a value systemd would not give the daemon"
    assert f"line {number}: {name}: " in proc.stderr and why in proc.stderr, proc.stderr


def test_wrapper_passes_plain_and_quoted_values_as_systemd_does(box):  # noqa: F811
    root, etc, state = box
    (etc / "edge.env").write_text("DANGOL_A=val # not a comment\nDANGOL_B='single\\quoted'  \n"
                                  'DANGOL_C="dq $HOME"\nDANGOL_D=mqtts://dev:pa%5Css@host:8883\n')
    proc = _wrapper(root, etc, state, _stub_venv(root), "nobody", "customers", "list")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    for want in ("DANGOL_A=val # not a comment", "DANGOL_B=single\\quoted", "DANGOL_C=dq $HOME",
                 "DANGOL_D=mqtts://dev:pa%5Css@host:8883"):
        assert want in out, proc.stdout


# --- 5. a config file that is not UTF-8 -------------------------------------------------------------------------------


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_bytes(b'[display]\nconsent_version = "2026-01"\n# caf\xe9 (Latin-1)\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "not UTF-8" in str(err.value)
