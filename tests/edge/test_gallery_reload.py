"""The running daemon's gallery follows writes made by another process: ``dangol-edge enroll`` adds a regular who is
greeted without a restart, ``dangol-edge customers delete`` stops them being matched at once (privacy) and also
drops their cached menu (sealed first name) from state.sqlite. Real int8 SFace + YuNet, the real photos and the
Hamilton clip, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import pytest

from dangol_edge.cli import main
from dangol_edge.daemon import Appliance
from dangol_edge.embed import file_sha256
from dangol_edge.enrol import sample_from_photo
from dangol_edge.gallery import Gallery
from dangol_edge.state import StateStore
from dangol_protocol import Consent, Menu, MenuPick
from tests.edge.test_daemon import config
from tests.edge.test_sync import wait_for

CLI = [sys.executable, "-m", "dangol_edge.cli"]


def cli(*argv: str) -> dict:
    """Run ``dangol-edge`` in its own process (the environment's DANGOL_HOME); its JSON output."""
    r = subprocess.run(CLI + list(argv), env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def lin_menu(customer_id: str) -> Menu:
    return Menu(store_id=uuid.uuid4(), customer_id=uuid.UUID(customer_id), display_name="Lin-Manuel Miranda",
                model_version="m1", generated_at=datetime.now(timezone.utc),
                items=[MenuPick(item_id="latte", score=1.0)])


@pytest.fixture
def door(edge_env, model_path, pipeline, clips):
    """The daemon's view of the gallery: one open connection (as :class:`Appliance` holds it) with Barack Obama
    active, the search matrix already loaded; ``(gallery, probes)`` with probes of Obama and Lin-Manuel Miranda
    from photos not enrolled."""
    g = Gallery(edge_env / "gallery.sqlite", file_sha256(model_path)).open()
    g.enroll("Barack Obama", sample_from_photo(clips / "obama.jpg", pipeline).embedding[None],
             consent=Consent(recorded_by="test", recorded_at=datetime.now(timezone.utc), text_version="1"))
    probes = {"obama": sample_from_photo(clips / "obama2.jpg", pipeline).embedding,
              "lin": sample_from_photo(clips / "lin-manuel-miranda.png", pipeline).embedding}
    assert g.size == 1  # loaded now: only a write the gallery notices can change it
    yield g, probes
    g.close()


def test_cli_enrol_and_delete_in_another_process_reach_the_open_gallery(door, clips):
    g, probes = door
    assert not g.match(probes["lin"], 0.5, 0.05)[0].accepted   # not a regular yet
    lin = cli("enroll", "--name", "Lin-Manuel Miranda", "--image", str(clips / "lin-manuel-miranda.png"))
    lin = lin["enrolled"]["id"]
    # the very next search sees the new regular (no restart, no write through this connection)
    assert g.size == 2
    m = g.match(probes["lin"], 0.5, 0.05)[0]
    assert m.customer_id == lin and m.accepted
    # erased from the command line: the next search no longer matches them, not even as a runner-up
    assert cli("customers", "delete", lin)["deleted"] == lin
    m = g.match(probes["lin"], 0.0, 0.0)[0]
    assert m.customer_id != lin and g.size == 1
    assert g.match(probes["obama"], 0.3, 0.05)[0].accepted  # the others still are


def test_reads_and_own_writes_do_not_reload_needlessly(door, edge_env, model_path, capsys):
    g, probes = door
    loads = []
    real = g.matrix_for
    g.matrix_for = lambda sha: loads.append(sha) or real(sha)
    for _ in range(50):
        g.match(probes["obama"], 0.3, 0.05)
    reader = Gallery(edge_env / "gallery.sqlite", file_sha256(model_path)).open()   # another connection only reads
    assert [c.display_name for c in reader.customers()] == ["Barack Obama"] and reader.size == 1
    g.match(probes["obama"], 0.3, 0.05)
    assert loads == []
    g.touch(g.customers()[0].id)   # this connection's own write that changes no template: no reload either
    g.match(probes["obama"], 0.3, 0.05)
    assert loads == []
    reader.delete(g.customers()[0].id)   # another connection's erasure: reloaded at the next search
    assert g.match(probes["obama"], 0.0, 0.0)[0].customer_id is None and len(loads) == 1
    reader.close()
    g.close()   # reopened: a new connection's data_version counts afresh, and the matrix is read again
    g.open()
    assert g.size == 0 and len(loads) == 2


def test_cli_delete_drops_the_cached_menu(edge_env, capsys, clips):
    assert main(["enroll", "--name", "Lin-Manuel Miranda", "--image", str(clips / "lin-manuel-miranda.png")]) == 0
    lin = json.loads(capsys.readouterr().out)["enrolled"]["id"]
    with StateStore(edge_env / "state.sqlite") as st:
        st.put_menu(lin_menu(lin))
        assert st.menu(lin).display_name == "Lin-Manuel"
    assert main(["customers", "delete", lin]) == 0
    with StateStore(edge_env / "state.sqlite") as st:
        assert st.menu(lin) is None
        assert st.db.execute("SELECT COUNT(*) FROM menus").fetchone()[0] == 0


def test_the_running_daemon_greets_a_cli_enrolment_and_forgets_a_cli_erasure(edge_env, model_path, clips, pipeline):
    """``dangol-edge run`` on the looping Hamilton clip (no cool-down: every visit is an arrival), the CLI beside it."""
    cfg = config(edge_env, model_path, clips, camera={"realtime": True, "loop": True}, tracker={"cooldown_s": 0},
                 display={"welcome_s": 300})  # a welcome stays until something takes it off
    app = Appliance(cfg)
    app.start()
    try:
        assert wait_for(lambda: app.stats.frames_processed > 30, timeout=60)
        assert app.gallery.size == 0 and app.stats.arrivals == 0
        lin = cli("enroll", "--name", "Lin-Manuel Miranda", "--image", str(clips / "lin-manuel-miranda.png"))
        lin = lin["enrolled"]["id"]
        assert wait_for(lambda: app.stats.arrivals > 0, timeout=45), "a regular enrolled from the CLI is greeted"
        app.state.put_menu(lin_menu(lin))

        def arrivals_of_lin() -> int:
            return sum(1 for e in (json.loads(p["payload"]) for p in app.state.pending(10_000))
                       if e["kind"] == "arrival" and e["customer_id"] == lin)

        assert arrivals_of_lin() >= 1

        def welcome_of_lin() -> bool:
            shown = app.screen.snapshot()
            return shown["screen"] == "welcome" and shown.get("customer_id") == lin

        assert wait_for(welcome_of_lin, timeout=30)
        cli("customers", "delete", lin)
        erased = time.monotonic()
        assert wait_for(lambda: not welcome_of_lin(), timeout=2), "the erased customer's welcome leaves the door"
        probe = sample_from_photo(clips / "lin-manuel-miranda.png", pipeline).embedding
        assert wait_for(lambda: app.gallery.size == 0, timeout=2), "the daemon stops matching within 2 s"
        assert app.gallery.match(probe, 0.0, 0.0)[0].customer_id is None
        assert app.state.menu(lin) is None   # the cached menu with the first name went with the CLI's erasure
        time.sleep(max(0.0, erased + 1.0 - time.monotonic()))   # a decision already queued may still land
        before, frames = arrivals_of_lin(), app.stats.frames_processed
        assert wait_for(lambda: app.stats.frames_processed > frames + 60, timeout=60)  # two loops of the clip
        assert arrivals_of_lin() == before, "an erased customer is never greeted again"
    finally:
        app.stop()


def test_cli_enrolment_under_an_erased_id_accepts_its_menus_again(edge_env, clips):
    """The box refuses menus of customers erased on it (:mod:`dangol_edge.state_erased`); an operator who enrols
    that customer again under the same cloud id (``--customer-id``) lifts it, so their menu is cached again."""
    cid = str(uuid.uuid4())
    with StateStore(edge_env / "state.sqlite") as st:
        st.erase_customers([cid])
        assert not st.put_menu(lin_menu(cid))
    cli("enroll", "--name", "Lin-Manuel Miranda", "--image", str(clips / "lin-manuel-miranda.png"),
        "--customer-id", cid)
    with StateStore(edge_env / "state.sqlite") as st:
        assert not st.is_erased(cid) and st.put_menu(lin_menu(cid)) and st.menu(cid).display_name == "Lin-Manuel"


def test_a_cli_erasure_noticed_under_the_gallery_lock_does_not_deadlock_a_model_upgrade(tmp_path):
    """A reviewer's interleaving (real Gallery, ModelUpgrade, Screen and the daemon's handler): the staff page's
    sign-up activation reads the gallery size under the gallery's lock and so notices the CLI's erasure of the
    customer on screen, while housekeeping's upgrade check holds the upgrade's lock and reads the gallery. Forgetting
    the customer on the noticing thread needed the upgrade's lock: both threads hung for good."""
    import threading
    import types

    import numpy as np

    from dangol_edge.screen import Screen
    from dangol_edge.upgrade import ModelUpgrade
    from tests.edge.test_gallery_consent import consent

    def emb(seed: int) -> np.ndarray:
        v = np.random.default_rng(seed).normal(size=(3, 128)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    sha = "a" * 64
    g = Gallery(tmp_path / "gallery.sqlite", sha).open()
    try:
        mina = g.enroll("Mina Park", emb(1), consent=consent())
        pending = g.enroll("Jae", emb(2), status="pending", pending_ttl_s=3600)
        assert g.size == 3
        upgrade = ModelUpgrade(g, types.SimpleNamespace(sha256="b" * 64, model_path=tmp_path / "old.tflite"), 1e-3,
                               0.05, 30)
        app = Appliance.__new__(Appliance)  # the daemon's handler on real parts, without a camera
        app.screen, app.gallery, app.stats = Screen(), g, types.SimpleNamespace(storage="ok")
        app.recognizer = types.SimpleNamespace(tracker=types.SimpleNamespace(forget=lambda c: None), upgrade=upgrade)
        app._outside_lock, app._outside_running, app._outside_again = threading.Lock(), False, False
        g.on_outside_write = app._on_outside_write
        app.screen.show_welcome("Mina", [], mina.id, 30)
        cli = Gallery(tmp_path / "gallery.sqlite", sha).open()  # the CLI's connection erases Mina
        cli.delete(mina.id)
        cli.close()
        go = threading.Event()

        def check():  # the activation check, under the gallery's lock, reads the size a moment later
            go.wait()
            time.sleep(0.2)
            return g.size

        web = threading.Thread(target=lambda: g.activate(pending.id, "Jae", consent(), check=check), daemon=True)
        housekeeping = threading.Thread(target=lambda: (go.wait(), upgrade.check()), daemon=True)
        web.start()
        time.sleep(0.1)
        housekeeping.start()
        go.set()
        web.join(10)
        housekeeping.join(10)
        assert not web.is_alive() and not housekeeping.is_alive(), "deadlock"
        assert wait_for(lambda: app.screen.snapshot()["screen"] == "house", timeout=5)  # her welcome left
    finally:
        g.close()
