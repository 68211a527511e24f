"""Whether a run of accepted frames on a track is a new face: the tracker's new-face watch (edge/tracker.py).

A track not decided known (a stranger stood there, or nobody was decided yet) is ended when a run of ``min_votes``
consecutive frames accepted as one customer shows a face the track's earlier frames do not: somebody stepped into
the stranger's spot. The person stepping in is often not accepted at once (turning in, looking down, a run broken by
one unknown frame), so their own first frames — the **lead-in**, the frames just before the run that resemble the
run — are passed over, and the run is compared with the :data:`SAME_FACE_FRAMES` frames before the lead-in. A
stranger falsely accepted for a few frames in a row resembles every frame of theirs before, the lead-in reaches the
start of what the track remembers, and nothing is new.

A person changing is a jump between frames; one person turning their head is not: on the stranger bench's head-pose
clip a profile at the track's start is below the threshold to the frontal run while every frame resembles the next.
So each frame before the lead-in must be another face than the run (its mean) *and* than every frame of the lead-in
and of the run; a slow turn has a lead-in frame that resembles the frame before it and is not a new face.

Faces are compared as in enrolment's consistency check: cosine similarity of unit embeddings against
:data:`~dangol_edge.enrol.CONSISTENCY_MIN_SIMILARITY` (at or above: the same face).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .enrol import CONSISTENCY_MIN_SIMILARITY

#: Frames before the lead-in a run is compared with: each must be another face than the run's.
SAME_FACE_FRAMES = 5

#: The longest lead-in (frames of the run's face before the run) the watch can pass over: 1 s at 10 processed fps.
#: A longer one reaches beyond the track's memory and the watch cannot tell (the track is not ended).
LEAD_IN_FRAMES = 10


class Seen(NamedTuple):
    """One embedded frame of a track, as its watch remembers it: ``ts`` seconds, ``customer_id`` the accepted
    customer or None, ``score`` the best match's similarity, ``embedding`` the ``(D,) float32`` unit embedding or
    None (not given: cannot be compared)."""

    ts: float
    customer_id: str | None
    score: float
    embedding: np.ndarray | None


def memory_frames(min_votes: int) -> int:
    """Embedded frames a track not decided known keeps for its watch (a run of ``min_votes``, its lead-in, and the
    frames before it): :data:`SAME_FACE_FRAMES` + :data:`LEAD_IN_FRAMES` + ``min_votes``."""
    return SAME_FACE_FRAMES + LEAD_IN_FRAMES + min_votes


def new_face_start(frames: list[Seen], run: int, cut: bool) -> int | None:
    """Where the face of the run (the last ``run`` of ``frames``, oldest first) started on the track, when it is a
    new face there; else None.

    The run's face is the normalised mean of its embeddings. Going back from the run, frames whose embedding is at
    or above :data:`~dangol_edge.enrol.CONSISTENCY_MIN_SIMILARITY` to it are its lead-in; the up to
    :data:`SAME_FACE_FRAMES` frames before the lead-in must all have embeddings below it to the run's face and to
    each embedding of the lead-in and the run (see the module docstring). ``cut`` tells that the
    track had frames older than ``frames`` (its memory is full): then the comparison needs all
    :data:`SAME_FACE_FRAMES` of them in ``frames``, or the watch cannot tell.

    Returns:
        The index in ``frames`` of the lead-in's first frame (of the run's first frame when there is no lead-in);
        None when the run has no embedding, no frame before the lead-in is remembered (the track always showed this
        face, as far as it remembers), a frame before it has no embedding, or one of them resembles the run's face or
        one of the lead-in's or the run's frames.
    """
    faces = [f.embedding for f in frames[len(frames) - run:] if f.embedding is not None]
    if not faces:
        return None
    mean = np.mean(faces, axis=0)
    mean /= max(float(np.linalg.norm(mean)), 1e-9)

    def same(f: Seen) -> bool:
        return f.embedding is not None and float(mean @ f.embedding) >= CONSISTENCY_MIN_SIMILARITY

    start = len(frames) - run
    while start > 0 and same(frames[start - 1]):
        start -= 1
    before = frames[max(0, start - SAME_FACE_FRAMES):start]
    if not before or (cut and len(before) < SAME_FACE_FRAMES):
        return None
    if any(f.embedding is None for f in before):
        return None
    new = np.stack([mean] + [f.embedding for f in frames[start:] if f.embedding is not None])
    old = np.stack([f.embedding for f in before])
    if float((old @ new.T).max()) >= CONSISTENCY_MIN_SIMILARITY:
        return None
    return start
