"""A reviewer's findings on recognition, each on real photos with the real models (int8 SFace + YuNet, int8 FaceNet
as the previous model of an upgrade):

1. a model upgrade migrated a stranger's face into a regular's templates after ONE frame the old model accepted
   (now only on the track's vote, from frames whose new-model embeddings agree);
2. ``dangol-edge enroll --image`` stored photos of two people as one customer (now refused, naming the photo);
3. a second person stepping into the spot of a track already decided known was never greeted (the track now ends
   when its accepted frames turn consistently to another customer; the centre-distance fallback no longer bridges
   processed frames without the face);
4. a sign-up still pending when an upgrade ended lost its only (old-model) templates and could be activated with
   none (pending sign-ups now keep the upgrade running; activation without a current-model template is refused).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import cv2
import numpy as np
import pytest

from dangol_edge.config import EdgeConfig, TrackerConfig
from dangol_edge.detect import FaceDetector
from dangol_edge.embed import Embedder
from dangol_edge.enrol import EnrolmentError, enroll, sample_from_photo
from dangol_edge.faces import FacePipeline
from dangol_edge.gallery import Gallery
from dangol_edge.recognition import Recognizer
from dangol_edge.sources import Frame, read_image
from dangol_edge.tracker import Observation, Tracker
from dangol_edge.upgrade import STARTED_KEY
from dangol_protocol import Consent

CONSENT = Consent(recorded_by="test", recorded_at=datetime.now(timezone.utc), text_version="1")


@pytest.fixture(scope="module")
def lfw(data_dir):
    root = data_dir / "faces" / "lfw-deepfunneled"
    return lambda person, i: root / person / f"{person}_{i:04d}.jpg"


@pytest.fixture(scope="module")
def old_pipeline(facenet_path):
    """The previous model's pipeline (YuNet + int8 FaceNet): what enrolled the regulars before the upgrade."""
    p = FacePipeline(FaceDetector.beside(facenet_path), Embedder(facenet_path))
    yield p
    p.close()


def upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline, regulars: dict, pending: dict | None = None):
    """A gallery enrolled with FaceNet (``regulars``: name → photos, active; ``pending``: name → photos, pending
    sign-ups), opened with SFace and an upgrade running: ``(recognizer, gallery, {name: id})``."""
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path, "previous_model_path": facenet_path})
    ids = {}
    with Gallery(cfg.gallery_path, old_pipeline.embedder.sha256) as old:
        for name, photos in regulars.items():
            ids[name] = enroll(old, name, [sample_from_photo(p, old_pipeline) for p in photos], consent=CONSENT).id
        for name, photos in (pending or {}).items():
            ids[name] = enroll(old, "", [sample_from_photo(p, old_pipeline) for p in photos], status="pending",
                               pending_ttl_s=24 * 3600).id
    gallery = Gallery(cfg.gallery_path, pipeline.embedder.sha256).open()
    rec = Recognizer.from_config(cfg, gallery=gallery, embedder=pipeline.embedder)
    assert rec.upgrade is not None and gallery.size == 0
    return rec, gallery, ids


def visit(rec, photos, t0: float = 0.0, fps: float = 10.0) -> list:
    """Each photo one frame at ``fps`` from ``t0`` s (LFW photos: 250 × 250, the face in the middle, so one track)."""
    decisions = []
    for i, p in enumerate(photos):
        decisions += rec.process(Frame(read_image(p), t0 + i / fps, int(t0 * fps) + i)).decisions
    return decisions


def new_templates(gallery, customer_id) -> int:
    return gallery.template_models().get(customer_id, {}).get(gallery.model_sha256, 0)


# --- 1. an upgrade migrates on a track's vote, never on one frame ------------------------------------------
def test_a_strangers_visit_with_one_old_model_match_is_not_migrated(tmp_path, model_path, facenet_path, pipeline,
                                                                      old_pipeline, lfw):
    """Stephen Daldry is a regular (FaceNet, his 2 LFW photos). Nick Nolte, a stranger, comes in: FaceNet accepts
    one of his 5 frames (Nick_Nolte_0004, 0.63 ≥ 0.62 at the tenfold stricter FPIR) as Daldry, the others not.
    Before, that one frame became Daldry's SFace template (Nolte greeted as Daldry for good). Daldry's own visit
    is still migrated: one template, from one frame of the track."""
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Stephen Daldry": [lfw("Stephen_Daldry", 1), lfw("Stephen_Daldry", 2)]})
    daldry = ids["Stephen Daldry"]
    decisions = visit(rec, [lfw("Nick_Nolte", i) for i in range(1, 6)])
    assert rec.upgrade.migrated == [] and new_templates(gallery, daldry) == 0
    assert not any(d.kind == "known" for d in decisions)
    # Daldry himself, 10 s later (the old model accepts every frame; his new-model faces agree)
    visit(rec, [lfw("Stephen_Daldry", i) for i in (1, 2, 1, 2)], t0=10.0)
    assert rec.upgrade.migrated == [daldry]
    assert new_templates(gallery, daldry) == 1  # one template per decided track, not one per frame
    rec.close()
    gallery.close()


