"""A second review of recognition, each finding reproduced on real photos with the real models (int8 SFace + YuNet,
int8 FaceNet as the previous model of an upgrade) and fixed:

1. two people side by side were stored as one pending customer when they reached the camera after a short walk-up:
   the "more than one face" share counted every frame of the sign-up, empty ones too (now only frames whose largest
   face passed every gate);
2. a regular stepping into a stranger's spot was not greeted: only tracks decided known were watched for the next
   person (now undecided and unknown-decided tracks too, on ``min_votes`` consecutive accepted frames of one
   customer; scattered accepted frames of a stranger still greet nobody);
3. a failed write of a model upgrade's migration threw away the frame's decisions (the regular decided in it was
   never greeted) and the track never retried (now counted, held for the housekeeping pass to report as storage,
   the decisions returned, and the track retries);
4. during an upgrade, a pending sign-up with only old-model templates skipped the "already a regular" check at
   activation (now checked with the previous model's calibrated rule against the regulars' old-model templates).
"""

from __future__ import annotations

import re
import sqlite3
import threading

import numpy as np
import pytest

from dangol_edge.config import EdgeConfig, TrackerConfig
from dangol_edge.enrol import DoorRule, Sample, enroll, sample_from_photo
from dangol_edge.events import Outbox
from dangol_edge.gallery import AlreadyRegular, Gallery
from dangol_edge.recognition import Recognizer
from dangol_edge.screen import Screen
from dangol_edge.sources import Frame, read_image
from dangol_edge.state import StateStore
from dangol_edge.tracker import Observation, Tracker
from dangol_edge.workers import Stats
from tests.edge.test_door_review_fixes import DEVICE, LEFT, RIGHT, canvas, outbox, people, run  # noqa: F401
from tests.edge.test_door_review_fixes import signup_worker
from tests.edge.test_recognition_review_fixes import CONSENT, _face_at, old_pipeline, upgrading, visit  # noqa: F401

BIDEN2 = ("knn_examples", "train", "biden", "biden2.jpg")


# --- 1. two people after a walk-up -------------------------------------------------------------------------------
def test_two_people_reaching_the_camera_late_fail_the_sign_up(tmp_path, model_path, pipeline, people):
    """Reviewer's test_second_face_leadin.py: 2 s of an empty camera (20 frames at 10 fps: staff pressed the button
    before the customer stepped up), then George W Bush and John Ashcroft side by side. Before: the 20 empty frames
    counted as frames looked at, the second face never reached half of them, and one pending customer was stored
    from the larger face of each frame (a companion's face stored without their consent)."""
    both = [canvas((b, LEFT), (a, RIGHT)) for a, b in zip(people["John_Ashcroft"], people["George_W_Bush"])]
    e, gallery, state, screen = signup_worker(tmp_path, model_path)
    try:
        assert e.ask("enrol", source="test")
        e.handle_requests()
        run(e, pipeline, [canvas() for _ in range(20)] + both)
        snap = screen.snapshot()
        assert (snap["stage"], snap["why"]) == ("failed", "several")
        assert gallery.customers(status=None) == [] and outbox(state) == []
    finally:
        gallery.close()
        state.close()


def test_a_walk_up_with_a_small_face_first_still_fails_two_people(tmp_path, model_path, pipeline, people):
    """The same walk-up, the customer still far from the camera (a 60 px face: detected, below the size gate) for
    20 frames, then the two side by side."""
    import cv2

    far = cv2.resize(people["John_Ashcroft"][0], (60, 60), interpolation=cv2.INTER_AREA)
    lead = np.full((360, 640, 3), 60, np.uint8)
    lead[150:210, 290:350] = far
    (face,) = pipeline.process(lead, max_faces=2)
    assert face.embedding is None  # a face, but not a good one
    both = [canvas((b, LEFT), (a, RIGHT)) for a, b in zip(people["John_Ashcroft"], people["George_W_Bush"])]
    e, gallery, state, screen = signup_worker(tmp_path, model_path)
    try:
        assert e.ask("enrol", source="test")
        e.handle_requests()
        run(e, pipeline, [lead] * 20 + both)
        assert (screen.snapshot()["stage"], screen.snapshot()["why"]) == ("failed", "several")
        assert gallery.customers(status=None) == []
    finally:
        gallery.close()
        state.close()


