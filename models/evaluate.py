"""Accuracy of the full edge pipeline (detect → align → embed) on LFW-format data.

Protocols:

* **Verification** on ``pairs.txt``: k-fold accuracy (threshold chosen on k-1 folds, accuracy on the
  held-out fold; Huang et al. 2007 "unrestricted" protocol with k=10).
* **TAR@FAR**: every same-identity pair (genuine) and every different-identity pair (impostor) among
  all images of the folder (BLUFR-style, Liao et al. 2014), because 300 impostor pairs cannot resolve
  FAR = 1e-3. The FAR = 1e-3 threshold is a 1:1 figure for comparison only: the edge's threshold is the
  calibrated open-set rule (:mod:`dangol_edge.calibration`), and it has no fixed fallback.
* **Open-set identification**: people with ≥2 images enrol their first image; their other images are
  probes; single-image people are strangers. Rank-1 rate (closed set), detection-and-identification
  rate (correct and accepted; per probe and per person) and the strangers' false-accept rate at a threshold
  and margin. At the calibrated threshold this is **in-sample**: the shipped impostor tail was measured on
  these same images. The held-out figures are :mod:`.holdout`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dangol_edge.align import align_face
from dangol_edge.embed import Embedder
from dangol_edge.detect import FaceDetector
from dangol_edge.sources import read_image

from .common import centre_face
from .lfw import LFWDataset

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Embeddings of a list of images: ``emb (N, 512) float32``, ``detected (N,) bool`` (False: the
    detector found no face and the crop used the mean keypoints of the detected images)."""

    paths: list[Path]
    emb: np.ndarray
    detected: np.ndarray

    def index(self) -> dict[Path, int]:
        """Row of each path."""
        return {p: i for i, p in enumerate(self.paths)}


def embed_images(paths: list[Path], detector: FaceDetector, embedder: Embedder, progress: bool = True) -> Embedded:
    """Detect the centre face of each image, align and embed it.

    Images with no detection use the mean keypoints of the detected ones (LFW deep-funneled images are
    already roughly registered), so every pair gets a score, as in the standard protocol.
    """
    dets = []
    images = []
    for p in tqdm(paths, desc="detect", disable=not progress, unit="img"):
        rgb = read_image(p)
        dets.append(centre_face(detector.detect(rgb), rgb.shape))
        images.append(rgb)
    found = [d.keypoints[:4] for d in dets if d is not None]
    mean_kp = np.mean(found, axis=0) if found else np.array([[100, 110], [150, 110]], np.float32)
    spec = embedder.spec
    crops = np.stack([align_face(img, mean_kp, spec) if d is None else align_face(img, d.keypoints, spec, d.corners)
                      for img, d in zip(images, dets)])
    emb = np.concatenate([embedder.embed(crops[i : i + 64]) for i in
                          tqdm(range(0, len(crops), 64), desc="embed", disable=not progress, unit="batch")])
    return Embedded(list(paths), emb, np.array([d is not None for d in dets]))


def kfold_accuracy(sims: np.ndarray, same: np.ndarray, folds: int = 10) -> tuple[float, float, float]:
    """k-fold verification accuracy.

    Args:
        sims: ``(P,) float`` cosine similarity per pair; same: ``(P,) bool``.
    Returns:
        (mean accuracy, std of accuracy, threshold chosen on all pairs).
    """
    order = np.arange(len(sims))
    fold_of = order % folds
    cands = np.unique(sims)

    def best(mask):
        accs = [((sims[mask] >= t) == same[mask]).mean() for t in cands]
        return cands[int(np.argmax(accs))]

    accs = []
    for f in range(folds):
        t = best(fold_of != f)
        test = fold_of == f
        accs.append(((sims[test] >= t) == same[test]).mean())
    return float(np.mean(accs)), float(np.std(accs)), float(best(np.ones(len(sims), bool)))


