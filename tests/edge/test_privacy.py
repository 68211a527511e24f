"""Privacy on the edge: encryption at rest, key handling and rotation, nothing stored about strangers."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from dangol_edge.cli import main
from dangol_edge.crypto import FieldCipher, GalleryKeyError, new_key, parse_key
from dangol_edge.gallery import Gallery

NAME = "Seo-yeon Bae-Unique"


def files_of(db: Path) -> list[Path]:
    return [p for p in db.parent.iterdir() if p.name.startswith(db.name)]


def test_stolen_gallery_reveals_no_name_or_template(tmp_path, pipeline, clips):
    cipher = FieldCipher(parse_key(new_key(), "test"))
    db = tmp_path / "home" / "gallery.sqlite"
    g = Gallery(db, pipeline.embedder.sha256, cipher).open()
    from dangol_edge.enrol import sample_from_photo

    s = sample_from_photo(clips / "obama.jpg", pipeline)
    c = g.enroll(NAME, s.embedding[None])
    template = s.embedding.astype("<f4").tobytes()
    # the "stolen SD card": copies of the database, its WAL and shared-memory files, taken while open
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    for f in files_of(db):
        shutil.copy(f, stolen / f.name)
    raw = b"".join(p.read_bytes() for p in stolen.iterdir())
    assert raw, "nothing copied"
    assert NAME.encode() not in raw and NAME.encode("utf-16-le") not in raw
    for i in range(0, len(template), 256):  # no 64-byte run of the template appears anywhere
        assert template[i:i + 64] not in raw
    g.close()
    # with the key the owner reads everything back; with another key nothing
    with Gallery(stolen / "gallery.sqlite", pipeline.embedder.sha256, cipher) as g2:
        assert g2.customer(c.id).display_name == NAME
        assert np.allclose(g2.templates(c.id)[0]["embedding"], s.embedding)
    other = FieldCipher(parse_key(new_key(), "other"))
    with Gallery(stolen / "gallery.sqlite", pipeline.embedder.sha256, other) as g3:
        with pytest.raises(GalleryKeyError, match="different key"):
            g3.customer(c.id)
        with pytest.raises(GalleryKeyError):
            g3.match(s.embedding, 0.5, 0.0)


def test_a_sealed_value_cannot_be_moved_to_another_row(tmp_path):
    cipher = FieldCipher(parse_key(new_key(), "test"))
    e = np.eye(2, 512, dtype=np.float32)
    with Gallery(tmp_path / "g.sqlite", "sha", cipher) as g:
        a = g.enroll("Ana", e[:1])
        b = g.enroll("Bo", e[1:])
        sealed_a = g.db.execute("SELECT display_name FROM customers WHERE id = ?", [a.id]).fetchone()[0]
        g.db.execute("UPDATE customers SET display_name = ? WHERE id = ?", [sealed_a, b.id])
        with pytest.raises(GalleryKeyError, match="authentication failed"):
            g.customer(b.id)


def test_missing_or_malformed_key_is_refused(monkeypatch, capsys, tmp_path, model_path):
    monkeypatch.setenv("DANGOL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DANGOL_EMBEDDER__MODEL_PATH", str(model_path))
    monkeypatch.delenv("DANGOL_GALLERY_KEY")
    assert main(["customers", "list"]) == 2
    assert "no gallery key" in capsys.readouterr().err
    monkeypatch.setenv("DANGOL_GALLERY_KEY", "c2hvcnQ=")  # base64 of 5 bytes
    assert main(["customers", "list"]) == 2
    assert "32 bytes" in capsys.readouterr().err
    assert not (tmp_path / "home" / "gallery.sqlite").exists()


def test_systemd_credential_is_used(monkeypatch, tmp_path):
    key = new_key()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dangol-gallery-key").write_text(key + "\n")
    monkeypatch.delenv("DANGOL_GALLERY_KEY")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert FieldCipher.from_environment().key_id == FieldCipher(parse_key(key, "k")).key_id


def test_rotate_key_command(edge_env, capsys, clips, tmp_path, monkeypatch):
    assert main(["enroll", "--name", NAME, "--image", str(clips / "obama.jpg")]) == 0
    cid = json.loads(capsys.readouterr().out)["enrolled"]["id"]
    new = new_key()
    key_file = tmp_path / "new.key"
    key_file.write_text(new)
    assert main(["rotate-key", "--new-key-file", str(key_file)]) == 0
    assert json.loads(capsys.readouterr().out)["resealed"] == 2  # one name, one template
    # the old key no longer opens it …
    assert main(["customers", "show", cid]) == 2
    assert "different key" in capsys.readouterr().err
    # … the new one does, and recognition still works
    monkeypatch.setenv("DANGOL_GALLERY_KEY", new)
    assert main(["customers", "show", cid]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == NAME
    assert main(["identify", "--source", str(clips / "obama2.jpg"), "--json", "--all-frames"]) == 0
    faces = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert any(f.get("customer_id") == cid for f in faces)


def test_rotate_key_reseals_the_cached_menu_names(edge_env, capsys, clips, monkeypatch):
    """The cached menus' first names in state.sqlite move to the new key with the gallery, so after the switch
    the door still has them (and nothing is left that only the old key opens)."""
    from dangol_edge.state import StateStore
    from dangol_protocol import Menu, MenuPick

    assert main(["enroll", "--name", NAME, "--image", str(clips / "obama.jpg")]) == 0
    cid = json.loads(capsys.readouterr().out)["enrolled"]["id"]
    state_path = edge_env / "state.sqlite"
    with StateStore(state_path) as st:
        st.put_menu(Menu(store_id=uuid.uuid4(), customer_id=uuid.UUID(cid), display_name=NAME, model_version="m1",
                         generated_at=datetime.now(timezone.utc), items=[MenuPick(item_id="latte", score=1.0)]))
    new = new_key()
    monkeypatch.setenv("NEW_GALLERY_KEY", new)
    assert main(["rotate-key", "--new-key-env", "NEW_GALLERY_KEY"]) == 0
    out = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("DANGOL_GALLERY_KEY", new)
    with StateStore(state_path) as st:
        m = st.menu(cid)
        assert m.display_name == NAME.split()[0] and [p.item_id for p in m.items] == ["latte"]
        assert st.name_read_errors == 0
    assert out["resealed"] == 2 and out["resealed_menu_names"] == 1


def test_strangers_leave_no_trace(edge_env, capsys, clips):
    """After a whole clip full of strangers, the edge's folder holds only the gallery with the one enrolled
    customer: no frame, crop or embedding of anyone else is written."""
    assert main(["enroll", "--name", "Lin-Manuel Miranda", "--image", str(clips / "lin-manuel-miranda.png")]) == 0
    capsys.readouterr()
    before = {p: p.stat().st_size for p in edge_env.rglob("*") if p.is_file()}
    assert main(["identify", "--source", str(clips / "short_hamilton_clip.mp4"), "--json"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert any(e["kind"] == "unknown" for e in out)
    after = [p for p in edge_env.rglob("*") if p.is_file()]
    assert {p.name for p in after} <= {"gallery.sqlite", "gallery.sqlite-wal", "gallery.sqlite-shm"}
    assert not [p for p in after if p.suffix.lower() in (".jpg", ".png", ".npy", ".mp4")]
    with Gallery(edge_env / "gallery.sqlite", "any") as g:
        assert len(g.customers()) == 1
        assert g.db.execute("SELECT COUNT(*) FROM templates").fetchone()[0] == 1
    assert set(before) <= set(after)


def test_rotate_key_whose_state_step_fails_loses_no_queued_event(edge_env, capsys, clips, tmp_path, monkeypatch):
    """The state file busy (a full disk or read-only medium take the same path) while ``rotate-key`` runs: the
    command says so and exits 1; the queued enrolment (its consent record, sealed under the old key) is kept — under
    the new key it is skipped, not deleted —, and ``rotate-key --state-only`` then moves it to the new key."""
    import sqlite3

    from dangol_edge.events import EventFactory, Outbox
    from dangol_edge.state import StateStore
    from dangol_protocol import Consent

    assert main(["enroll", "--name", NAME, "--image", str(clips / "obama.jpg")]) == 0
    cid = json.loads(capsys.readouterr().out)["enrolled"]["id"]
    device = uuid.uuid4()
    state_path = edge_env / "state.sqlite"
    with StateStore(state_path) as st:  # the daemon queued the activation while the broker was down
        Outbox(device, st).send(EventFactory(device).activated(cid, NAME, Consent(
            recorded_by="staff", recorded_at=datetime.now(timezone.utc), text_version="2026-01")))
    new = new_key()
    key_file = tmp_path / "new.key"
    key_file.write_text(new)
    blocker = sqlite3.connect(state_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert main(["rotate-key", "--new-key-file", str(key_file)]) == 1       # before: 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert "--state-only" in json.loads(capsys.readouterr().out)["error"]
    old = os.environ["DANGOL_GALLERY_KEY"]
    monkeypatch.setenv("DANGOL_GALLERY_KEY", new)
    with StateStore(state_path) as st:                                           # a daemon on the new key
        assert st.pending() == [] and st.outbox_read_errors == 1
        assert st.outbox_depth() == 1                                            # before: deleted
    monkeypatch.setenv("DANGOL_GALLERY_KEY", old)
    assert main(["rotate-key", "--state-only", "--new-key-file", str(key_file)]) == 0
    monkeypatch.setenv("DANGOL_GALLERY_KEY", new)
    with StateStore(state_path) as st:
        (event,) = st.pending()
        assert json.loads(event["payload"])["display_name"] == NAME
