"""During a model upgrade a pending sign-up — not confirmed by staff — never takes a regular's migration. Real models
(int8 FaceNet before, int8 SFace now, YuNet) on real photos.

Before: Obama is a regular (FaceNet, obama2.jpg) and a second sign-up of his (obama.jpg, still pending: staff will
discard it, its activation is refused as "already a regular") waits; Obama walks in and the upgrade migrated the
pending record (its old template is closer to his frames), never his own. Staff discard the duplicate and Obama is a
stranger to the new model until he is seen again — and every visit meanwhile fed the duplicate instead."""

from __future__ import annotations

from dangol_edge.config import EdgeConfig
from dangol_edge.enrol import DoorRule
from dangol_edge.gallery import AlreadyRegular
from tests.edge.test_recognition_review_fixes import (CONSENT, new_templates, old_pipeline, upgrading,  # noqa: F401
                                                       visit)


def test_a_pending_duplicate_of_a_regular_never_takes_his_migration(tmp_path, model_path, facenet_path, pipeline,
                                                                    old_pipeline, clips):  # noqa: F811
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]},
                                  pending={"Obama again": [clips / "obama.jpg"]})
    obama, again = ids["Barack Obama"], ids["Obama again"]
    out = visit(rec, [clips / "obama.jpg"] * 4)
    assert rec.upgrade.migrated == [obama], "the regular is migrated, not the pending duplicate"
    assert new_templates(gallery, obama) == 1 and new_templates(gallery, again) == 0
    assert not any(d.kind == "known" and d.customer_id == again for d in out)
    # staff still cannot activate the duplicate (the old model's check), and discard it
    rule = DoorRule.from_config(EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path}),
                                gallery.model_sha256)
    try:
        gallery.activate(again, "Barry", CONSENT, check=lambda: rule.check_pending(gallery, again))
        raise AssertionError("the duplicate was activated")
    except AlreadyRegular as exc:
        assert exc.customer.id == obama
    gallery.delete(again)
    rec.upgrade.forget(again)
    # his next visit: the new model greets him on its own
    later = visit(rec, [clips / "obama.jpg"] * 4, t0=100.0)
    assert any(d.kind == "known" and d.customer_id == obama and d.arrival for d in later)
    assert rec.upgrade.check()  # nobody else to wait for: the housekeeping pass ends the upgrade
    rec.close()
    gallery.close()


def test_more_visits_never_feed_the_duplicate(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                              clips):  # noqa: F811
    """Visits one after the other while the duplicate waits for staff: each is Obama's, never the sign-up's."""
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]},
                                  pending={"Obama again": [clips / "obama.jpg"]})
    obama, again = ids["Barack Obama"], ids["Obama again"]
    for k, photo in enumerate(["obama.jpg", "obama-720p.jpg", "obama.jpg"]):
        visit(rec, [clips / photo] * 4, t0=100.0 * k)
    assert new_templates(gallery, again) == 0 and again not in rec.upgrade.migrated
    assert obama in rec.upgrade.migrated
    rec.close()
    gallery.close()


def test_a_pending_sign_up_of_someone_new_is_still_migrated(tmp_path, model_path, facenet_path, pipeline,
                                                           old_pipeline, clips):  # noqa: F811
    """Biden signed up before the upgrade (pending, nobody's duplicate): his visit migrates his sign-up as before."""
    rec, gallery, ids = upgrading(tmp_path, model_path, facenet_path, pipeline, old_pipeline,
                                  {"Barack Obama": [clips / "obama2.jpg"]},
                                  pending={"Joe Biden": [clips / "biden.jpg"]})
    biden = ids["Joe Biden"]
    visit(rec, [clips / "knn_examples" / "train" / "biden" / "biden2.jpg"] * 8)
    assert rec.upgrade.migrated == [biden] and new_templates(gallery, biden) == 1
    rec.close()
    gallery.close()