def kfold_val_at_far(sims: np.ndarray, same: np.ndarray, far_target: float = 1e-3, folds: int = 10) -> tuple[float, float]:
    """Validation rate (TAR) at a target FAR on ``pairs.txt``, FaceNet's protocol.

    Per fold, the squared-L2 distance threshold giving ``far_target`` on the other folds is found by
    linear interpolation of FAR over thresholds ``0, 0.001, …, 4``; TAR and FAR are then measured on the
    held-out fold. Source: davidsandberg/facenet ``lfw.py``/``facenet.py`` ``calculate_val`` (the
    "VAL@FAR=1e-3" of Schroff et al. 2015).

    Returns:
        (mean TAR, mean FAR) over the folds.
    """
    dist = 2.0 - 2.0 * np.asarray(sims, dtype=np.float64)  # squared L2 of unit vectors
    thresholds = np.arange(0, 4, 0.001)
    fold_of = np.arange(len(dist)) % folds

    def rates(t, d, s):
        acc = d < t
        n_same, n_diff = s.sum(), (~s).sum()
        return (acc & s).sum() / max(n_same, 1), (acc & ~s).sum() / max(n_diff, 1)

    vals, fars = [], []
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        far_train = np.array([rates(t, dist[tr], same[tr])[1] for t in thresholds])
        if far_train.max() >= far_target:
            # FAR is non-decreasing in the threshold; interpolate between the largest threshold of
            # each FAR level (the end of the FAR = 0 plateau and the next step)
            rev = far_train[::-1]
            uniq, last = np.unique(rev, return_index=True)
            t = float(np.interp(far_target, uniq, thresholds[::-1][last]))
        else:
            t = 0.0
        v, fa = rates(t, dist[te], same[te])
        vals.append(v)
        fars.append(fa)
    return float(np.mean(vals)), float(np.mean(fars))