def test_a_track_whose_new_model_faces_disagree_is_not_migrated(tmp_path, model_path, facenet_path, pipeline,
                                                                  old_pipeline, lfw):
    """One track, three frames the old model accepts as Daldry: two of Daldry and Nolte's look-alike frame (two
    people merged into one track). The new model's embeddings of the three do not agree (Nolte 0.16 and 0.25 to
    Daldry's): nothing is migrated until enough of them agree, and never Nolte's face."""
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Stephen Daldry": [lfw("Stephen_Daldry", 1), lfw("Stephen_Daldry", 2)]})
    daldry = ids["Stephen Daldry"]
    nolte = rec.pipeline.process(read_image(lfw("Nick_Nolte", 4)))[0].embedding
    visit(rec, [lfw("Stephen_Daldry", 1), lfw("Nick_Nolte", 4), lfw("Stephen_Daldry", 2)])
    assert len(rec.tracker.tracks) == 1
    assert rec.upgrade.migrated == [] and new_templates(gallery, daldry) == 0
    visit(rec, [lfw("Stephen_Daldry", 1)], t0=0.3)  # a third frame of Daldry in the same track: three agree
    assert rec.upgrade.migrated == [daldry]
    (t,) = [r for r in gallery.templates(daldry) if r["model_sha256"] == gallery.model_sha256]
    assert float(t["embedding"] @ nolte) < 0.4
    rec.close()
    gallery.close()


# --- 2. photos of two people are not one customer ------------------------------------------------------------
def test_photos_of_two_people_are_refused_naming_the_odd_one(pipeline, clips):
    from dangol_edge.enrol import samples_from_photos

    with pytest.raises(EnrolmentError) as exc:
        samples_from_photos([clips / "obama.jpg", clips / "obama2.jpg", clips / "biden.jpg"], pipeline)
    msg = str(exc.value)
    assert "biden.jpg" in msg and "not the same person" in msg and "obama" in msg
    assert len(samples_from_photos([clips / "obama.jpg", clips / "obama2.jpg"], pipeline)) == 2
    assert len(samples_from_photos([clips / "biden.jpg"], pipeline)) == 1


def test_the_cli_refuses_to_enrol_two_people_as_one(edge_env, capsys, clips):
    from tests.edge.test_cli import gallery_rows, run

    code, out, err = run(capsys, "enroll", "--name", "Barack Obama", "--image", str(clips / "obama.jpg"),
                         str(clips / "biden.jpg"))
    assert code == 2 and out == []
    assert "not the same person" in err and "biden.jpg" in err and "obama.jpg" in err
    assert gallery_rows(edge_env) == (0, 0)


# --- 3. the next person at the same spot is decided ----------------------------------------------------------
def box(x: float) -> tuple[float, float, float, float]:
    return (x, 100.0, x + 80.0, 180.0)


def test_another_customer_stepping_into_a_decided_track_is_greeted():
    t = Tracker(TrackerConfig(min_votes=3, vote_share=0.6, cooldown_s=60, max_gap_s=1.0))
    out = []
    for i in range(5):
        out += t.update(i * 0.1, [Observation(box(100), "ana", 0.8)])
    for i in range(5, 12):  # Bo takes her place in the next frame, same box
        out += t.update(i * 0.1, [Observation(box(100), "bo", 0.7)])
    assert [(d.kind, d.customer_id, d.arrival) for d in out] == [("known", "ana", True), ("known", "bo", True)]
    assert out[1].track_id != out[0].track_id and out[1].ts == pytest.approx(0.7) and out[1].votes == 3
    assert [tr.id for tr in t.tracks] == [out[1].track_id]


def test_a_decided_track_keeps_its_customer_through_stray_frames():
    t = Tracker(TrackerConfig(min_votes=3, vote_share=0.6, unknown_after=6, cooldown_s=60, max_gap_s=1.0))
    out = []
    seq = ["ana"] * 3 + ["bo", "ana", "bo", "bo", "ana", None, None, None, None, None, None, None, "bo", "bo", "ana"]
    for i, who in enumerate(seq):
        out += t.update(i * 0.1, [Observation(box(100), who, 0.7 if who else 0.2)])
    assert [(d.kind, d.customer_id) for d in out] == [("known", "ana")] and len(t.tracks) == 1


def test_a_face_far_from_a_track_after_frames_without_it_is_a_new_track():
    """The centre-distance fallback follows a face across *dropped* frames; after processed frames without the face
    (the person left), a face a little aside in the same place is somebody new."""
    t = Tracker(TrackerConfig(min_votes=3, max_gap_s=1.0))
    for i in range(3):
        t.update(i * 0.1, [Observation(box(100), "ana", 0.8)])
    for i in range(3, 6):
        t.update(i * 0.1, [])  # processed frames: nobody there
    t.update(0.6, [Observation(box(160), "bo", 0.7)])  # IoU 0.14 with her box, 0.75 widths away
    assert len(t.tracks) == 2
    # but a face that moved as far between two processed frames (frames dropped in between) is the same track
    t2 = Tracker(TrackerConfig(min_votes=3, max_gap_s=1.0))
    t2.update(0.0, [Observation(box(100), "ana", 0.8)])
    t2.update(0.4, [Observation(box(160), "ana", 0.8)])
    assert len(t2.tracks) == 1


