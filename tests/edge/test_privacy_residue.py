"""A privacy review: what an erasure deletes must leave the device's files at once, not only the tables.

1. ``gallery.sqlite``: a deletion committed into the WAL, and the daemon's connection stays open for days, so the
   ``-wal`` file kept the old page versions — the erased customer's sealed name, templates and kept photos, which the
   device's own key opens — even after SQLite's automatic (PASSIVE) checkpoint; the same for the old key's values
   after ``rotate-key`` beside the running daemon. Every deletion of customer data is now followed by a
   ``wal_checkpoint(TRUNCATE)``; one a reader blocks is logged and finished by the next housekeeping pass; and
   ``secure_delete`` is set on every edge database, whatever the SQLite build's default.
2. ``state.sqlite``: a damaged file was moved aside (``state.sqlite.damaged-<time>``) and kept for ever with its
   sealed queued events (names, consent records); erasures never reached it. It is now deleted once its rows are
   copied; one whose salvage failed is kept at most :data:`~dangol_edge.state_recovery.ASIDE_KEPT` and is deleted
   by the next erasure.

Real SQLite files; fast (no face model)."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from dangol_edge.crypto import FieldCipher, new_key, parse_key
from dangol_edge.events import EventFactory
from dangol_edge.gallery import Gallery
from dangol_edge.sqlite import connect
from dangol_edge.state import StateStore
from dangol_edge.state_recovery import ASIDE_KEPT
from dangol_protocol import Consent, dump_payload
from tests.edge.test_state_privacy import _menu

NAME = "Seo-yeon Residue-Test"
PHOTO = b"\xff\xd8JPEG-face-crop-" + bytes(range(256)) * 4
TOPIC = "dangol/v1/devices/d/events"


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher(parse_key(new_key(), "test"))


def _raw(path: Path) -> bytes:
    """Every byte of the database file and its ``-wal``/``-shm`` files (and of anything else named after it)."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.iterdir()) if p.name.startswith(path.name))


