"""Issue 9, row 12 (edge side): ``state.sqlite`` held every regular's full name from the retained menus in
plain text, readable by anyone (mode 0644), undoing the gallery's encryption. Now the file is 0600 and holds
the first name only, sealed under the gallery key like the gallery's names."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import uuid
from datetime import datetime, timezone

import pytest

from dangol_edge.crypto import FieldCipher, GalleryKeyError, new_key, parse_key
from dangol_edge.state import StateStore


def _menu(customer_id: str, name: str | None, generated: str = "2026-12-01T08:00:00+00:00") -> dict:
    return {"schema": "menu/1", "store_id": str(uuid.uuid4()), "customer_id": customer_id, "display_name": name,
            "model_version": "m1", "generated_at": generated, "items": [{"item_id": "latte", "score": 1.0,
                                                                          "reasons": []}]}


def _raw_bytes(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher(parse_key(new_key(), "test"))


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_file_is_private_and_names_are_sealed(tmp_path, cipher):
    old = os.umask(0o022)  # the usual umask: a plain sqlite3.connect would make the file 0644
    try:
        path = tmp_path / "state.sqlite"
        with StateStore(path, cipher=cipher) as st:
            cid = str(uuid.uuid4())
            assert st.put_menu(_menu(cid, "Mina Park"))
            assert st.menu(cid).display_name == "Mina"
            modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
            raw = _raw_bytes(path)
    finally:
        os.umask(old)
    assert modes and set(modes.values()) == {0o600}, modes
    assert b"Mina" not in raw and b"Park" not in raw


def test_without_a_key_no_name_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("DANGOL_GALLERY_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("DANGOL_GALLERY_KEY_FILE", raising=False)
    with pytest.raises(GalleryKeyError):
        FieldCipher.from_environment()
    path = tmp_path / "state.sqlite"
    with StateStore(path) as st:
        cid = str(uuid.uuid4())
        st.put_menu(_menu(cid, "Mina Park"))
        menu = st.menu(cid)
        raw = _raw_bytes(path)
    assert menu.display_name is None and menu.items[0].item_id == "latte"
    assert b"Mina" not in raw


def test_an_older_state_file_is_narrowed_and_its_plain_names_sealed(tmp_path, cipher):
    path = tmp_path / "state.sqlite"
    cid = str(uuid.uuid4())
    conn = sqlite3.connect(path)  # the layout and content an earlier version wrote
    conn.execute("CREATE TABLE menus (customer_id TEXT PRIMARY KEY, payload TEXT, generated_at TEXT, received_at TEXT)")
    conn.execute("INSERT INTO menus VALUES (?, ?, ?, ?)", [cid, json.dumps(_menu(cid, "Mina Park")),
                                                           "2026-12-01T08:00:00+00:00",
                                                           datetime.now(timezone.utc).isoformat()])
    conn.commit()
    conn.close()
    os.chmod(path, 0o644)
    with StateStore(path, cipher=cipher) as st:
        assert st.menu(cid).display_name == "Mina"
        st.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert _mode(path) == 0o600
    assert b"Park" not in _raw_bytes(path) and b"Mina" not in _raw_bytes(path)


def test_a_correction_of_equal_age_replaces_the_cached_menu_and_catalogue(tmp_path, cipher):
    """The owner renames a customer or changes the store's currency and publishes again: the retained messages
    carry the same ``generated_at`` / catalogue ``version`` (no training, no catalogue edit) but new content, and
    the door must show it; the same content again changes nothing, and an older one is still refused."""
    from tests.edge.test_daemon import catalogue_payload

    cid = str(uuid.uuid4())
    st = StateStore(tmp_path / "state.sqlite", cipher=cipher).open()
    menu = _menu(cid, "Mina Park")
    assert st.put_menu(menu)
    assert not st.put_menu(menu)  # the same message again (a reconnect): nothing to do
    assert st.put_menu({**menu, "display_name": "Minji Park"})  # renamed on the dashboard, published again
    assert st.menu(cid).display_name == "Minji"
    assert not st.put_menu({**menu, "generated_at": "2026-11-30T08:00:00+00:00"})  # older: refused
    assert st.menu(cid).display_name == "Minji"

    assert st.put_catalogue(catalogue_payload(version=3))
    assert not st.put_catalogue(catalogue_payload(version=3))
    assert st.put_catalogue({**catalogue_payload(version=3), "currency": "EUR"})  # the store's currency changed
    assert st.catalogue().currency == "EUR"
    assert not st.put_catalogue({**catalogue_payload(version=2), "currency": "USD"})
    assert st.catalogue().currency == "EUR"
    st.close()