def _face_at(pipeline, photo, face_w: int = 150, side: int = 360) -> np.ndarray:
    """A ``side`` px square of the photo scaled so the face is ``face_w`` px wide, face centred."""
    rgb = read_image(photo)
    d = pipeline.detector.detect(rgb)[0]
    k = face_w / d.width
    small = cv2.resize(rgb, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    cx, cy = int((d.box[0] + d.box[2]) / 2 * k), int((d.box[1] + d.box[3]) / 2 * k)
    pad = cv2.copyMakeBorder(small, side, side, side, side, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    return pad[cy + side - side // 2:cy + side + side // 2, cx + side - side // 2:cx + side + side // 2].copy()


def test_the_next_customer_at_the_same_spot_is_greeted_on_real_photos(tmp_path, model_path, pipeline, clips):
    """Obama at the door for 0.5 s, then Biden at exactly his place from the next frame (10 fps, 640 × 480)."""
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path})
    g = Gallery(cfg.gallery_path, pipeline.embedder.sha256).open()
    obama = enroll(g, "Barack Obama", [sample_from_photo(clips / "obama2.jpg", pipeline)], consent=CONSENT).id
    biden = enroll(g, "Joe Biden", [sample_from_photo(clips / "biden.jpg", pipeline)], consent=CONSENT).id
    rec = Recognizer.from_config(cfg, gallery=g, embedder=pipeline.embedder)
    frames = []
    for photo, n in ((clips / "obama.jpg", 5), (clips / "knn_examples" / "train" / "biden" / "biden2.jpg", 6)):
        canvas = np.full((480, 640, 3), 128, np.uint8)
        canvas[60:420, 140:500] = _face_at(pipeline, photo)
        frames += [canvas] * n
    out = []
    for i, rgb in enumerate(frames):
        out += rec.process(Frame(rgb, i * 0.1, i)).decisions
    assert [(d.customer_id, d.arrival) for d in out if d.kind == "known"] == [(obama, True), (biden, True)]
    rec.close()
    g.close()


# --- 4. sign-ups pending during an upgrade ------------------------------------------------------------------
def test_a_pending_sign_up_keeps_the_upgrade_running_and_is_migrated_once_active(tmp_path, model_path, facenet_path,
                                                                                    pipeline, old_pipeline, clips):
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]},
                                  pending={"Joe Biden": [clips / "biden.jpg"]})
    obama, biden = ids["Barack Obama"], ids["Joe Biden"]
    visit(rec, [clips / "obama.jpg"] * 4)  # Obama comes in: migrated
    assert rec.upgrade.migrated == [obama]
    assert not rec.upgrade.done and rec.upgrade.pending() == {biden}  # Biden's sign-up still waits for staff
    assert gallery.stale_templates >= 1 and gallery.meta(STARTED_KEY) is not None
    gallery.activate(biden, "Joe Biden", CONSENT)  # allowed while the upgrade can still migrate him
    out = visit(rec, [clips / "knn_examples" / "train" / "biden" / "biden2.jpg"] * 8, t0=100.0)
    assert biden in rec.upgrade.migrated and rec.upgrade.done
    assert any(d.kind == "known" and d.customer_id == biden and d.arrival for d in out)
    rec.close()
    gallery.close()


def test_a_sign_up_left_without_a_current_template_is_not_activated(tmp_path, model_path, facenet_path, pipeline,
                                                                    old_pipeline, clips):
    from dangol_edge.gallery import NoCurrentTemplate
    from dangol_edge.screen import Screen
    from dangol_edge.state import StateStore
    from dangol_edge.web import create_app

    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]},
                                  pending={"Joe Biden": [clips / "biden.jpg"]})
    biden = ids["Joe Biden"]
    visit(rec, [clips / "obama.jpg"] * 4)
    assert not rec.upgrade.done
    assert rec.upgrade.check(datetime.now(timezone.utc) + timedelta(days=31))  # the period is over
    assert gallery.customer(biden).templates == 0 and gallery.customer(biden).status == "pending"
    with pytest.raises(NoCurrentTemplate, match="re-enrol needed: no template of the current model"):
        gallery.activate(biden, "Joe Biden", CONSENT)
    assert gallery.customer(biden).status == "pending"
    # the staff page says so, and changes nothing
    state = StateStore(tmp_path / "state.sqlite").open()
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path})
    client = create_app(screen=Screen(), state=state, gallery=gallery, config=cfg).test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/staff").get_data(as_text=True)).group(1)
    r = client.post(f"/staff/activate/{biden}", data={"csrf_token": token, "display_name": "Joe Biden",
                                                       "consent": "yes", "staff": "Jo"})
    page = r.get_data(as_text=True)
    assert r.status_code == 409 and "re-enrol needed: no template of the current model" in page.lower()
    assert "Nothing was changed" in page and gallery.customer(biden).status == "pending"
    state.close()
    rec.close()
    gallery.close()
