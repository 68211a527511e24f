"""``dangol-edge enroll`` during a model upgrade: a regular the upgrade has not migrated yet (FaceNet templates only,
SFace current) is refused as "already enrolled", as without an upgrade — never stored as a second record. Real models
(int8 FaceNet before, int8 SFace now, YuNet) on real photos, the CLI run in-process.

Before: the command checked the photos' SFace embeddings against the regulars' SFace templates only, Obama had none, so
a second record of him was stored; the door greeted it from then on and the upgrade never migrated the real one."""

from __future__ import annotations

from dangol_edge.config import EdgeConfig
from dangol_edge.enrol import enroll, sample_from_photo
from dangol_edge.gallery import Gallery
from tests.edge.test_cli import gallery_rows, run
from tests.edge.test_recognition_review_fixes import CONSENT, old_pipeline  # noqa: F401


def facenet_regular(home, old_pipeline, name, photo) -> str:  # noqa: F811
    """``name`` enrolled (active) from ``photo`` by FaceNet, before the upgrade; returns the id."""
    with Gallery(EdgeConfig(home=home).gallery_path, old_pipeline.embedder.sha256) as old:
        return enroll(old, name, [sample_from_photo(photo, old_pipeline)], consent=CONSENT).id


def models_of(home, model_path, customer_id) -> dict[str, int]:
    from dangol_edge.embed import Embedder

    with Gallery(EdgeConfig(home=home).gallery_path, Embedder(model_path).sha256) as g:
        return g.template_models().get(customer_id, {})


def test_a_not_yet_migrated_regular_is_refused_and_a_newcomer_keeps_both_models(
        edge_env, monkeypatch, capsys, clips, model_path, facenet_path, old_pipeline):  # noqa: F811
    monkeypatch.setenv("DANGOL_EMBEDDER__PREVIOUS_MODEL_PATH", str(facenet_path))
    obama = facenet_regular(edge_env, old_pipeline, "Barack Obama", clips / "obama2.jpg")
    assert gallery_rows(edge_env) == (1, 1)

    code, out, err = run(capsys, "enroll", "--name", "X", "--image", str(clips / "obama.jpg"))
    assert code == 2 and out == []
    assert "already enrolled as 'Barack Obama'" in err and obama in err and "nothing saved" in err
    assert gallery_rows(edge_env) == (1, 1)  # nothing stored

    code, out, _ = run(capsys, "enroll", "--name", "Joe Biden", "--image", str(clips / "biden.jpg"))
    assert code == 0
    biden = out[0]["enrolled"]["id"]
    facenet_sha = old_pipeline.embedder.sha256
    models = models_of(edge_env, model_path, biden)
    assert models.get(facenet_sha) == 1 and sum(models.values()) == 2, models  # one template of each model
    assert models_of(edge_env, model_path, obama) == {facenet_sha: 1}  # the regular untouched


def test_without_previous_model_templates_nothing_changes(edge_env, monkeypatch, capsys, clips, model_path,
                                                          facenet_path):
    """The previous model is named but the gallery holds none of its templates (the upgrade is over): the enrolment
    stores the current model's templates only."""
    monkeypatch.setenv("DANGOL_EMBEDDER__PREVIOUS_MODEL_PATH", str(facenet_path))
    code, out, _ = run(capsys, "enroll", "--name", "Joe Biden", "--image", str(clips / "biden.jpg"))
    assert code == 0
    biden = out[0]["enrolled"]["id"]
    assert list(models_of(edge_env, model_path, biden).values()) == [1]
