"""Following faces across frames, voting on identity, and emitting one arrival per visit.

A track is continued by the detection with the highest IoU above ``iou_match``, or failing that by a
similar-sized box within one face width, greedily, largest faces first. The centre-distance fallback only
bridges *dropped* frames (recognition behind, a walking face moved further than its overlap allows): it
continues a track seen in the previous processed frame, never one that processed frames have missed (the
person left; a face near their place is someone new). Each embedded frame casts a vote: the accepted customer
id, or "unknown". A track is decided

* **known** once one customer has ``min_votes`` votes and at least ``vote_share`` of the track's
  embedded frames; this is an **arrival** unless the same customer arrived less than ``cooldown_s``
  ago (then a decision with ``arrival = False``, reason ``cooldown``);
* **unknown** after ``unknown_after`` embedded frames without a known decision (a later known
  decision on the same track still turns into an arrival).

Every track is watched for the next person at the same spot (the one who stood there left, and somebody else
stepped into the same place within ``max_gap_s``):

* a track decided known, when ``min_votes`` accepted frames in a row (unknown frames between them allowed, none of
  the decided customer) are one other customer;
* a track not decided known (undecided, or decided unknown: a stranger stood there), when ``min_votes``
  *consecutive* embedded frames are accepted as one customer (an unknown frame or another customer's frame breaks
  the run), the track's own vote does not decide it known at that frame anyway, and the run's face is a new face
  (:mod:`dangol_edge.tracker_faces`): the frames just before the run that show the run's face (the **lead-in**: the
  person stepping in, not yet accepted, or a run of theirs broken by an unknown frame) are passed over, and the
  :data:`SAME_FACE_FRAMES` frames before the lead-in are each another face (the mean embedding of the run below
  :data:`~dangol_edge.enrol.CONSISTENCY_MIN_SIMILARITY` to each). Scattered false accepts of a stranger never form
  such a run, and a stranger who turns to the camera and is falsely accepted for a few frames in a row is still the
  same face as every frame of theirs before, so neither greets anybody. The watch cannot tell — and the track is not
  ended — without embeddings (:attr:`Observation.embedding`), or when the faces before the lead-in are no longer in
  the track's memory.

That track ends and a new one starts with those frames (their votes, and for a known track the unknown frames since
the first of them; for a track not decided known the lead-in's votes, so the new person's track is the one they
would have had if the tracker had told them apart on arrival), and the new person is decided — greeted, or counted —
by the same rule. Unknown frames alone never end a track: a regular looking down or turning away is not a new
visitor.

Nothing about an unknown track outlives it: no image is kept, and the embeddings a track not decided known holds for
its watch (its latest embedded frames, at most :func:`~dangol_edge.tracker_faces.memory_frames` of them) are memory
only, gone with the track.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from .config import TrackerConfig
from .tracker_faces import SAME_FACE_FRAMES, Seen, memory_frames, new_face_start


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (px)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _association_cost(track_box, box, iou_min: float, fallback: bool = True) -> float:
    """Cost of continuing a track with a box (lower is better; inf = no match).

    Overlap (IoU ≥ ``iou_min``) is the first choice. When recognition falls behind and frames are
    dropped, a walking face can move more than its overlap allows between two processed frames, so a
    box of similar size (0.5–2× the width) whose centre is within one track-box width also continues the
    track, at a higher cost — only when ``fallback`` (the track was seen in the previous processed frame).
    """
    v = iou(track_box, box)
    if v >= iou_min:
        return 1.0 - v
    if not fallback:
        return float("inf")
    tw, bw = track_box[2] - track_box[0], box[2] - box[0]
    if tw <= 0 or bw <= 0 or not 0.5 <= bw / tw <= 2.0:
        return float("inf")
    dx = (track_box[0] + track_box[2] - box[0] - box[2]) / 2
    dy = (track_box[1] + track_box[3] - box[1] - box[3]) / 2
    d = (dx * dx + dy * dy) ** 0.5 / tw
    return 1.0 + d if d <= 1.0 else float("inf")


@dataclass
class Observation:
    """One face in one frame, as the tracker sees it.

    Attributes:
        box: ``(x0, y0, x1, y1)`` px.  customer_id: accepted match or None.
        score: similarity of the best match (-1 when not embedded).  embedded: False when a quality
        gate rejected the face (it continues the track but does not vote).
        embedding: the face's ``(D,) float32`` unit embedding, or None; the watch of a track not decided known
        compares faces with it (see the module docstring).
        track_id: set by :meth:`Tracker.update`: the track the face continued or started.
    """

    box: tuple[float, float, float, float]
    customer_id: str | None = None
    score: float = -1.0
    embedded: bool = True
    track_id: int | None = None
    embedding: np.ndarray | None = None


@dataclass
class Decision:
    """A track's identity decision.

    Attributes:
        kind: ``known`` or ``unknown``.  arrival: True when this is the visit's one arrival.
        reason: why ``arrival`` is False for a known decision (``cooldown``), else "".
        ts: frame timestamp of the decision, seconds.  first_ts: when the track started, seconds.
        votes: votes for the decided identity.  frames: embedded frames of the track so far.
        score: best similarity seen for the customer (-1 for unknown).
    """

    kind: str
    track_id: int
    ts: float
    first_ts: float
    votes: int
    frames: int
    customer_id: str | None = None
    score: float = -1.0
    arrival: bool = False
    reason: str = ""


@dataclass
class Track:
    """State of one followed face (times in seconds).

    Once decided known (``decided_id``), ``other`` is the customer of the latest accepted frames when it is not
    ``decided_id``: ``other_run`` accepted frames of them in a row (since ``other_ts``, best score
    ``other_best``), within ``other_frames`` embedded frames. Before that, ``other`` is the customer of the latest
    embedded frames while they are all accepted as them (``other_run`` of them; None after an unknown frame) and
    ``faces`` the track's latest embedded frames (:class:`~dangol_edge.tracker_faces.Seen`, oldest first; bounded by the
    tracker: :func:`~dangol_edge.tracker_faces.memory_frames`). See the module docstring.
    """

    id: int
    box: tuple[float, float, float, float]
    first_ts: float
    last_ts: float
    votes: Counter = field(default_factory=Counter)
    best: dict = field(default_factory=dict)
    frames: int = 0
    decided_known: bool = False
    decided_unknown: bool = False
    decided_id: str | None = None
    other: str | None = None
    other_run: int = 0
    other_frames: int = 0
    other_ts: float = 0.0
    other_best: float = -1.0
    faces: deque = field(default_factory=lambda: deque(maxlen=SAME_FACE_FRAMES))


class Tracker:
    """Associates observations to tracks and decides identities (see module docstring).

    Args:
        config: thresholds; timestamps are seconds on one clock (video position or monotonic).
    """

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)
        self._last_arrival: dict[str, float] = {}
        self._forgotten: deque[str] = deque()  # erased customers, applied by the next update (any thread appends)
        self._prev_ts: float | None = None  # the previous processed frame's time: which tracks it saw
        self._memory = memory_frames(self.config.min_votes)  # frames a track not decided known keeps for its watch

    def update(self, ts: float, observations: list[Observation]) -> list[Decision]:
        """Feed one frame's observations (time ``ts`` seconds; call it for every processed frame, with or without
        faces); returns decisions made at this frame and sets each observation's ``track_id``."""
        c = self.config
        self._apply_forgotten()
        self.tracks = [t for t in self.tracks if ts - t.last_ts <= c.max_gap_s]
        free = list(self.tracks)
        prev, self._prev_ts = self._prev_ts, ts
        decisions: list[Decision] = []
        for obs in sorted(observations, key=lambda o: (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]), reverse=True):
            best, best_cost = None, float("inf")
            for t in free:
                cost = _association_cost(t.box, obs.box, c.iou_match, fallback=prev is not None and t.last_ts >= prev)
                if cost < best_cost:
                    best, best_cost = t, cost
            if best is None:
                best = Track(next(self._ids), obs.box, ts, ts, faces=deque(maxlen=self._memory))
                self.tracks.append(best)
            else:
                free.remove(best)
            best.box, best.last_ts = obs.box, ts
            if obs.embedded:
                best.frames += 1
                key = obs.customer_id or ""
                best.votes[key] += 1
                if obs.customer_id:
                    best.best[key] = max(best.best.get(key, -1.0), obs.score)
                best = self._watch(best, obs, ts) if best.decided_known else self._watch_undecided(best, obs, ts)
            obs.track_id = best.id
            d = self._decide(best, ts)
            if d:
                decisions.append(d)
        return decisions

    def _watch(self, t: Track, obs: Observation, ts: float) -> Track:
        """After a known decision: follow the run of accepted frames of another customer; at ``min_votes`` of them
        end ``t`` and return the new track that starts with them (else ``t``)."""
        if obs.customer_id == t.decided_id:
            t.other, t.other_run, t.other_frames = None, 0, 0
            return t
        if t.other is not None:
            t.other_frames += 1
        if obs.customer_id is None:
            return t
        if obs.customer_id != t.other:
            t.other, t.other_run, t.other_frames, t.other_ts, t.other_best = obs.customer_id, 0, 1, ts, -1.0
        t.other_run += 1
        t.other_best = max(t.other_best, obs.score)
        if t.other_run < self.config.min_votes:
            return t
        votes = Counter({t.other: t.other_run})
        if t.other_frames > t.other_run:
            votes[""] = t.other_frames - t.other_run
        return self._split(t, obs.box, t.other_ts, ts, votes, {t.other: t.other_best}, t.other_frames)

    def _watch_undecided(self, t: Track, obs: Observation, ts: float) -> Track:
        """Before a known decision (undecided, or decided unknown): follow the run of consecutive accepted frames of
        one customer (an unknown frame or another customer's ends it); at its ``min_votes``-th frame, unless the
        track's vote decides it known now anyway or the run's face is not a new face
        (:func:`~dangol_edge.tracker_faces.new_face_start`), end ``t`` and return the new track that starts with the
        run's lead-in and the run (else ``t``)."""
        t.faces.append(Seen(ts, obs.customer_id, obs.score, obs.embedding))
        if obs.customer_id is None:
            t.other, t.other_run = None, 0
            return t
        if obs.customer_id != t.other:
            t.other, t.other_run = obs.customer_id, 0
        t.other_run += 1
        if t.other_run != self.config.min_votes or self._elected(t) is not None:
            return t
        frames = list(t.faces)
        start = new_face_start(frames, self.config.min_votes, cut=t.frames > len(frames))
        if start is None:
            return t
        kept = frames[start:]
        votes = Counter(f.customer_id or "" for f in kept)
        best: dict[str, float] = {}
        for f in kept:
            if f.customer_id:
                best[f.customer_id] = max(best.get(f.customer_id, -1.0), f.score)
        new = self._split(t, obs.box, kept[0].ts, ts, votes, best, len(kept))
        new.faces.extend(kept)
        return new

    def _split(self, t: Track, box, first_ts: float, ts: float, votes: Counter, best: dict, frames: int) -> Track:
        """End ``t``: a new track, in its place, starts at ``first_ts`` with ``votes`` (best scores ``best``) over
        ``frames`` embedded frames, its box ``box``."""
        new = Track(next(self._ids), box, first_ts, ts, votes, best, frames, faces=deque(maxlen=self._memory))
        self.tracks[self.tracks.index(t)] = new
        return new

    def _elected(self, t: Track) -> str | None:
        """The customer the track's vote decides known (``min_votes`` and ``vote_share``), or None."""
        known = [(n, k) for k, n in t.votes.items() if k]
        if known:
            n, cid = max(known)
            if n >= self.config.min_votes and n / t.frames >= self.config.vote_share:
                return cid
        return None

    def _decide(self, t: Track, ts: float) -> Decision | None:
        c = self.config
        if t.decided_known:
            return None
        cid = self._elected(t)
        if cid is not None:
            n = t.votes[cid]
            t.decided_known, t.decided_id = True, cid
            t.other, t.other_run, t.other_frames = None, 0, 0  # the watch of a known track starts afresh
            t.faces.clear()
            last = self._last_arrival.get(cid)
            arrival = last is None or ts - last >= c.cooldown_s
            if arrival:
                self._last_arrival[cid] = ts
            return Decision("known", t.id, ts, t.first_ts, n, t.frames, cid, t.best[cid],
                            arrival=arrival, reason="" if arrival else "cooldown")
        if not t.decided_unknown and t.frames >= c.unknown_after:
            t.decided_unknown = True
            return Decision("unknown", t.id, ts, t.first_ts, t.votes[""], t.frames)
        return None

    def forget(self, customer_id: str) -> None:
        """Drop a customer's votes and cool-down state (after an erasure). Safe from any thread: the id is queued
        and the recognition thread applies it at its next :meth:`update`, so a frame being decided is never
        changed under it (an arrival decided in that frame for the erased id is ignored downstream)."""
        self._forgotten.append(customer_id)

    def _apply_forgotten(self) -> None:
        while self._forgotten:
            customer_id = self._forgotten.popleft()
            self._last_arrival.pop(customer_id, None)
            for t in self.tracks:
                t.votes.pop(customer_id, None)
                t.best.pop(customer_id, None)
                if t.other == customer_id:
                    t.other, t.other_run, t.other_frames = None, 0, 0
                # the watch's frames of them vote as unknown if the track is split (the erased id never comes back)
                t.faces = deque((f._replace(customer_id=None) if f.customer_id == customer_id else f for f in t.faces),
                                maxlen=t.faces.maxlen)