def _units(seed: int, k: int) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((k, 128)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _consent() -> Consent:
    return Consent(recorded_by="Staff Jo", recorded_at=datetime.now(timezone.utc), text_version="2026-01")


def _sealed(g: Gallery, cid: str) -> list[bytes]:
    """The customer's sealed values as stored: name, greeting, embeddings, photos."""
    row = g.db.execute("SELECT display_name, greet_name FROM customers WHERE id = ?", [cid]).fetchone()
    values = [v for v in row if v is not None]
    for emb, photo in g.db.execute("SELECT embedding, photo FROM templates WHERE customer_id = ?", [cid]):
        values += [v for v in (emb, photo) if v is not None]
    assert len(values) >= 3
    return values


def _left(path: Path, sealed: list[bytes]) -> list[int]:
    """Which of ``sealed`` are still somewhere in the files (their indexes)."""
    raw = _raw(path)
    return [i for i, s in enumerate(sealed) if s in raw]


def _daemon_writes(g: Gallery, cid: str) -> None:
    """What a running daemon does next: visits, an automatic (PASSIVE) checkpoint, another visit (the WAL starts
    again from its beginning; what lay beyond stays in the file unless it is cut)."""
    for _ in range(5):
        g.touch(cid)
    g.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    g.touch(cid)


def _reader(path: Path) -> sqlite3.Connection:
    """Another process in the middle of a read (the daemon beside the command line): a TRUNCATE checkpoint waits."""
    con = sqlite3.connect(path)
    con.execute("BEGIN")
    con.execute("SELECT COUNT(*) FROM customers").fetchone()
    return con


# --- 1. the gallery ---------------------------------------------------------------------------------------------
def test_deleted_rows_are_zeroed_even_where_the_sqlite_build_does_not_by_default(tmp_path, cipher, monkeypatch):
    real = sqlite3.connect

    def secure_delete_off_by_default(*args, **kwargs):
        conn = real(*args, **kwargs)
        conn.execute("PRAGMA secure_delete = OFF")
        return conn

    monkeypatch.setattr(sqlite3, "connect", secure_delete_off_by_default)
    db = connect(tmp_path / "any.sqlite")
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == 0
    db.conn.close()
    path = tmp_path / "gallery.sqlite"
    g = Gallery(path, "0" * 64, cipher).open()
    other = g.enroll("Other Regular", _units(1, 2))
    c = g.enroll(NAME, _units(2, 2), consent=_consent(), photos=[PHOTO, PHOTO])
    sealed = _sealed(g, c.id)
    g.delete(c.id)
    assert [x.id for x in g.customers()] == [other.id]
    g.close()
    assert _left(path, sealed) == []


@pytest.mark.parametrize("how", ["staff erase", "retention", "expired sign-up"])
def test_an_erased_customer_leaves_the_files_at_once_while_the_daemon_runs(tmp_path, cipher, how):
    path = tmp_path / "gallery.sqlite"
    g = Gallery(path, "0" * 64, cipher).open()
    try:
        other = g.enroll("Other Regular", _units(1, 5))
        later = datetime.now(timezone.utc) + timedelta(days=31)
        if how == "expired sign-up":
            c = g.enroll("", _units(2, 3), status="pending", pending_ttl_s=60, photos=[PHOTO] * 3)
        else:
            c = g.enroll(NAME, _units(2, 5), consent=_consent(), photos=[PHOTO] * 5)
        sealed = _sealed(g, c.id)
        if how == "staff erase":
            g.delete(c.id)
        elif how == "retention":
            g.touch(other.id, later)
            assert g.expire_unseen(30, now=later) == [c.id]
        else:
            assert g.expire_pending(now=datetime.now(timezone.utc) + timedelta(minutes=2)) == [c.id]
        _daemon_writes(g, other.id)
        assert _left(path, sealed) == [], "the erased customer's sealed values are still in the files"
    finally:
        g.close()


def test_the_end_of_a_model_upgrade_leaves_no_old_template_in_the_files(tmp_path, cipher):
    path = tmp_path / "gallery.sqlite"
    g = Gallery(path, "a" * 64, cipher).open()
    try:
        c = g.enroll(NAME, _units(1, 3), consent=_consent())
        old = [r[0] for r in g.db.execute("SELECT embedding FROM templates WHERE customer_id = ?", [c.id])]
        g.model_sha256 = "b" * 64                                  # the new model
        g.add_templates(c.id, _units(2, 2), [0.9, 0.8])
        replaced = g.db.execute("SELECT embedding FROM templates WHERE quality < 0.85").fetchone()[0]
        g.add_templates(c.id, _units(3, 1), [0.95], max_per_model=2)  # a better face replaces the worst one
        assert g.wipe_due                                           # left to the next housekeeping pass
        assert g.drop_other_models() == 3
        _daemon_writes(g, c.id)
        assert _left(path, [*old, replaced]) == []
        assert not g.wipe_due
    finally:
        g.close()


def test_rotate_key_beside_the_running_daemon_leaves_no_value_under_the_old_key(tmp_path, cipher):
    path = tmp_path / "gallery.sqlite"
    daemon = Gallery(path, "0" * 64, cipher).open()                # the running daemon's connection
    try:
        c = daemon.enroll(NAME, _units(1, 3), consent=_consent(), photos=[PHOTO] * 3, greet_name="Seo")
        sealed = _sealed(daemon, c.id)
        with Gallery(path, "0" * 64, cipher) as cli:               # dangol-edge rotate-key
            assert cli.rotate_key(FieldCipher(parse_key(new_key(), "new"))) == 8
        assert _left(path, sealed) == []
    finally:
        daemon.close()


def test_a_checkpoint_a_reader_blocks_is_logged_and_finished_by_the_next_housekeeping_pass(tmp_path, cipher,
                                                                                          caplog):
    path = tmp_path / "gallery.sqlite"
    g = Gallery(path, "0" * 64, cipher).open()
    g.db.execute("PRAGMA busy_timeout = 50")                       # (5 s by default)
    try:
        c = g.enroll(NAME, _units(1, 3), consent=_consent(), photos=[PHOTO] * 3)
        sealed = _sealed(g, c.id)
        reader = _reader(path)
        with caplog.at_level(logging.WARNING, logger="dangol_edge"):
            g.delete(c.id)                                         # the erasure itself is done
        assert g.customers() == [] and g.wipe_due
        assert "another connection is reading" in caplog.text and str(path) in caplog.text
        assert _left(path, sealed) != []
        reader.rollback()
        reader.close()
        with caplog.at_level(logging.INFO, logger="dangol_edge"):
            assert g.expire_pending() == []                        # the next housekeeping pass
        assert not g.wipe_due and "1 failed" in caplog.text
        assert _left(path, sealed) == []
    finally:
        g.close()


def test_an_erasure_from_the_command_line_a_reader_blocks_is_finished_by_the_daemon(tmp_path, cipher, caplog):
    path = tmp_path / "gallery.sqlite"
    daemon = Gallery(path, "0" * 64, cipher).open()
    try:
        assert daemon.expire_pending() == [] and not daemon.wipe_due  # a housekeeping pass
        cli = Gallery(path, "0" * 64, cipher).open()
        cli.db.execute("PRAGMA busy_timeout = 50")
        c = cli.enroll(NAME, _units(1, 3), consent=_consent(), photos=[PHOTO] * 3)
        sealed = _sealed(cli, c.id)
        reader = _reader(path)
        with caplog.at_level(logging.WARNING, logger="dangol_edge"):
            cli.delete(c.id)                                       # dangol-edge customers delete
            cli.close()                                            # tried again on close: still blocked
        assert caplog.text.count("another connection is reading") == 1  # logged once, not per try
        reader.rollback()
        reader.close()
        assert _left(path, sealed) != []
        assert daemon.expire_pending() == []                       # its next pass notices the other process's write
        assert _left(path, sealed) == []
    finally:
        daemon.close()


# --- the state file -----------------------------------------------------------------------------------------------
def _queue_enrolment(st: StateStore, cid: str) -> tuple[str, bytes]:
    """An enrolment event about ``cid`` (name and consent record) queued in ``st``; (event id, its sealed row)."""
    ev = EventFactory(str(uuid.uuid4())).activated(cid, "Jae-won Kim-Aside", _consent())
    assert st.enqueue(str(ev.event_id), TOPIC, dump_payload(ev))
    return str(ev.event_id), st.db.execute("SELECT sealed FROM outbox WHERE event_id = ?",
                                           [str(ev.event_id)]).fetchone()[0]


def test_a_state_erasure_a_reader_blocks_is_finished_by_the_next_housekeeping_pass(tmp_path, cipher, caplog):
    path = tmp_path / "state.sqlite"
    st = StateStore(path, cipher=cipher).open()
    st.db.execute("PRAGMA busy_timeout = 50")
    try:
        cid = str(uuid.uuid4())
        assert st.put_menu(_menu(cid, "Jae-won Kim-Aside"))
        _, sealed = _queue_enrolment(st, cid)
        name = st.db.execute("SELECT display_name FROM menus WHERE customer_id = ?", [cid]).fetchone()[0]
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM outbox").fetchone()
        with caplog.at_level(logging.WARNING, logger="dangol_edge"):
            assert st.erase_customers([cid]) == 1
        assert st.wipe_due and "another connection is reading" in caplog.text
        reader.rollback()
        reader.close()
        st.prune_sent()                                            # the next housekeeping pass
        assert not st.wipe_due and _left(path, [sealed, name]) == []
    finally:
        st.close()


def _damage(path: Path, *tables: str) -> None:
    """Overwrite the root pages of ``tables`` in the file (all committed pages moved out of the WAL first)."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = con.execute("PRAGMA page_size").fetchone()[0]
    roots = [con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [t]).fetchone()[0] for t in tables]
    con.close()
    with open(path, "r+b") as f:
        for root in roots:
            f.seek((root - 1) * size)
            f.write(b"\xff" * size)


def _asides(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".damaged-" in p.name)


def _damaged_state(path: Path, cipher: FieldCipher, *tables: str) -> tuple[str, str, bytes]:
    """A state file with a menu and an enrolment about one customer, then damaged; (customer, event id, sealed)."""
    cid = str(uuid.uuid4())
    with StateStore(path, cipher=cipher) as st:
        assert st.put_menu(_menu(cid, "Jae-won Kim-Aside"))
        event_id, sealed = _queue_enrolment(st, cid)
    _damage(path, *tables)
    return cid, event_id, sealed


def test_a_damaged_state_file_is_deleted_once_its_rows_are_copied(tmp_path, cipher, caplog):
    path = tmp_path / "state.sqlite"
    cid, event_id, sealed = _damaged_state(path, cipher, "menus")
    with caplog.at_level(logging.INFO, logger="dangol_edge"):
        st = StateStore(path, cipher=cipher).open(recover=True)   # the daemon's start
    try:
        assert [e["event_id"] for e in st.pending()] == [event_id]  # the queue survives
        assert _asides(tmp_path) == []                             # the damaged copy, its -wal and -shm: gone
        assert "malformed" in caplog.text and "1 outbox rows" in caplog.text and "deleted" in caplog.text
        st.erase_customers([cid])                                  # later the customer withdraws
    finally:
        st.close()
    assert sealed not in b"".join(p.read_bytes() for p in tmp_path.iterdir())


def test_a_damaged_copy_whose_salvage_failed_is_kept_for_a_bounded_time(tmp_path, cipher, caplog):
    path = tmp_path / "state.sqlite"
    _, _, sealed = _damaged_state(path, cipher, "menus", "outbox")
    with caplog.at_level(logging.ERROR, logger="dangol_edge"):
        st = StateStore(path, cipher=cipher).open(recover=True)
    try:
        assert st.pending() == []
        kept = _asides(tmp_path)
        assert kept and "lost outbox" in caplog.text and "kept" in caplog.text
        st.prune_sent()                                            # a housekeeping pass: younger than ASIDE_KEPT
        assert _asides(tmp_path) == kept
        stamp = (datetime.now(timezone.utc) - ASIDE_KEPT - timedelta(minutes=1)).strftime("%Y%m%dT%H%M%S")
        for name in kept:                                          # as if moved aside a day ago
            old = name.split(".damaged-")[0] + ".damaged-" + stamp + name.split(".damaged-")[1][15:]
            (tmp_path / name).rename(tmp_path / old)
        st.prune_sent()
        assert _asides(tmp_path) == []
        assert sealed not in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    finally:
        st.close()


def test_an_erasure_deletes_a_kept_damaged_copy_at_once(tmp_path, cipher):
    path = tmp_path / "state.sqlite"
    cid, _, sealed = _damaged_state(path, cipher, "menus", "outbox")
    st = StateStore(path, cipher=cipher).open(recover=True)
    try:
        assert _asides(tmp_path)                                   # kept: its outbox could not be read
        st.erase_customers([cid])                                  # the customer withdraws: no copy may keep them
        assert _asides(tmp_path) == []
    finally:
        st.close()
    assert sealed not in b"".join(p.read_bytes() for p in tmp_path.iterdir())