def test_one_person_after_a_walk_up_is_still_signed_up(tmp_path, model_path, pipeline, people):
    """The walk-up alone changes nothing for one customer (and a passer-by in 3 frames still does not fail it)."""
    ash, bush = people["John_Ashcroft"], people["George_W_Bush"]
    images = [canvas((a, LEFT), (bush[i], RIGHT)) if 3 <= i <= 5 else canvas((a, LEFT)) for i, a in enumerate(ash)]
    e, gallery, state, screen = signup_worker(tmp_path, model_path)
    try:
        assert e.ask("enrol", source="test")
        e.handle_requests()
        run(e, pipeline, [canvas() for _ in range(20)] + images)
        assert screen.snapshot()["stage"] == "pending"
        assert len(gallery.customers(status="pending")) == 1
    finally:
        gallery.close()
        state.close()


# --- 2. the next person at a stranger's spot -----------------------------------------------------------------
def box(x: float) -> tuple[float, float, float, float]:
    return (x, 100.0, x + 80.0, 180.0)


@pytest.fixture(scope="module")
def faces(pipeline, clips) -> dict[str, np.ndarray]:
    """The real SFace embeddings of Obama (``"obama"``, obama.jpg) and Biden (``"biden"``, biden2.jpg)."""
    return {name: pipeline.process(read_image(path))[0].embedding
            for name, path in (("obama", clips / "obama.jpg"), ("biden", clips.joinpath(*BIDEN2)))}


def feed(seq: list[tuple[str | None, str | None]], faces: dict) -> tuple[Tracker, list]:
    """One face at the same place per frame (10 fps): ``seq`` holds each frame's ``(accepted customer or None, face)``
    with ``face`` a key of :func:`faces` (None: no embedding). Returns ``(tracker, decisions)``."""
    t = Tracker(TrackerConfig(min_votes=3, vote_share=0.6, unknown_after=6, cooldown_s=600, max_gap_s=1.0))
    out = []
    for i, (who, face) in enumerate(seq):
        out += t.update(i * 0.1, [Observation(box(100), who, 0.7 if who else 0.1,
                                              embedding=None if face is None else faces[face])])
    return t, out


STRANGER = (None, "obama")  # a frame of Obama, not enrolled
BO = ("bo", "biden")  # a frame of Biden, accepted as the regular "bo"


def test_a_regular_stepping_into_a_strangers_spot_is_greeted(faces):
    """Reviewer's test_tracker_stranger_then_regular.py: a stranger for 3 s (decided unknown), then Bo, accepted in
    every frame. Before: Bo had to win 60 % of all the track's frames, the stranger's included (never, in 3 s)."""
    _, out = feed([STRANGER] * 30 + [BO] * 30, faces)
    assert [(d.kind, d.customer_id) for d in out] == [("unknown", None), ("known", "bo")]
    known = out[1]
    assert known.arrival and known.ts == pytest.approx(3.2) and known.first_ts == pytest.approx(3.0)
    assert known.track_id != out[0].track_id and (known.votes, known.frames) == (3, 3)


def test_a_regular_after_an_undecided_stranger_is_greeted(faces):
    """The stranger left before being decided (3 unknown frames), the regular steps in at the next frame: greeted at
    his third frame (before: 3 of 6 frames, below the vote share, then decided unknown at the 6th)."""
    _, out = feed([STRANGER] * 3 + [BO] * 5, faces)
    assert [(d.kind, d.customer_id, d.first_ts, d.ts) for d in out] == [
        ("known", "bo", pytest.approx(0.3), pytest.approx(0.5))]


def test_a_regular_after_a_few_unknown_frames_is_still_decided_on_the_track(faces):
    """A regular whose first frames are unknown (looking down) and who then wins the track's vote keeps the track."""
    _, out = feed([(None, "biden")] * 2 + [BO] * 3, faces)
    assert [(d.kind, d.customer_id, d.track_id, d.first_ts) for d in out] == [("known", "bo", 1, 0.0)]


