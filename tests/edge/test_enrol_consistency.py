"""Enrolment keeps one person: a passer-by's frame in the candidate pool is never kept as a template.

Real embeddings only: the LFW embeddings the build made with the int8 SFace file
(``sface-int8.lfw-embeddings.npz``, checked against the model by sha256) and the real Hamilton clip, whose
largest face is Lin-Manuel Miranda except for frames 48-71 (other people: 0.01-0.20 similar to his photo,
his own frames 0.44-0.77)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dangol_edge.enrol import CONSISTENCY_MIN_SIMILARITY, Sample, SampleCollector, samples_from_source
from dangol_edge.sources import open_source, read_image


@pytest.fixture(scope="module")
def lfw_people(data_dir, model_path):
    """``(emb (N, 128) float32 unit rows, {name: [row, ...]})`` of the stored LFW embeddings."""
    from dangol_models.build import load_lfw_embeddings
    from dangol_models.lfw import LFWDataset

    lfw = LFWDataset(data_dir / "faces")
    emb = load_lfw_embeddings(model_path, lfw)
    idx = emb.index()
    return emb.emb, {n: [idx[p] for p in files] for n, files in lfw.identities().items()}


def row_of(emb: np.ndarray, s: Sample) -> int:
    """The LFW row a sample's embedding came from (exact match)."""
    return int(np.flatnonzero((emb == s.embedding).all(1))[0])


def test_a_passer_by_in_the_pool_is_never_kept(lfw_people):
    """14 frames of one person + 1 of someone else, similar quality (all passed the gates): 5 templates are kept,
    always from the person, still varied (several of them), over many people and passers-by."""
    emb, people = lfw_people
    regulars = [n for n, rows in people.items() if len(rows) >= 14]
    assert len(regulars) >= 5
    names = list(people)
    rng = np.random.default_rng(0)
    crop = np.zeros((112, 112, 3), np.uint8)
    for t in range(200):
        name = regulars[t % len(regulars)]
        own = rng.choice(people[name], 14, replace=False)
        other = names[rng.integers(len(names))]
        while other == name:
            other = names[rng.integers(len(names))]
        stranger = int(people[other][rng.integers(len(people[other]))])
        rows = np.insert(own, 7, stranger)  # passing by mid-pool (one last may keep the pool from being full)
        col = SampleCollector(5, min_gap_frames=1)
        for r, q in zip(rows, rng.uniform(0.55, 0.65, len(rows))):
            col.candidates.append(Sample(emb[r], float(q), crop))
        assert col.full
        chosen = col.select()
        kept = [row_of(emb, s) for s in chosen]
        assert stranger not in kept, (name, other)  # the defect: the farthest point, kept 200/200 times
        assert len(kept) == 5 and len(set(kept)) == 5


def test_too_few_consistent_faces_keeps_collecting(lfw_people):
    """A pool that is mostly strangers is not ``full``: the sign-up goes on (offers are still taken, the pool
    stays bounded) until enough faces of one person arrive; then only that person's faces are selected."""
    emb, people = lfw_people
    name = next(n for n, rows in people.items() if len(rows) >= 14)
    others = [rows[0] for n, rows in people.items() if n != name][:12]
    own = people[name][:10]

    def face(r):
        return SimpleNamespace(embedding=emb[r], quality=0.6, crop=np.zeros((112, 112, 3), np.uint8))

    col = SampleCollector(5, pool=15, min_gap_frames=1)
    frame = 0
    for r in own[:3] + others:  # 3 of the person, 12 different passers-by: 15 candidates, none consistent enough
        assert col.offer(face(r), frame)
        frame += 1
    assert len(col.candidates) == 15 and not col.full
    for r in own[3:5]:
        assert not col.full
        assert col.offer(face(r), frame)  # still collecting, the least consistent candidate makes room
        assert len(col.candidates) == col.pool
        frame += 1
    assert col.full and not col.offer(face(own[5]), frame)  # 5 of the person: done
    chosen = {row_of(emb, s) for s in col.select()}
    assert len(chosen) == 5 and chosen <= set(own)


def test_consistency_bound_sits_between_same_and_different_people(lfw_people):
    """The documented bound against the stored LFW embeddings: no face of a person with ≥ 5 photos is that far
    from the person's medoid (lowest measured 0.46), and almost no one else is that close (0.03 % measured)."""
    emb, people = lfw_people
    same, other = [], []
    for name, rows in people.items():
        if len(rows) < 5:
            continue
        s = emb[rows] @ emb[rows].T
        m = rows[int(np.argmax(s.sum(1)))]
        same += [float(emb[m] @ emb[r]) for r in rows if r != m]
        mask = np.ones(len(emb), bool)
        mask[rows] = False
        other.append(emb[mask] @ emb[m])
    other = np.concatenate(other)
    assert min(same) > CONSISTENCY_MIN_SIMILARITY + 0.05
    assert np.mean(other >= CONSISTENCY_MIN_SIMILARITY) < 0.001


def test_live_enrolment_from_the_clip_keeps_only_him(pipeline, clips):
    """``dangol-edge enroll --source`` on the real clip (pool of 15 frames, 3 apart, includes frames 48, 68 and
    71 of other people): all five templates are Lin-Manuel Miranda's."""
    lin = pipeline.process(read_image(clips / "lin-manuel-miranda.png"))[0].embedding
    with open_source(str(clips / "short_hamilton_clip.mp4")) as src:
        samples = samples_from_source(src, pipeline, wanted=5, max_frames=300)
    sims = [float(s.embedding @ lin) for s in samples]
    assert len(samples) == 5
    assert min(sims) > 0.4, sims  # his frames 0.44-0.77 to his photo, the others' 0.01-0.20


def test_a_source_that_starts_its_frame_numbers_again_does_not_stall_the_sign_up(lfw_people):
    """A looping clip or folder, or a camera that reconnected, numbers its frames from 0 again: the collector kept
    waiting for a frame number past the last candidate's (a 10-image folder never got there)."""
    emb, people = lfw_people
    name = next(n for n, rows in people.items() if len(rows) >= 20)
    rows = people[name][:20]
    crop = np.zeros((112, 112, 3), np.uint8)
    col = SampleCollector(5, pool=10, min_gap_frames=3)
    offered = 0
    for lap in range(8):                                   # the same 10 frame numbers, lap after lap
        for index in range(10):
            face = SimpleNamespace(embedding=emb[rows[offered % len(rows)]], quality=0.6, crop=crop)
            offered += 1
            col.offer(face, index)
            if col.full:
                break
        if col.full:
            break
    assert col.full and len(col.candidates) == 10          # before: 4 candidates (frames 0, 3, 6, 9), then none
