"""Why a live sign-up failed, as staff are told it: "no good face" only when there was none.

Real frames only: LFW photos (250x250 px) of the two people with the most photos in shared/data, shown in turns of
two frames each, so that the candidates a sign-up keeps (every second frame at the door, ``min_gap_frames`` 2)
alternate between them. With the door's pool of 3 × ``enrol.templates`` candidates two people never make it fail
(one of them always has at least half the pool: measured, 300 frames enrol the first person, 8 of 15 alike); it
fails when ``enrol.max_frames`` ends it first: at 16 frames, 8 good faces of which 4 are one person. That was logged
"enrolment failed: no good face in 16 frames", and so was one person whose 5 good faces in 10 frames were too few.
"""

from __future__ import annotations

import logging

import pytest

from dangol_edge.enrol import EnrolmentError, SampleCollector, samples_from_source
from dangol_edge.sources import Frame, ImageFolderSource, read_image
from tests.edge.test_workers import _signup


@pytest.fixture(scope="module")
def two_people(data_dir):
    """``{name: [photo path, ...]}`` of the two LFW people with the most photos."""
    root = data_dir / "faces"
    rows = [line.split("\t") for line in (root / "people.txt").read_text().splitlines()[1:]]
    names = [n for _, n in sorted(((-int(c), n) for n, c in rows))[:2]]
    return {n: sorted((root / "lfw-deepfunneled" / n).glob("*.jpg")) for n in names}


def turns(people: dict, n: int, run: int = 2, count: int | None = None) -> list:
    """Photo paths for ``n`` frames: the first ``count`` (default all) people in turns of ``run`` frames each, every
    person's photos in order."""
    names = list(people)[:count]
    out = []
    for i in range(n):
        turn = i // run
        photos = people[names[turn % len(names)]]
        out.append(photos[(turn // len(names)) % len(photos)])
    return out


def frames(paths) -> list[Frame]:
    """RGB frames of the photos, indexed in order."""
    return [Frame(rgb=read_image(p), ts=i / 10, index=i) for i, p in enumerate(paths)]


def collect(paths, pipeline, max_frames: int) -> SampleCollector:
    """The door's capture rule (:class:`SampleCollector` with its defaults, the largest face of each due frame) over
    ``max_frames`` frames."""
    col = SampleCollector(5)
    for frame in frames(paths[:max_frames]):
        if col.due(frame.index):
            faces = pipeline.process(frame.rgb, max_faces=1)
            col.offer(faces[0] if faces else None, frame.index)
    return col


def test_two_people_are_told_as_faces_that_did_not_agree(two_people, pipeline):
    col = collect(turns(two_people, 16), pipeline, 16)
    assert not col.full and (len(col.candidates), len(col.consistent())) == (8, 4)
    reason = col.shortfall(16)
    assert "no good face" not in reason
    assert reason == ("faces did not agree: only 4 of the 8 good faces in 16 frames are one person "
                      "(more than one person in front of the camera?)")


def test_one_person_with_too_few_good_faces(two_people, pipeline):
    col = collect(turns(two_people, 10, count=1), pipeline, 10)
    assert (len(col.candidates), len(col.consistent())) == (5, 5)
    assert col.shortfall(10) == "too few good faces: 5 in 10 frames, 15 needed"


def test_no_good_face_is_still_no_good_face():
    assert SampleCollector(5).shortfall(300) == "no good face in 300 frames"


def test_enrol_from_a_source_names_the_disagreement(two_people, pipeline, tmp_path):
    """``dangol-edge enroll --source FOLDER`` (frames 3 apart: turns of three) says the same."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, path in enumerate(turns(two_people, 24, run=3)):
        (folder / f"{i:03d}.jpg").symlink_to(path)
    with ImageFolderSource(folder) as src, pytest.raises(EnrolmentError) as err:
        samples_from_source(src, pipeline, wanted=5, max_frames=24)
    assert str(err.value) == (f"{folder}: faces did not agree: only 4 of the 8 good faces in 24 frames are one "
                              "person (more than one person in front of the camera?); enrol with one person in "
                              "front of the camera")


def test_door_sign_up_logs_the_disagreement(two_people, pipeline, model_path, tmp_path, caplog):
    """The sign-up at the door (button or staff page) ends as ``failed`` and its log names the disagreement."""
    e, gallery, state, screen = _signup(tmp_path, model_path, max_frames=16)
    caplog.set_level(logging.INFO, logger="dangol_edge")
    assert e.ask("enrol", source="test")
    e.handle_requests()
    try:
        for frame in frames(turns(two_people, 20)):
            if not e.active:
                break
            e.step(frame, pipeline)
        assert screen.snapshot()["stage"] == "failed" and screen.snapshot()["why"] == "several"
        failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("enrolment failed")]
        assert failed == ["enrolment failed: faces did not agree: only 4 of the 8 good faces in 16 frames are one "
                          "person (more than one person in front of the camera?)"]
    finally:
        gallery.close()
        state.close()