def all_pair_scores(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine similarities over all unordered pairs of distinct images.

    Args:
        emb: ``(N, 512) float32`` unit rows; labels: ``(N,)`` identity ids.
    Returns:
        (genuine scores, impostor scores) as 1-D float32 arrays.
    """
    sim = emb @ emb.T
    iu = np.triu_indices(len(emb), k=1)
    s = sim[iu]
    same = labels[iu[0]] == labels[iu[1]]
    return s[same], s[~same]


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the smallest threshold whose false-accept rate is ≤ ``far``."""
    imp = np.sort(impostor)[::-1]
    k = int(np.floor(far * len(imp)))
    thr = float(imp[k]) if k < len(imp) else float(imp[-1])
    thr = np.nextafter(np.float32(thr), np.float32(np.inf))
    return float((genuine >= thr).mean()), float(thr)


@dataclass
class OpenSet:
    """Open-set identification figures at one threshold and margin."""

    threshold: float
    margin: float
    enrolled: int
    probes: int
    strangers: int
    rank1: float
    dir: float
    far: float
    dir_per_person: float = float("nan")


def open_set(emb: Embedded, lfw: LFWDataset, threshold: float, margin: float) -> OpenSet:
    """Enrol the first image of each ≥2-image person, probe with the rest, strangers = 1-image people."""
    idx = emb.index()
    ids = lfw.identities()
    gallery_names = [n for n, f in ids.items() if len(f) >= 2]
    g = np.stack([emb.emb[idx[ids[n][0]]] for n in gallery_names])
    probes = [(i, idx[p]) for i, n in enumerate(gallery_names) for p in ids[n][1:]]
    strangers = [idx[f[0]] for n, f in ids.items() if len(f) == 1]

    def decide(rows):
        s = emb.emb[rows] @ g.T
        top2 = np.argsort(-s, axis=1)[:, :2]
        best = s[np.arange(len(rows)), top2[:, 0]]
        second = s[np.arange(len(rows)), top2[:, 1]]
        accept = (best >= threshold) & (best - second >= margin)
        return top2[:, 0], accept

    pid = np.array([p[0] for p in probes])
    top, acc = decide(np.array([p[1] for p in probes]))
    _, sacc = decide(np.array(strangers)) if strangers else (None, np.zeros(0, bool))
    ok = (top == pid) & acc
    return OpenSet(threshold, margin, len(gallery_names), len(probes), len(strangers),
                   rank1=float((top == pid).mean()), dir=float(ok.mean()),
                   far=float(sacc.mean()) if len(sacc) else 0.0,
                   dir_per_person=float(np.mean([ok[pid == i].mean() for i in np.unique(pid)])))


@dataclass
class ModelReport:
    """All figures for one model file."""

    model: str
    accuracy: float
    accuracy_std: float
    best_threshold: float
    val_at_far_1e3: float
    val_far: float
    tar_at_far_1e3: float
    threshold_far_1e3: float
    genuine_pairs: int
    impostor_pairs: int
    undetected: int
    open_set: OpenSet | None = None
    extra: dict = field(default_factory=dict)


def evaluate_model(model: Path, lfw: LFWDataset, detector: FaceDetector, threads: int = 2,
                   margin: float = 0.05, threshold: float | None = None, progress: bool = True,
                   target_fpir: float = 0.01, min_votes: int = 3, vote_share: float = 0.6) -> ModelReport:
    """Run every protocol of this module (and the open-set DET of :mod:`.openset` and the held-out rule check
    of :mod:`.holdout`, in ``extra``) for one ``.tflite`` file.

    Args:
        threshold: open-set threshold; None uses the edge's calibrated rule (the model's calibration file
            at ``target_fpir`` for the number of enrolled people), or the FAR = 1e-3 threshold when the
            model has no calibration file or one measured with another pipeline than ``detector``'s; the latter is
            logged and recorded in ``extra["calibration_note"]`` (``dangol-models evaluate`` prints it).
    """
    from dangol_edge.calibration import PipelineMismatch, load_calibration, pipeline_of

    from .holdout import holdout_check
    from .openset import det_table

    ids = lfw.identities()
    paths = [p for files in ids.values() for p in files]
    labels = np.array([i for i, files in enumerate(ids.values()) for _ in files])
    t0 = time.perf_counter()
    emb = embed_images(paths, detector, Embedder(model, threads=threads), progress=progress)
    ms_per_image = (time.perf_counter() - t0) * 1000 / max(len(paths), 1)
    idx = emb.index()
    pairs = lfw.pairs()
    sims = np.array([float(emb.emb[idx[p.a]] @ emb.emb[idx[p.b]]) for p in pairs])
    same = np.array([p.same for p in pairs])
    acc, std, best_t = kfold_accuracy(sims, same)
    val, val_far = kfold_val_at_far(sims, same)
    gen, imp = all_pair_scores(emb.emb, labels)
    tar, thr = tar_at_far(gen, imp, 1e-3)
    report = ModelReport(model.name, acc, std, best_t, val, val_far, tar, thr, len(gen), len(imp), int((~emb.detected).sum()))
    report.extra["ms_per_image"] = round(ms_per_image, 1)  # decode + detect + align + embed, this machine
    n_enrolled = sum(len(f) >= 2 for f in ids.values())
    embedder = Embedder(model)
    try:
        tail = load_calibration(model, embedder.sha256, pipeline_of(detector.config, model, embedder.spec))
    except PipelineMismatch as exc:  # reported, not silent: the command prints it (:func:`.report.evaluate_command`)
        tail = None
        report.extra["threshold_rule"] = "FAR=1e-3 point: the calibration was measured with another pipeline"
        report.extra["calibration_note"] = f"calibration not used, open-set threshold = FAR=1e-3 point: {exc}"
        log.warning("%s: %s", model.name, report.extra["calibration_note"])
    if threshold is None and tail is not None:
        threshold = tail.threshold(target_fpir, n_enrolled)
        report.extra["threshold_rule"] = f"calibrated: FPIR {target_fpir:g} per photo at {n_enrolled} templates"
    report.open_set = open_set(emb, lfw, threshold if threshold is not None else thr, margin)
    people: dict[str, list[int]] = {n: [idx[p] for p in f] for n, f in ids.items()}
    report.extra["det"] = det_table(emb.emb, people, (100, n_enrolled, 1000), margin)
    report.extra["holdout"] = holdout_check(emb.emb, people, target_fpir, margin, 3, min_votes, vote_share)
    return report
