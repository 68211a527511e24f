"""Model upgrades keep every regular (FaceNet → SFace on the real clip, no re-enrolment) and enrolment
keeps several varied templates."""

from __future__ import annotations

import json

import numpy as np

from dangol_edge.config import EdgeConfig
from dangol_edge.detect import FaceDetector
from dangol_edge.embed import Embedder
from dangol_edge.enrol import Sample, SampleCollector, sample_from_photo
from dangol_edge.faces import FacePipeline
from dangol_edge.gallery import Gallery
from dangol_edge.recognition import Recognizer
from dangol_edge.sources import open_source
from dangol_edge.upgrade import STARTED_KEY


def run_clip(rec: Recognizer, clip) -> list:
    decisions = []
    with open_source(str(clip)) as src:
        for frame in src.frames():
            decisions += rec.process(frame).decisions
    return decisions


def test_facenet_gallery_upgrades_to_sface_on_the_clip_without_reenrolment(tmp_path, clips, model_path, facenet_path):
    home = tmp_path / "home"
    old = Embedder(facenet_path)
    # yesterday: Lin-Manuel was enrolled with FaceNet, and Obama too (he never comes to this door)
    with Gallery(home / "gallery.sqlite", old.sha256) as g:
        p = FacePipeline(FaceDetector.beside(facenet_path), old)
        lin = g.enroll("Lin-Manuel Miranda", sample_from_photo(clips / "lin-manuel-miranda.png", p).embedding[None])
        obama = g.enroll("Barack Obama", sample_from_photo(clips / "obama.jpg", p).embedding[None])
        p.close()
    # today: the device gets SFace; the gallery has no SFace template at all
    cfg = EdgeConfig(home=home, embedder={"model_path": model_path, "previous_model_path": facenet_path})
    gallery = Gallery(cfg.gallery_path, Embedder(model_path).sha256).open()
    assert gallery.stale_templates == 2 and gallery.size == 0
    rec = Recognizer.from_config(cfg, gallery=gallery)
    assert rec.upgrade is not None and gallery.meta(STARTED_KEY) is not None
    decisions = run_clip(rec, clips / "short_hamilton_clip.mp4")
    # the old model recognised him confidently and his SFace template came from the same frame
    models = gallery.template_models()
    assert models[lin.id].get(gallery.model_sha256, 0) >= 1
    assert gallery.model_sha256 not in models[obama.id]  # nobody else got a template
    assert lin.id in rec.upgrade.migrated and rec.upgrade.migrated == [lin.id]
    # …and the new model then recognised him on its own: an arrival, no re-enrolment
    assert any(d.arrival and d.customer_id == lin.id for d in decisions)
    assert not any(d.arrival and d.customer_id == obama.id for d in decisions)
    assert not rec.upgrade.done  # Obama is still waiting for his first visit
    rec.close()
    # a second daemon start resumes the same upgrade (same start time) and ends it after the period
    started = gallery.meta(STARTED_KEY)
    rec2 = Recognizer.from_config(cfg, gallery=gallery)
    assert gallery.meta(STARTED_KEY) == started
    from datetime import datetime, timedelta, timezone

    assert rec2.upgrade.check(datetime.now(timezone.utc) + timedelta(days=31))
    assert gallery.stale_templates == 0 and obama.id not in gallery.template_models()  # must re-enrol
    assert gallery.meta(STARTED_KEY) is None
    rec2.close()
    gallery.close()


def test_cli_lists_each_customers_template_models(edge_env, capsys, clips):
    from dangol_edge.cli import main

    assert main(["enroll", "--name", "Barack Obama", "--image", str(clips / "obama.jpg"), str(clips / "obama2.jpg")]) == 0
    capsys.readouterr()
    assert main(["customers", "list"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["templates"] == 2 and list(row["template_models"].values()) == [2]


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_collector_keeps_varied_good_samples_not_near_duplicates():
    crop = np.zeros((112, 112, 3), np.uint8)
    col = SampleCollector(wanted=2, pool=4, min_gap_frames=1)
    # three near-identical frontal frames, then one turned a little (a different view)
    views = [unit([1, 0.01 * i, 0]) for i in range(3)] + [unit([0.8, 0.6, 0])]
    for i, (e, q) in enumerate(zip(views, [0.9, 0.95, 0.9, 0.7])):
        col.candidates.append(Sample(e, q, crop))
    chosen = col.select()
    assert [round(s.quality, 2) for s in chosen] == [0.95, 0.7]  # the best, then the different view
    # the capture rule: a gap between frames, only gated faces, and a bounded pool
    col = SampleCollector(wanted=1, pool=2, min_gap_frames=3)
    assert col.due(0) and not col.due(-1)
    assert not col.offer(None, 0) and col.candidates == []


def test_live_enrolment_takes_several_varied_templates(edge_env, capsys, clips):
    from dangol_edge.cli import main

    code = main(["enroll", "--name", "Lin-Manuel Miranda", "--source", str(clips / "short_hamilton_clip.mp4")])
    assert code == 0
    c = json.loads(capsys.readouterr().out)["enrolled"]
    assert c["templates"] == EdgeConfig().enrol.templates  # five, chosen from a pool of fifteen
    g = Gallery(edge_env / "gallery.sqlite", "x").open()
    t = np.stack([r["embedding"] for r in g.templates(c["id"])])
    sims = t @ t.T
    assert sims[np.triu_indices(len(t), 1)].max() < 0.995  # no two templates are copies of one frame
    g.close()
