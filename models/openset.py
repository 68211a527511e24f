"""Open-set identification on LFW-format data: DET figures per photo and per simulated track (the held-out check of
the calibrated acceptance rule, built on these, is :mod:`.holdout`).

Terms (ISO/IEC 19795-1, NIST FRVT 1:N): a *mated* probe shows an enrolled person; a *non-mated* probe
somebody who is not enrolled. FPIR (false-positive identification rate) is the share of non-mated probes
accepted as anyone; FNIR (false-negative identification rate) the share of mated probes not accepted as
the right person. A probe is accepted when its best score reaches the threshold and leads the best other
enrolled person by the margin (:class:`dangol_edge.matcher.Matcher`).

Tracks simulate the door: several photos of one person in a row; the track is accepted as a customer when
at least ``min_votes`` of its photos are accepted as that customer and they are at least ``vote_share``
of the accepted photos (the rule of :class:`dangol_edge.tracker.Tracker`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


@dataclass
class Scores:
    """Top-2 search results of probes against a gallery of one template per enrolled person.

    Attributes:
        best: ``(P,) float32`` best score; second: best score of another enrolled person;
        top: ``(P,) int`` index of the best enrolled person; truth: ``(P,) int`` the probe's enrolled
        index, or -1 for a non-mated probe.
    """

    best: np.ndarray
    second: np.ndarray
    top: np.ndarray
    truth: np.ndarray

    def accepted(self, threshold: float, margin: float) -> np.ndarray:
        """``(P,) bool``: accepted as somebody."""
        return (self.best >= threshold) & (self.best - self.second >= margin)


def search(emb: np.ndarray, gallery_rows: list[int], probe_rows: list[int], truth: list[int]) -> Scores:
    """Score probes against a gallery.

    Args:
        emb: ``(N, D) float32`` unit embeddings of all images; gallery_rows: one row per enrolled person;
        probe_rows: probe rows; truth: per probe, its index in ``gallery_rows`` or -1.
    """
    g = emb[gallery_rows]
    s = emb[probe_rows] @ g.T
    if s.shape[1] == 1:
        s = np.hstack([s, np.full((len(s), 1), -1.0, np.float32)])
    top2 = np.argsort(-s, axis=1)[:, :2]
    r = np.arange(len(s))
    return Scores(s[r, top2[:, 0]], s[r, top2[:, 1]], top2[:, 0], np.asarray(truth))


def fnir_at_fpir(sc: Scores, fpirs: tuple[float, ...], margin: float) -> dict[float, tuple[float, float]]:
    """FNIR at each target FPIR, at the smallest threshold that keeps the measured FPIR ≤ target.

    With ``n`` non-mated probes at most ``k = ⌊f·n⌋`` may be accepted. Among those that pass the margin rule (the
    others are refused at any threshold), the threshold is just above (``nextafter``, in the scores' dtype) the
    (k+1)-th highest best score, as :func:`.evaluate.tar_at_far` does for pairs: every probe tied with that score is
    refused with it, so ties never push FPIR over the target, and any lower threshold would accept it. When no more
    than ``k`` pass the margin, every threshold meets the target and the lowest score (at most -1) is used.

    Returns:
        ``{fpir: (fnir, threshold)}``; both NaN when there are too few non-mated probes to measure that FPIR
        (fewer than 1 / fpir).
    """
    mated, non = sc.truth >= 0, sc.truth < 0
    n = int(non.sum())
    passing = np.sort(sc.best[non & (sc.best - sc.second >= margin)])[::-1]
    out = {}
    for f in fpirs:
        if f * n < 1:
            out[f] = (float("nan"), float("nan"))
            continue
        k = int(np.floor(f * n))
        if k < len(passing):
            thr = float(np.nextafter(passing[k], passing.dtype.type(np.inf)))
        else:
            thr = float(min(-1.0, sc.best.min()))
        ok = sc.accepted(thr, margin) & (sc.top == sc.truth)
        out[f] = (float(1.0 - ok[mated].mean()), thr)
    return out


def track_decisions(sc: Scores, tracks: list[list[int]], threshold: float, margin: float,
                    min_votes: int = 3, vote_share: float = 0.6) -> np.ndarray:
    """Per track (a list of probe positions in ``sc``), the accepted enrolled index or -1."""
    acc = sc.accepted(threshold, margin)
    out = []
    for tr in tracks:
        votes = Counter(int(sc.top[i]) for i in tr if acc[i])
        if votes:
            who, n = votes.most_common(1)[0]
            if n >= min_votes and n / sum(votes.values()) >= vote_share:
                out.append(who)
                continue
        out.append(-1)
    return np.array(out)


def chunks(items: list[int], size: int) -> list[list[int]]:
    """Non-overlapping runs of ``size`` items (a shorter tail is dropped)."""
    return [items[i : i + size] for i in range(0, len(items) - size + 1, size)]


def det_table(emb: np.ndarray, people: dict[str, list[int]], sizes: tuple[int, ...], margin: float,
              fpirs: tuple[float, ...] = (0.1, 0.01, 0.001), seed: int = 0) -> list[dict]:
    """Per-photo DET figures for galleries of the given sizes (people enrolled with their first photo).

    Every person's photos are first capped at :data:`.holdout.CAP` (their first ones,
    :func:`.holdout.calibration_rows`), as the held-out check caps its evaluation photos, so no one person dominates
    the mated or the non-mated probes (uncapped, George W. Bush was 530 of the 1,922 strangers of the 100-person LFW
    gallery).
    People with ≥ 2 photos are enrolled first (a random subset when the size is smaller; their other
    photos are mated probes); beyond them, single-photo people fill the gallery as distractors (so the
    larger gallery has fewer strangers left to probe with). Everybody not enrolled is a non-mated probe.
    """
    from .holdout import CAP, calibration_rows  # holdout imports this module

    people = calibration_rows(people, CAP)
    rng = np.random.default_rng(seed)
    multi = [n for n, rows in people.items() if len(rows) >= 2]
    single = [n for n, rows in people.items() if len(rows) == 1]
    table = []
    for size in sizes:
        if size <= len(multi):
            enrolled = list(rng.choice(multi, size, replace=False))
        else:
            enrolled = multi + list(rng.choice(single, min(size - len(multi), len(single) - 1), replace=False))
        pos = {n: i for i, n in enumerate(enrolled)}
        probes, truth = [], []
        for n, rows in people.items():
            for r in rows[1:] if n in pos else rows:
                probes.append(r)
                truth.append(pos.get(n, -1))
        sc = search(emb, [people[n][0] for n in enrolled], probes, truth)
        det = fnir_at_fpir(sc, fpirs, margin)
        table.append({"gallery": len(enrolled), "mated": int((sc.truth >= 0).sum()),
                      "non_mated": int((sc.truth < 0).sum()),
                      **{f"fnir@fpir={f:g}": round(v[0], 4) for f, v in det.items()},
                      **{f"thr@fpir={f:g}": round(v[1], 4) for f, v in det.items()}})
    return table
