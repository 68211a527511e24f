"""The sign-up's "more than one face" rule (:class:`SecondFace`): two people in front of the camera during a sign-up
end it as ``failed`` (``why="several"``) with nothing stored, while a passer-by in a few frames does not. Used by
:class:`~dangol_edge.workers.enrolment.ButtonEnrolment` on the recognition thread."""

from __future__ import annotations

SECOND_FACE_FRAMES = 5
"""Frames of a sign-up in which a second face may pass every quality gate (detector score, size, pose, roll, blur: a
frontal face close to the camera) beside the largest one before the sign-up fails as "more than one face"
(``failed``, ``why="several"``), with nothing stored — once those frames are also at least :data:`SECOND_FACE_SHARE`
of the frames looked at (the frames due for a candidate, :meth:`~dangol_edge.enrol.SampleCollector.due`, whose
largest face passed every gate: an empty camera or a face still too small while the customer walks up counts in
neither), counted in total, not in a row, and only for a second face at least :data:`SECOND_FACE_WIDTH` as wide as
the first (somebody beside the customer, not the queue behind). The pool takes the largest face of each frame, and
which of two people is larger can change from frame to frame, so two people at the camera may be stored as one
customer. Someone passing behind is rarely frontal and close for long: in the real Hamilton clip (30 fps) a second
face passes every gate in 3 consecutive frames of 275, and that must not fail a sign-up; two people side by side pass
in every frame and end it at the 6th frame looked at (about 1 s at 10 fps: frames 2 apart once candidates are kept),
well before the pool of 15 good faces 2 frames apart (at least 29 frames) is full. The photo enrolment refuses a
photo with two faces outright (:func:`~dangol_edge.enrol.sample_from_photo`)."""

SECOND_FACE_SHARE = 0.5
"""Share of the frames looked at (due, with a good largest face: :data:`SECOND_FACE_FRAMES`) with a second good face of
comparable size that fails a sign-up (with more than :data:`SECOND_FACE_FRAMES` of them). Frames without a good face
do not dilute it: two people who reach the camera seconds after the sign-up started fail it as well. Two people side
by side show both faces in nearly every frame; a door camera's passer-by, or a face in the background of some photos
of an image-folder camera (LFW photos: 6 of 28 frames in ``tests/edge/test_duplicate_signup.py``), in a minority of
them."""

SECOND_FACE_WIDTH = 0.6
"""A second face counts when its box is at least this fraction of the largest face's width (px/px): a person beside
the customer is about as close to the camera; one waiting behind is further away and smaller."""

def _width(face) -> float:
    """Width of a face's detection box, px."""
    x0, _, x1, _ = face.detection.box
    return x1 - x0


class SecondFace:
    """Counts, over one sign-up, the frames looked at (due, with a good largest face) and those with a second good face
    of comparable size beside it (:data:`SECOND_FACE_WIDTH`).

    Attributes:
        looked: frames whose largest face passed every gate (:data:`SECOND_FACE_SHARE`'s denominator).
        second: those of them with a second good face at least :data:`SECOND_FACE_WIDTH` as wide.
    """

    def __init__(self) -> None:
        self.looked = 0
        self.second = 0

    def several(self, faces: list) -> bool:
        """Count one due frame's faces (:class:`~dangol_edge.faces.Face`, largest first, at most two looked at);
        True when the sign-up must fail as "more than one face": more than :data:`SECOND_FACE_FRAMES` frames with a
        second face, and at least :data:`SECOND_FACE_SHARE` of the frames looked at."""
        if not faces or faces[0].embedding is None:  # only frames with a good face count (SECOND_FACE_SHARE)
            return False
        self.looked += 1
        beside = faces[1] if len(faces) > 1 else None
        if beside is not None and beside.embedding is not None and \
                _width(beside) >= SECOND_FACE_WIDTH * _width(faces[0]):
            self.second += 1
            return self.second > SECOND_FACE_FRAMES and self.second >= SECOND_FACE_SHARE * self.looked
        return False
