"""During a model upgrade, a regular the upgrade has not migrated yet (the door does not greet them) who presses the
sign-up button is told "already a regular", as without an upgrade — never stored as a second record. Real models (int8
FaceNet before, int8 SFace now, YuNet) on real photos, the real sign-up worker (:class:`ButtonEnrolment`).

Before: the button's sign-up stored SFace templates only and the regular had FaceNet templates only, so neither the
sign-up-time check nor the activation check could meet: the second record was activated, the door greeted it from
then on with a cold-start menu, and the upgrade never migrated the real record (consent, history), which ended with
no template."""

from __future__ import annotations

import pytest

from dangol_edge.config import EdgeConfig
from dangol_edge.enrol import DoorRule
from dangol_edge.events import EventFactory, Outbox
from dangol_edge.gallery import AlreadyRegular
from dangol_edge.screen import Screen
from dangol_edge.sources import Frame, read_image
from dangol_edge.state import StateStore
from dangol_edge.workers import Stats
from dangol_edge.workers.enrolment import ButtonEnrolment
from tests.edge.test_recognition_review_fixes import (CONSENT, new_templates, old_pipeline, upgrading,  # noqa: F401
                                                       visit)

DEVICE = "22222222-2222-2222-2222-222222222222"


def sign_up(tmp_path, model_path, facenet_path, gallery, rec, pipeline, photo) -> tuple[Screen, object]:
    """A button press, then frames of ``photo`` until the sign-up ends: ``(screen, state)``."""
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path, "previous_model_path": facenet_path})
    state = StateStore(tmp_path / "state.sqlite").open()
    screen = Screen()
    e = ButtonEnrolment(cfg, gallery, screen, EventFactory(DEVICE), Outbox(DEVICE, state), stats=Stats(),
                        upgrade=rec.upgrade)
    e.request("enrol")()
    e.handle_requests()
    rgb = read_image(photo)
    for i in range(cfg.enrol.max_frames):
        if not e.active:
            return screen, state
        e.step(Frame(rgb, i / 10, i), pipeline)
    raise AssertionError("the sign-up did not end")


def door_rule(tmp_path, model_path, gallery) -> DoorRule:
    return DoorRule.from_config(EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path}),
                                gallery.model_sha256)


def test_a_not_yet_migrated_regular_pressing_sign_up_is_already_a_regular(tmp_path, model_path, facenet_path,
                                                                          pipeline, old_pipeline, clips):  # noqa: F811
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]})
    obama = ids["Barack Obama"]
    screen, state = sign_up(tmp_path, model_path, facenet_path, gallery, rec, pipeline, clips / "obama.jpg")
    try:
        snap = screen.snapshot()
        assert snap["stage"] == "already", snap
        assert screen.last_signup()["regular"] == obama
        assert gallery.customers(status="pending") == []
        # his next visit migrates his real record, which the door then greets
        out = visit(rec, [clips / "obama.jpg"] * 6, t0=100.0)
        assert rec.upgrade.migrated == [obama] and new_templates(gallery, obama) == 1
        assert {d.customer_id for d in out if d.kind == "known"} <= {obama}
    finally:
        state.close()
        rec.close()
        gallery.close()


def test_the_second_of_two_pending_sign_ups_of_one_face_is_refused_at_activation(
        tmp_path, model_path, facenet_path, pipeline, old_pipeline, clips):  # noqa: F811
    """Obama signed up before the upgrade (pending, FaceNet only) and again at the door during it: the second passes
    the sign-up-time check (nobody active yet), staff activate the first, then the second is refused as his."""
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Joe Biden": [clips / "biden.jpg"]}, pending={"Obama": [clips / "obama2.jpg"]})
    first = ids["Obama"]
    screen, state = sign_up(tmp_path, model_path, facenet_path, gallery, rec, pipeline, clips / "obama.jpg")
    try:
        assert screen.snapshot()["stage"] == "pending"
        (second,) = [c.id for c in gallery.customers(status="pending") if c.id != first]
        # the sign-up keeps its samples' templates of the previous model too, for the check at activation
        assert gallery.template_models()[second].get(rec.upgrade.previous.sha256, 0) > 0
        rule = door_rule(tmp_path, model_path, gallery)
        gallery.activate(first, "Barack Obama", CONSENT, check=lambda: rule.check_pending(gallery, first))
        with pytest.raises(AlreadyRegular) as refused:
            gallery.activate(second, "Barry", CONSENT, check=lambda: rule.check_pending(gallery, second))
        assert refused.value.customer.id == first and refused.value.customer.display_name == "Barack Obama"
        assert gallery.customer(second).status == "pending"
    finally:
        state.close()
        rec.close()
        gallery.close()


