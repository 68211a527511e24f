"""The ``dangol-edge`` command line on real photos and the real Hamilton clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dangol_edge.cli import main
from dangol_protocol import CONSENT_TEXT_VERSION


def run(capsys, *argv) -> tuple[int, list, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    try:
        lines = [json.loads(out)] if out.strip() else []  # one (possibly indented) document
    except json.JSONDecodeError:
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return code, lines, err


def gallery_rows(home: Path) -> tuple[int, int]:
    import sqlite3

    db = home / "gallery.sqlite"
    if not db.exists():
        return 0, 0
    con = sqlite3.connect(db)
    try:
        return (con.execute("select count(*) from customers").fetchone()[0],
                con.execute("select count(*) from templates").fetchone()[0])
    finally:
        con.close()


def test_enroll_list_show_delete(edge_env, capsys, clips):
    code, out, _ = run(capsys, "enroll", "--name", "Barack Obama", "--image",
                       str(clips / "obama.jpg"), str(clips / "obama2.jpg"))
    assert code == 0
    cid = out[0]["enrolled"]["id"]
    assert out[0]["enrolled"]["templates"] == 2 and out[0]["enrolled"]["status"] == "active"
    consent = out[0]["enrolled"]["consent"]
    assert consent["text_version"] == CONSENT_TEXT_VERSION  # the version the cloud records (display.consent_version)
    assert consent["recorded_by"].startswith("cli:") and consent["recorded_at"]
    code, out, _ = run(capsys, "customers", "list")
    assert [c["id"] for c in out] == [cid]
    code, _, _ = run(capsys, "customers", "show", cid)
    assert code == 0
    assert run(capsys, "customers", "delete", cid)[0] == 0
    assert gallery_rows(edge_env) == (0, 0)


def test_unknown_customer_id_exit_2(edge_env, capsys):
    code, _, err = run(capsys, "customers", "delete", "00000000-0000-0000-0000-000000000000")
    assert code == 2 and "00000000-0000-0000-0000-000000000000" in err


@pytest.mark.parametrize("photo, message", [
    ("two_people.jpg", "2 faces found"),
    ("knn_examples/test/kit_with_rose.jpg", "2 faces found"),
])
def test_several_faces_exit_2_and_nothing_written(edge_env, capsys, clips, photo, message):
    # the good photo first: the bad second photo must still leave nothing behind
    code, _, err = run(capsys, "enroll", "--name", "X", "--image", str(clips / "obama.jpg"), str(clips / photo))
    assert code == 2
    assert Path(photo).name in err and message in err
    assert gallery_rows(edge_env) == (0, 0)


def test_no_face_and_missing_file_exit_2(edge_env, capsys, tmp_path):
    import cv2
    import numpy as np

    wall = tmp_path / "wall.jpg"
    cv2.imwrite(str(wall), np.full((300, 300, 3), 128, np.uint8))
    code, _, err = run(capsys, "enroll", "--name", "X", "--image", str(wall))
    assert code == 2 and "wall.jpg: no face found" in err
    code, _, err = run(capsys, "enroll", "--name", "X", "--image", str(tmp_path / "nope.jpg"))
    assert code == 2 and "nope.jpg" in err
    assert gallery_rows(edge_env) == (0, 0)


def test_identify_missing_source_exit_2(edge_env, capsys, tmp_path):
    code, _, err = run(capsys, "identify", "--source", str(tmp_path / "missing.mp4"), "--json")
    assert code == 2 and "missing.mp4" in err


def test_model_sha_mismatch_never_mixes(edge_env, capsys, caplog, clips, models_dir, monkeypatch):
    code, out, _ = run(capsys, "enroll", "--name", "Barack Obama", "--image", str(clips / "obama.jpg"))
    assert code == 0
    # Same gallery, a different model (the float32 build): the old template must not be searched.
    monkeypatch.setenv("DANGOL_EMBEDDER__MODEL_PATH", str(models_dir / "facenet-float32.tflite"))
    monkeypatch.setenv("DANGOL_MATCHER__THRESHOLD", "0.6")  # the float32 build has no calibration file
    from dangol_edge.embed import Embedder, file_sha256
    from dangol_edge.gallery import Gallery

    g = Gallery(edge_env / "gallery.sqlite", file_sha256(models_dir / "facenet-float32.tflite")).open()
    assert g.stale_templates == 1
    probe = Embedder(models_dir / "facenet-float32.tflite")
    from dangol_edge.detect import FaceDetector
    from dangol_edge.faces import FacePipeline
    from dangol_edge.sources import read_image

    p = FacePipeline(FaceDetector.beside(models_dir / "facenet-float32.tflite"), probe)
    emb = p.process(read_image(clips / "obama2.jpg"))[0].embedding
    p.close()
    assert g.match(emb, 0.0, 0.0)[0].customer_id is None  # nothing searchable for this model
    code, _, err = run(capsys, "identify", "--source", str(clips / "obama2.jpg"), "--json")
    assert code == 0 and "different model" in caplog.text


def test_bad_config_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[matcher]\nthreshold = 7\n")
    code, _, err = run(capsys, "check-config", str(cfg))
    assert code == 2 and "matcher.threshold" in err and "edge.toml" in err


def test_hamilton_clip_persists_across_processes(edge_env, clips):
    """Enrol in one process, identify in another (gallery persistence); Lin-Manuel arrives once,
    other faces are unknown."""
    env = dict(os.environ)
    cli = [sys.executable, "-m", "dangol_edge.cli"]
    r = subprocess.run(cli + ["enroll", "--name", "Lin-Manuel Miranda", "--image", str(clips / "lin-manuel-miranda.png")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lin = json.loads(r.stdout.splitlines()[-1])["enrolled"]["id"]
    r = subprocess.run(cli + ["identify", "--source", str(clips / "short_hamilton_clip.mp4"), "--json"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    arrivals = [e for e in events if e["type"] == "arrival"]
    assert [a["customer_id"] for a in arrivals] == [lin]
    assert arrivals[0]["name"] == "Lin-Manuel Miranda"
    unknown = [e for e in events if e["kind"] == "unknown"]
    assert unknown, "the audience / other performers should be reported as unknown"
    assert all(e["customer_id"] in (None, lin) for e in events)


def test_delete_queues_an_erasure_for_the_cloud(edge_env, capsys, clips, monkeypatch):
    import uuid

    from dangol_edge.state import StateStore

    device = uuid.uuid4()
    monkeypatch.setenv("DANGOL_DEVICE__ID", str(device))
    code, out, _ = run(capsys, "enroll", "--name", "Barack Obama", "--image", str(clips / "obama.jpg"))
    cid = out[0]["enrolled"]["id"]
    code, out, _ = run(capsys, "customers", "delete", cid)
    assert code == 0 and out[0]["cloud_notified"] is True
    st = StateStore(edge_env / "state.sqlite").open()
    events = [json.loads(e["payload"]) for e in st.pending()]
    st.close()
    assert [(e["kind"], e["customer_ids"], e["erasure_id"], e["device_id"]) for e in events] == [
        ("erasure-done", [cid], None, str(device))]


def test_oversized_and_corrupt_images_exit_2_and_nothing_written(edge_env, capsys, tmp_path, clips):
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (12_000, 12_000)).save(bomb)  # 144 MP declared, a few hundred KB on disk
    assert bomb.stat().st_size < 5 << 20
    code, _, err = run(capsys, "enroll", "--name", "X", "--image", str(bomb))
    assert code == 2 and "bomb.png" in err and "too large" in err
    garbage = tmp_path / "noise.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40)  # a JPEG header, then noise
    code, _, err = run(capsys, "enroll", "--name", "X", "--image", str(clips / "obama.jpg"), str(garbage))
    assert code == 2 and "noise.jpg" in err
    assert gallery_rows(edge_env) == (0, 0)


def test_check_config_refuses_a_broker_without_device_ids(tmp_path, capsys, monkeypatch):
    """What ``run`` would refuse at start, ``check-config`` (install-edge's check) refuses already."""
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n')
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    code, _, err = run(capsys, "check-config", str(cfg))
    assert code == 2 and "device.id and device.store_id" in err and "edge.toml" in err
    cfg.write_text('[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[device]\nid = "7d2e9b10-0000-4000-8000-000000000011"\n'
                   'store_id = "3f1c0a52-0000-4000-8000-000000000001"\n')
    code, out, err = run(capsys, "check-config", str(cfg))
    assert code == 0, err