@pytest.mark.parametrize("seq", [
    [STRANGER] * 10 + [BO] + [STRANGER] * 20,  # one accepted frame among unknowns
    [STRANGER] * 10 + [BO, STRANGER] * 4 + [STRANGER] * 10,  # scattered, never two in a row
    [STRANGER] * 10 + [BO, BO, STRANGER] * 4,  # runs of two
    [STRANGER] * 10 + [BO, BO, ("cy", "biden"), BO, BO, ("cy", "biden")] * 2,  # interrupted by another customer
])
def test_scattered_accepted_frames_greet_nobody(seq, faces):
    """Accepted frames among a stranger's do not end the track unless min_votes of them are CONSECUTIVE (an unknown
    frame breaks the run) — even with another face in them."""
    t, out = feed(seq, faces)
    assert [d.kind for d in out] == ["unknown"] and len(t.tracks) == 1


def test_a_stranger_falsely_accepted_in_a_row_is_still_the_same_face(faces):
    """A stranger turning to the camera may be falsely accepted as a regular in several frames in a row: the run's
    face is the face before it, so the track is not ended (the bench's per-visit stranger acceptance would rise
    from 0.27 % to 0.67 % on runs alone) — and it is not decided known by its own vote either."""
    t, out = feed([STRANGER] * 10 + [("bo", "obama")] * 5 + [STRANGER] * 10, faces)
    assert [d.kind for d in out] == ["unknown"] and len(t.tracks) == 1


def test_without_embeddings_the_watch_cannot_tell_and_ends_nothing(faces):
    """Observations without embeddings (the tracker alone): a run cannot be told from the stranger's own face."""
    t, out = feed([(None, None)] * 10 + [("bo", None)] * 5, faces)
    assert [d.kind for d in out] == ["unknown"] and len(t.tracks) == 1


def test_a_regular_at_a_strangers_spot_on_real_photos(tmp_path, model_path, pipeline, clips):
    """The Obama → Biden scene at one spot (640 × 480, 10 fps), Obama a stranger (not enrolled) for 3 s, then
    Biden, a regular, for 3 s. Before: Biden was accepted in all his 30 frames and never greeted."""
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path})
    g = Gallery(cfg.gallery_path, pipeline.embedder.sha256).open()
    biden = enroll(g, "Joe Biden", [sample_from_photo(clips / "biden.jpg", pipeline)], consent=CONSENT).id
    rec = Recognizer.from_config(cfg, gallery=g, embedder=pipeline.embedder)
    frames = []
    for photo, n in ((clips / "obama.jpg", 30), (clips.joinpath(*BIDEN2), 30)):
        rgb = np.full((480, 640, 3), 128, np.uint8)
        rgb[60:420, 140:500] = _face_at(pipeline, photo)
        frames += [rgb] * n
    out = []
    for i, rgb in enumerate(frames):
        out += rec.process(Frame(rgb, i * 0.1, i)).decisions
    assert [(d.kind, d.customer_id, d.arrival) for d in out] == [("unknown", None, False), ("known", biden, True)]
    assert out[1].first_ts >= 3.0
    rec.close()
    g.close()


# --- 3. a failed migration write -------------------------------------------------------------------------------
def _sample(pipe, rgb) -> Sample:
    f = pipe.process(rgb)[0]
    assert f.embedding is not None
    return Sample(f.embedding, f.quality, f.crop)


