"""An erasure takes the customer out of the event outbox too (README, "Privacy and security"): every queued row
about them, sent or not, goes in the same step as their gallery rows — except the ``erasure-done`` the cloud needs —,
an event about them made before the erasure is never queued after it, and nothing of theirs reaches the cloud after
the erasure. Events about a customer are sealed with the gallery key while they wait; an acknowledged event is
deleted. The real daemon and staff page, a real Mosquitto, the real CLI."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dangol_edge.daemon import Appliance
from dangol_protocol import Consent
from tests.broker import MosquittoBroker
from tests.edge.test_daemon import DEVICE, config
from tests.edge.test_sync import Cloud, wait_for

SURNAME, STAFF = "Zyxwvu", "Staffname"   # what must never be readable in state.sqlite


def raw_state(home: Path) -> bytes:
    """Every byte of the state database and its WAL/shared-memory files."""
    return b"".join(p.read_bytes() for p in home.iterdir() if p.name.startswith("state.sqlite"))


def unit(seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((1, 128)).astype(np.float32)
    return e / np.linalg.norm(e)


def queued(app) -> list[dict]:
    """The outbox's unacknowledged events as the cloud would receive them."""
    return [json.loads(e["payload"]) for e in app.state.pending(1000)]


def about(events: list[dict], customer_id: str) -> list[tuple]:
    """(kind, status) of the events about ``customer_id``: arrivals, enrolments, and erasure confirmations naming it."""
    return [(e["kind"], e.get("status")) for e in events
            if e.get("customer_id") == customer_id or customer_id in e.get("customer_ids", [])]


class Staff:
    """The daemon's staff page through Flask's test client (the real app, its CSRF tokens)."""

    def __init__(self, app: Appliance):
        self.app = app
        self.web = app.web.app.test_client()

    def _token(self) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.web.get("/staff").get_data(as_text=True)).group(1)

    def sign_up(self, name: str, staff: str, seed: int) -> str:
        """A door sign-up (pending, as the button stores it) that staff activate; returns its id."""
        c = self.app.gallery.enroll("", unit(seed), status="pending", pending_ttl_s=3600)
        r = self.web.post(f"/staff/activate/{c.id}", data={"csrf_token": self._token(), "display_name": name,
                                                         "staff": staff, "consent": "yes"})
        assert r.status_code == 302 and self.app.gallery.customer(c.id).status == "active"
        return c.id

    def erase(self, customer_id: str) -> None:
        r = self.web.post(f"/staff/erase/{customer_id}", data={"csrf_token": self._token()})
        assert r.status_code == 302
        flashed = self.web.get("/staff").get_data(as_text=True)
        assert "Erased" in flashed and "cannot write" not in flashed


def test_a_staff_erasure_takes_every_queued_event_of_the_customer_and_their_names(tmp_path, model_path, clips):
    """Offline box (events wait): an enrolment carries the full name and the staff member's name; neither is ever
    readable in state.sqlite, and the erasure removes the enrolment and the arrivals, keeps the confirmation and
    somebody else's events, and refuses an arrival made before the erasure but queued after it."""
    home = tmp_path / "home"
    app = Appliance(config(home, model_path, clips, camera={"source": str(clips / "obama.jpg")}))
    app.start()
    try:
        staff = Staff(app)
        mina = staff.sign_up(f"Mina {SURNAME} Park", f"Jo {STAFF}", seed=1)
        enrolment = [e for e in queued(app) if e.get("customer_id") == mina and e["kind"] == "enrolment"]
        assert [(e["display_name"], e["consent"]["recorded_by"]) for e in enrolment] == [
            (f"Mina {SURNAME} Park", f"Jo {STAFF}")], "the cloud still gets the enrolment as staff recorded it"
        raw = raw_state(home)
        assert SURNAME.encode() not in raw and STAFF.encode() not in raw, "the outbox keeps names in clear"
        bo = staff.sign_up("Bo Kim", "Jo", seed=2)
        app.outbox.send(app.events.arrival(mina, 0.8, ["latte"]))
        app.outbox.send(app.events.arrival(bo, 0.7, ["scone"]))
        late = app.events.arrival(mina, 0.9, ["latte"])   # decided just before the erasure ...
        assert about(queued(app), mina) == [("enrolment", "active"), ("arrival", None)]

        staff.erase(mina)

        assert about(queued(app), mina) == [("erasure-done", None)], "the erasure left events of the customer"
        assert about(queued(app), bo) == [("enrolment", "active"), ("arrival", None)], "somebody else's events went"
        app.outbox.send(late)   # ... and handed to the outbox just after it
        assert about(queued(app), mina) == [("erasure-done", None)], "an arrival made before the erasure was queued"
        app.outbox.send(app.events.arrival(bo, 0.7, []))   # events made after it are queued as ever
        assert about(queued(app), bo)[-1] == ("arrival", None)
    finally:
        app.stop()
    raw = raw_state(home)
    assert SURNAME.encode() not in raw and STAFF.encode() not in raw
    con = sqlite3.connect(home / "state.sqlite")
    try:
        rows = con.execute("SELECT event_id FROM outbox WHERE customer_id = ?", [mina]).fetchall()
    finally:
        con.close()
    assert rows == []