def test_a_newcomer_signing_up_during_the_upgrade_is_stored_and_activated(tmp_path, model_path, facenet_path,
                                                                          pipeline, old_pipeline, clips):  # noqa: F811
    """Biden is nobody's face: his sign-up is stored (both models' templates), activated, then greeted by the new
    model; the upgrade still waits for Obama and ends by dropping the previous model's templates, Biden's too."""
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]})
    screen, state = sign_up(tmp_path, model_path, facenet_path, gallery, rec, pipeline, clips / "biden.jpg")
    try:
        assert screen.snapshot()["stage"] == "pending"
        (biden,) = gallery.customers(status="pending")
        rule = door_rule(tmp_path, model_path, gallery)
        gallery.activate(biden.id, "Joe Biden", CONSENT, check=lambda: rule.check_pending(gallery, biden.id))
        out = visit(rec, [clips / "biden.jpg"] * 6, t0=100.0)
        assert any(d.kind == "known" and d.customer_id == biden.id and d.arrival for d in out)
        assert rec.upgrade.pending() == {ids["Barack Obama"]}
        visit(rec, [clips / "obama.jpg"] * 6, t0=200.0)
        assert rec.upgrade.check()
        assert all(set(m) == {gallery.model_sha256} for m in gallery.template_models().values())
    finally:
        state.close()
        rec.close()
        gallery.close()


def test_the_daemon_gives_its_sign_ups_the_running_upgrade(tmp_path, model_path, facenet_path, clips):
    """The daemon's wiring: a sign-up started on the staff page while the upgrade runs (Biden at the camera, a
    stranger to the FaceNet regulars Lin-Manuel and Obama) is stored with both models' templates."""
    from dangol_edge.daemon import Appliance
    from dangol_edge.embed import Embedder, file_sha256
    from dangol_edge.enrol import sample_from_photo
    from dangol_edge.detect import FaceDetector
    from dangol_edge.faces import FacePipeline
    from dangol_edge.gallery import Gallery
    from tests.edge.test_daemon import config
    from tests.edge.test_sync import wait_for

    home = tmp_path / "home"
    old = Embedder(facenet_path)
    with Gallery(home / "gallery.sqlite", old.sha256) as g:
        p = FacePipeline(FaceDetector.beside(facenet_path), old)
        for name, photo in (("Lin-Manuel Miranda", "lin-manuel-miranda.png"), ("Barack Obama", "obama2.jpg")):
            g.enroll(name, sample_from_photo(clips / photo, p).embedding[None], consent=CONSENT)
        p.close()
    camera = tmp_path / "camera"  # an image-folder camera: Biden in 60 frames
    camera.mkdir()
    for i in range(60):
        (camera / f"{i:03d}.jpg").symlink_to(clips / "biden.jpg")
    app = Appliance(config(home, model_path, clips, embedder={"previous_model_path": facenet_path},
                           camera={"source": str(camera), "loop": True}))
    app.start()
    try:
        assert app.recognizer.upgrade is not None and app.enrolment.upgrade is app.recognizer.upgrade
        assert app._on_signup("enrol")
        assert wait_for(lambda: app.gallery.customers(status="pending"), timeout=90)
        (biden,) = app.gallery.customers(status="pending")

        def both_models() -> bool:  # the previous model's templates are written just after the sign-up's record
            models = app.gallery.template_models().get(biden.id, {})
            return models.get(file_sha256(model_path), 0) > 0 and models.get(old.sha256, 0) > 0

        assert wait_for(both_models, timeout=30), app.gallery.template_models().get(biden.id)
    finally:
        app.stop()


def test_a_sign_up_whose_previous_templates_cannot_be_written_is_not_kept(tmp_path, model_path, facenet_path, pipeline,
                                                                          old_pipeline, clips,  # noqa: F811
                                                                          monkeypatch):
    """The disk fills between the sign-up's record and its previous-model templates: the sign-up is erased again and
    the door says "not saved" (never a pending record its activation could not check by the previous model)."""
    import sqlite3

    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]})

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(gallery, "add_templates", full)
    screen, state = sign_up(tmp_path, model_path, facenet_path, gallery, rec, pipeline, clips / "biden.jpg")
    try:
        assert screen.snapshot()["stage"] == "not-saved"
        assert [c.id for c in gallery.customers(status=None)] == [ids["Barack Obama"]]
    finally:
        state.close()
        rec.close()
        gallery.close()