def _ashcroft_and_bush(tmp_path, model_path, facenet_path, pipeline, old_pipeline, people):
    """Reviewer's test_upgrade_error_loses_arrival.py: Ashcroft and Bush enrolled with FaceNet; Ashcroft already
    migrated (3 SFace templates), Bush not: ``(recognizer, gallery, ashcroft id, bush id)``."""
    ash, bush = people["John_Ashcroft"], people["George_W_Bush"]
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path, "previous_model_path": facenet_path})
    with Gallery(cfg.gallery_path, old_pipeline.embedder.sha256) as g_old:
        a = enroll(g_old, "John Ashcroft", [_sample(old_pipeline, ash[i]) for i in range(3)], consent=CONSENT).id
        b = enroll(g_old, "George Bush", [_sample(old_pipeline, bush[i]) for i in range(3)], consent=CONSENT).id
    gallery = Gallery(cfg.gallery_path, pipeline.embedder.sha256).open()
    gallery.add_templates(a, np.stack([_sample(pipeline, ash[i]).embedding for i in range(3)]), [1.0] * 3)
    rec = Recognizer.from_config(cfg, gallery=gallery, embedder=pipeline.embedder)
    assert rec.upgrade is not None
    return rec, gallery, a, b


def _both_walk_in(rec, people, frames: range) -> list:
    ash, bush = people["John_Ashcroft"], people["George_W_Bush"]
    out = []
    for i in frames:
        out += rec.process(Frame(canvas((ash[10 + i], LEFT), (bush[10 + i], RIGHT)), i / 10, i)).decisions
    return out


def test_a_failed_migration_write_loses_no_arrival_and_is_reported(tmp_path, model_path, facenet_path, pipeline,
                                                                   old_pipeline, people, monkeypatch):
    """The disk is full while Ashcroft (a migrated regular) and Bush (not yet migrated) walk in together. Before:
    the frame in which Bush's track elected him raised out of process(), with Ashcroft's arrival decided in it; the
    track was decided, so he was never greeted. Now the decisions come back, the failure is counted, and the next
    housekeeping pass reports the storage as the daemon's health shows it."""
    from dangol_edge.workers.housekeeping import HousekeepingWorker

    rec, gallery, ashcroft, bush = _ashcroft_and_bush(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                                      people)
    tries = []

    def full(*args, **kw):
        tries.append(args[0])
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(gallery, "add_templates", full)
    out = _both_walk_in(rec, people, range(20))
    assert [(d.customer_id, d.arrival) for d in out if d.kind == "known"] == [(ashcroft, True)]
    assert tries and set(tries) == {bush} and rec.upgrade_failures == len(tries)
    assert len(tries) > 1  # the track was not marked done: it tried again on its next frames
    assert rec.upgrade.migrated == []

    state = StateStore(tmp_path / "state.sqlite").open()
    stats = Stats()
    hk = HousekeepingWorker(EdgeConfig(home=tmp_path / "home"), gallery, state, Outbox(DEVICE, state), None, stats,
                            lambda cid: None, lambda: None, threading.Event(), upgrade=rec.upgrade)
    assert not hk.tidy()
    assert stats.storage == "full" and stats.housekeeping_failures == 1
    assert hk.tidy() and stats.housekeeping_failures == 1  # reported once; nothing failed since
    state.close()
    rec.close()
    gallery.close()


def test_a_migration_that_failed_is_written_at_the_tracks_next_frames(tmp_path, model_path, facenet_path, pipeline,
                                                                      old_pipeline, people, monkeypatch):
    """The write fails once (a locked database), then succeeds: Bush is migrated on his track's next frames."""
    rec, gallery, ashcroft, bush = _ashcroft_and_bush(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                                      people)
    real, tries = gallery.add_templates, []

    def once(*args, **kw):
        tries.append(args[0])
        if len(tries) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(*args, **kw)

    monkeypatch.setattr(gallery, "add_templates", once)
    _both_walk_in(rec, people, range(20))
    assert rec.upgrade_failures == 1 and tries[:2] == [bush, bush]
    assert rec.upgrade.migrated == [bush]
    assert gallery.template_models()[bush].get(gallery.model_sha256) == 1
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        rec.upgrade.check()  # what the housekeeping pass counts (storage "error")
    rec.close()
    gallery.close()