def test_acknowledged_events_are_deleted_and_an_erased_customers_unsent_events_never_reach_the_cloud(
        tmp_path, model_path, clips):
    """Connected, an acknowledged enrolment leaves nothing behind; with the broker down, a sign-up, its arrival
    and the staff's erasure queue up: after reconnecting the cloud gets the erasure's confirmation and nothing
    else about that customer."""
    home = tmp_path / "home"
    broker = MosquittoBroker(tmp_path / "broker", persistence=True).start()   # the cloud's session survives
    port = broker.port
    cloud = Cloud(broker)
    app = Appliance(config(home, model_path, clips, f"mqtt://{broker.host}:{port}",
                           camera={"source": str(clips / "obama.jpg")}))
    app.start()
    try:
        assert app.sync.connected.wait(20)
        staff = Staff(app)
        mina = staff.sign_up(f"Mina {SURNAME} Park", f"Jo {STAFF}", seed=1)
        assert wait_for(lambda: [e["kind"] for e in cloud.events() if e.get("customer_id") == mina] == ["enrolment"],
                        timeout=15)
        assert wait_for(lambda: app.state.outbox_depth() == 0, timeout=10)
        left = app.state.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        assert left == 0, "acknowledged events are kept (with their payload)"

        broker.stop()
        assert wait_for(lambda: not app.sync.connected.is_set(), timeout=15)
        bo = staff.sign_up(f"Bo {SURNAME}", f"Kim {STAFF}", seed=2)
        app.outbox.send(app.events.arrival(bo, 0.8, ["latte"]))
        staff.erase(bo)
        assert about(queued(app), bo) == [("erasure-done", None)]

        broker.start(port=port)
        assert app.sync.connected.wait(20)
        assert wait_for(lambda: any(bo in e.get("customer_ids", []) for e in cloud.events()), timeout=20)
        assert wait_for(lambda: app.state.outbox_depth() == 0, timeout=10)
        got = [(e["kind"], e.get("erasure_id")) for e in cloud.events()
               if e.get("customer_id") == bo or bo in e.get("customer_ids", [])]
        assert got == [("erasure-done", None)], f"the cloud got events of an erased customer: {got}"
    finally:
        app.stop()
        cloud.close()
        broker.stop()
    raw = raw_state(home)
    assert SURNAME.encode() not in raw and STAFF.encode() not in raw


