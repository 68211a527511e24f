"""A damaged ``state.sqlite`` (one bad page, as after SD-card damage) kept the daemon from ever starting: every
start failed on it until systemd gave up, the door screen stayed dark (a reviewer's run: exit 1, twice). The daemon
now moves the file aside, keeps what it can read of the queued events and the erased customers, and starts; the
command line still refuses the damaged file. Real SQLite files, the real daemon on the real Hamilton clip."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from dangol_edge.crypto import FieldCipher, new_key, parse_key
from dangol_edge.daemon import Appliance
from dangol_edge.state import StateError, StateStore
from tests.edge.test_daemon import catalogue_payload, config
from tests.edge.test_state_privacy import _menu
from tests.edge.test_sync import wait_for


def _damage_menus(path) -> None:
    """Overwrite the ``menus`` table's root page in the database file (every committed page moved out of the WAL
    first, so no newer copy of it there hides the damage); checks that SQLite now finds the file damaged."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'menus'").fetchone()[0]
    con.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff" * page)
    con = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            con.execute("SELECT payload FROM menus").fetchall()
    finally:
        con.close()


def _filled_state(path, cipher) -> tuple[str, str]:
    """A state file with a catalogue, a menu, one queued event and one erased customer; ``(erased id, menu id)``."""
    erased, kept = str(uuid.uuid4()), str(uuid.uuid4())
    with StateStore(path, cipher=cipher) as st:
        st.put_catalogue(catalogue_payload())
        assert st.put_menu(_menu(kept, "Mina Park")) and st.put_menu(_menu(erased, "Jae Kim"))
        st.enqueue("ev-1", "dangol/v1/devices/d/events", '{"kind": "arrival"}')
        st.erase_customers([erased])
    _damage_menus(path)
    return erased, kept


def test_the_daemons_open_moves_a_damaged_file_aside_and_keeps_events_and_erasures(tmp_path):
    cipher = FieldCipher(parse_key(new_key(), "test"))
    path = tmp_path / "state.sqlite"
    erased, kept = _filled_state(path, cipher)
    with pytest.raises(StateError, match="malformed|not a database"):   # the command line: refused, untouched
        StateStore(path, cipher=cipher).open()
    st = StateStore(path, cipher=cipher).open(recover=True)
    try:
        assert st.recovered_from is not None and st.recovered_from.name.startswith("state.sqlite.damaged-")
        assert not st.recovered_from.exists()          # deleted once its rows were copied (test_privacy_residue.py)
        assert [e["event_id"] for e in st.pending()] == ["ev-1"]              # the queue survives
        assert st.is_erased(erased) and not st.put_menu(_menu(erased, "Jae Kim"))  # and so do the erasures
        assert st.menu(kept) is None and st.catalogue() is None               # the cache comes from the broker
        assert st.put_menu(_menu(kept, "Mina Park")) and st.menu(kept).display_name == "Mina"
    finally:
        st.close()
    with StateStore(path, cipher=cipher) as again:                            # the fresh file opens normally
        assert [e["event_id"] for e in again.pending()] == ["ev-1"]


def test_the_daemon_starts_on_a_damaged_state_file(edge_env, model_path, clips):
    path = edge_env / "state.sqlite"
    _filled_state(path, FieldCipher.from_environment())
    app = Appliance(config(edge_env, model_path, clips, camera={"loop": True}))
    app.start()
    try:
        assert wait_for(lambda: app.stats.frames_processed > 10, timeout=60), "the door runs"
        assert app.state.recovered_from is not None and "ev-1" in [e["event_id"] for e in app.state.pending()]
    finally:
        app.stop()