# --- 4. the "already a regular" check during an upgrade ----------------------------------------------------------
def test_a_second_sign_up_of_a_regular_is_refused_during_an_upgrade(tmp_path, model_path, facenet_path, pipeline,
                                                                    old_pipeline, clips):
    """Reviewer's test_activation_check_skipped_in_upgrade.py: Obama is a regular and has a second sign-up pending,
    both made with FaceNet; the device now runs SFace with the upgrade going. Before: the staff page's check looked
    at SFace templates only and let the second record through, and neither record could be migrated."""
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]},
                                  pending={"Obama again": [clips / "obama.jpg"], "Joe Biden": [clips / "biden.jpg"]})
    obama, again, biden = ids["Barack Obama"], ids["Obama again"], ids["Joe Biden"]
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path})
    rule = DoorRule.from_config(cfg, gallery.model_sha256)
    with pytest.raises(AlreadyRegular) as exc:
        gallery.activate(again, "Barry", CONSENT, check=lambda: rule.check_pending(gallery, again))
    assert exc.value.customer.id == obama and gallery.customer(again).status == "pending"

    # the staff page names the regular, and changes nothing
    state = StateStore(tmp_path / "state.sqlite").open()
    from dangol_edge.web import create_app

    client = create_app(screen=Screen(), state=state, gallery=gallery, config=cfg).test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/staff").get_data(as_text=True)).group(1)
    r = client.post(f"/staff/activate/{again}", data={"csrf_token": token, "display_name": "Barry",
                                                      "consent": "yes", "staff": "Jo"})
    page = r.get_data(as_text=True)
    assert r.status_code == 409 and "Already a regular: Barack Obama" in page and "Nothing was changed" in page
    assert gallery.customer(again).status == "pending"

    # another person's sign-up with old templates only is activated as before
    gallery.activate(biden, "Joe Biden", CONSENT, check=lambda: rule.check_pending(gallery, biden))
    assert gallery.customer(biden).status == "active"
    # staff discard the second sign-up, as the page tells them; Obama's next visit migrates his one record
    gallery.delete(again)
    rec.upgrade.forget(again)
    visit(rec, [clips / "obama.jpg"] * 4)
    assert rec.upgrade.migrated == [obama]
    state.close()
    rec.close()
    gallery.close()


def test_a_second_sign_up_migrated_while_pending_is_still_refused(tmp_path, model_path, facenet_path, pipeline,
                                                                  old_pipeline, clips):
    """The reviewer's scene goes on: Obama comes in before staff saw the second sign-up (made from the same photo
    as his visit's frames). The upgrade migrates Obama, the regular, never the pending duplicate (which gets no new
    template); the old model's check still refuses the duplicate's activation."""
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]},
                                  pending={"Obama again": [clips / "obama.jpg"]})
    obama, again = ids["Barack Obama"], ids["Obama again"]
    visit(rec, [clips / "obama.jpg"] * 4)
    assert rec.upgrade.migrated == [obama] and gallery.template_models()[again].get(gallery.model_sha256) is None
    rule = DoorRule.from_config(EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path}),
                                gallery.model_sha256)
    with pytest.raises(AlreadyRegular) as exc:
        gallery.activate(again, "Barry", CONSENT, check=lambda: rule.check_pending(gallery, again))
    assert exc.value.customer.id == obama and gallery.customer(again).status == "pending"
    rec.close()
    gallery.close()


def test_a_sign_up_with_old_templates_is_refused_when_no_upgrade_can_check_it(tmp_path, model_path, facenet_path,
                                                                              pipeline, old_pipeline, clips):
    """An upgrade marked running in the gallery, but no upgrade here to check the sign-up with the previous model's
    rule (e.g. ``embedder.previous_model_path`` removed): nobody could migrate it either, so it is refused as
    re-enrol needed."""
    from dangol_edge.gallery import NoCurrentTemplate

    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]},
                                  pending={"Joe Biden": [clips / "biden.jpg"]})
    rec.close()
    gallery.close()
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path})
    gallery = Gallery(cfg.gallery_path, pipeline.embedder.sha256).open()  # no upgrade running in this process
    rule = DoorRule.from_config(cfg, gallery.model_sha256)
    biden = ids["Joe Biden"]
    with pytest.raises(NoCurrentTemplate, match="re-enrol needed"):
        gallery.activate(biden, "Joe Biden", CONSENT, check=lambda: rule.check_pending(gallery, biden))
    assert gallery.customer(biden).status == "pending"
    gallery.close()