def test_cli_delete_takes_the_customers_events_and_menu_out_of_state(edge_env, capsys, model_path, monkeypatch):
    """``dangol-edge customers delete``: the cached menu and every queued event about the customer go with the
    gallery rows; the erasure is still reported and others' events stay."""
    from dangol_edge.cli import main
    from dangol_edge.embed import file_sha256
    from dangol_edge.events import EventFactory, Outbox
    from dangol_edge.gallery import Gallery
    from dangol_edge.state import StateStore

    device, store = uuid.uuid4(), uuid.uuid4()
    monkeypatch.setenv("DANGOL_DEVICE__ID", str(device))
    consent = Consent(recorded_by=f"Jo {STAFF}", recorded_at=datetime.now(timezone.utc), text_version="1")
    with Gallery(edge_env / "gallery.sqlite", file_sha256(model_path)) as g:
        mina = g.enroll(f"Mina {SURNAME} Park", unit(1), consent=consent).id
        bo = g.enroll("Bo Kim", unit(2), consent=consent).id
    events = EventFactory(device)
    with StateStore(edge_env / "state.sqlite") as st:
        outbox = Outbox(device, st)
        outbox.send(events.activated(mina, f"Mina {SURNAME} Park", consent))
        outbox.send(events.arrival(mina, 0.8, ["latte"]))
        outbox.send(events.arrival(bo, 0.8, ["latte"]))
        st.put_menu({"schema": "menu/1", "store_id": str(store), "customer_id": mina, "display_name": "Mina",
                     "model_version": "m", "generated_at": datetime.now(timezone.utc).isoformat(),
                     "items": [{"item_id": "latte", "score": 1}]})
        sent = outbox.state.pending()[0]["event_id"]
        st.mark_sent(sent)   # the enrolment was acknowledged by the broker
    assert main(["customers", "delete", mina]) == 0
    assert json.loads(capsys.readouterr().out)["cloud_notified"] is True
    with StateStore(edge_env / "state.sqlite") as st:
        left = [json.loads(e["payload"]) for e in st.pending()]
        assert st.menu(mina) is None, "the CLI erasure left the customer's cached menu"
        rows = st.db.execute("SELECT COUNT(*) FROM outbox WHERE customer_id = ?", [mina]).fetchone()[0]
    assert [(e["kind"], e.get("customer_id"), e.get("customer_ids")) for e in left] == [
        ("arrival", bo, None), ("erasure-done", None, [mina])]
    assert rows == 0
    raw = raw_state(edge_env)
    assert SURNAME.encode() not in raw and STAFF.encode() not in raw


def test_queued_events_of_an_older_version_are_sealed_and_acknowledged_ones_dropped_on_open(tmp_path):
    """A state file written before sealing: its acknowledged rows (full payloads, kept up to 10,000) go and its
    unsent events about a customer are sealed when the file is opened, still deliverable; ``rotate-key`` re-seals
    them under the new key."""
    from dangol_edge.crypto import FieldCipher, new_key, parse_key
    from dangol_edge.events import EventFactory
    from dangol_edge.state import StateStore
    from dangol_protocol import dump_payload

    path = tmp_path / "state.sqlite"
    StateStore(path).open().close()
    events, cid = EventFactory(DEVICE), str(uuid.uuid4())
    consent = Consent(recorded_by=f"Jo {STAFF}", recorded_at=datetime.now(timezone.utc), text_version="1")
    old = [events.activated(cid, f"Mina {SURNAME} Park", consent), events.activated(cid, f"Mina {SURNAME}", consent)]
    con = sqlite3.connect(path)   # what the previous version wrote: JSON in clear, acknowledged rows kept
    for ev, sent in zip(old, ("2026-01-01T00:00:00+00:00", None)):
        con.execute("INSERT INTO outbox (event_id, topic, payload, created_at, sent_at) VALUES (?, ?, ?, ?, ?)",
                    [str(ev.event_id), "t", dump_payload(ev).decode(), "2026-01-01T00:00:00+00:00", sent])
    con.commit()
    con.close()
    with StateStore(path) as st:
        assert [json.loads(e["payload"])["display_name"] for e in st.pending()] == [f"Mina {SURNAME}"]
        assert st.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
        new = FieldCipher(parse_key(new_key(), "test"))
        st.rotate_key(new)
    assert SURNAME.encode() not in raw_state(tmp_path) and STAFF.encode() not in raw_state(tmp_path)
    with StateStore(path, cipher=new) as st:
        assert [json.loads(e["payload"])["display_name"] for e in st.pending()] == [f"Mina {SURNAME}"]
