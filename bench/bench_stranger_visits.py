"""Strangers at the door per visit, not per photo: how often a stranger's visit is greeted as a regular.

The open-set threshold is calibrated per photo (``matcher.target_fpir``); the door decides per *track* (the
tracker's votes over consecutive frames). The frames of one visit are alike, so the votes may remove much less
than independent photos would suggest. This bench measures both on real video.

* Strangers: the people of the Intel sample clips in ``shared/data/clips/intel_sample_videos`` (CC-BY-4.0 actors;
  none of them is an LFW person), every frame detected and embedded once with the default pipeline (YuNet + int8
  SFace), frame times from the file's frame rate.
* Galleries: LFW people enrolled from their first photo (the stored LFW embeddings of the built model), either one
  person alone (N = 1, each of ``--singles`` random people in turn) or ``--size`` people together (``--galleries``
  random draws). Threshold from the model's calibration for N templates at ``target_fpir`` 1 %, margin 0.05, the
  default tracker (3 votes, share 0.6) — the daemon's settings. The calibration must have been measured with the
  default pipeline (YuNet), as the daemon requires. The clips' people are strangers the calibration never saw; the
  galleries' LFW people are in it (its pairs include theirs).
* Per frame: the share of embedded stranger frames accepted as somebody. Per visit: the share of the tracks the
  tracker decided (known or unknown) that were decided ``known`` — a stranger greeted as a regular.

Run: ``.venv/bin/python bench/bench_stranger_visits.py`` (after ``scripts/setup`` and ``dangol-models build``; data in
``../shared/data`` or ``$DANGOL_DATA``). Prints numbers only; nothing is asserted. Seeded (``--seed``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLIPS = ("face-demographics-walking-and-pause.gif", "face-demographics-walking.gif",
         "head-pose-face-detection-female-and-male.gif", "head-pose-face-detection-female.gif",
         "head-pose-face-detection-male.gif", "one-by-one-person-detection.mp4")


def _data() -> Path:
    data = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    if not (data / "clips" / "intel_sample_videos").is_dir():
        sys.exit(f"bench_stranger_visits: real data not found at {data} (set DANGOL_DATA)")
    return data


def embed_clips(folder: Path, model: Path) -> list[tuple[str, list[tuple[float, list]]]]:
    """``[(clip, [(ts seconds, [(box, embedding (128,) float32 or None), ...]) per frame])]``."""
    from dangol_edge.detect import FaceDetector
    from dangol_edge.embed import Embedder
    from dangol_edge.faces import FacePipeline
    from dangol_edge.sources import open_source

    pipe = FacePipeline(FaceDetector.beside(model), Embedder(model))
    out = []
    for name in CLIPS:
        source = open_source(str(folder / name))
        source.open()
        frames = [(f.ts, [(face.detection.box, face.embedding) for face in pipe.process(f.rgb)])
                  for f in source.frames()]
        source.close()
        out.append((name, frames))
    pipe.close()
    return out


def run(clips, templates: np.ndarray, owners: list[str], threshold: float) -> tuple[int, int, int, int]:
    """``(stranger frames embedded, accepted, visits decided, visits greeted)`` over every clip for one gallery."""
    from dangol_edge.config import TrackerConfig
    from dangol_edge.matcher import Matcher
    from dangol_edge.tracker import Observation, Tracker

    matcher = Matcher()
    matcher.load(templates, owners)
    frames = accepted = 0
    decided: set = set()
    greeted: set = set()
    for c, (_name, clip) in enumerate(clips):
        tracker = Tracker(TrackerConfig())
        for ts, faces in clip:
            obs = []
            for box, emb in faces:
                if emb is None:
                    obs.append(Observation(box=box, embedded=False))
                    continue
                m = matcher.match(emb, threshold, 0.05)[0]
                frames += 1
                accepted += m.accepted
                obs.append(Observation(box=box, customer_id=m.customer_id if m.accepted else None, score=m.score,
                                       embedding=emb))  # the tracker's watch compares faces (edge/tracker.py)
            for d in tracker.update(ts, obs):
                decided.add((c, d.track_id))
                if d.kind == "known":
                    greeted.add((c, d.track_id))
    return frames, accepted, len(decided), len(greeted)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--singles", type=int, default=2000, help="one-person galleries (each a random LFW person)")
    ap.add_argument("--size", type=int, default=100, help="people in each shared gallery")
    ap.add_argument("--galleries", type=int, default=300, help="random shared galleries")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from dangol_edge.calibration import load_calibration, pipeline_of
    from dangol_edge.config import DetectorConfig
    from dangol_edge.embed import Embedder
    from dangol_models.build import load_lfw_embeddings
    from dangol_models.lfw import LFWDataset

    data = _data()
    model = Path(os.environ.get("DANGOL_MODELS_DIR") or REPO / ".cache" / "models") / "sface-int8.tflite"
    embedder = Embedder(model)  # the clips are embedded behind the default detector: its calibration, no other
    tail = load_calibration(model, embedder.sha256, pipeline_of(DetectorConfig(), model, embedder.spec))
    if tail is None:
        sys.exit(f"bench_stranger_visits: no calibration file beside {model} (run dangol-models build)")
    lfw = LFWDataset(data / "faces")
    emb = load_lfw_embeddings(model, lfw)
    index = emb.index()
    people = sorted(lfw.identities().items())
    first = {name: emb.emb[index[files[0]]] for name, files in people}
    names = sorted(first)
    clips = embed_clips(data / "clips" / "intel_sample_videos", model)
    print(f"strangers: {sum(len(c) for _, c in clips)} frames of {len(clips)} clips; "
          f"{sum(e is not None for _, c in clips for _, fs in c for _, e in fs)} faces embedded")
    rng = np.random.default_rng(args.seed)
    for label, draws, size in (("N = 1", args.singles, 1), (f"N = {args.size}", args.galleries, args.size)):
        threshold = tail.threshold(0.01, size)
        totals = np.zeros(4, dtype=np.int64)
        for _ in range(draws):
            chosen = list(rng.choice(names, size=size, replace=False))
            totals += run(clips, np.stack([first[n] for n in chosen]), chosen, threshold)
        frames, accepted, visits, greeted = (int(x) for x in totals)
        per_frame, per_visit = accepted / max(frames, 1), greeted / max(visits, 1)
        print(f"{label} ({draws} galleries, threshold {threshold:.4f}): per stranger frame {per_frame:.2%} "
              f"({accepted} of {frames}); per stranger visit {per_visit:.2%} ({greeted} of {visits}); "
              f"visit / frame {per_visit / per_frame if per_frame else float('nan'):.2f}")


if __name__ == "__main__":
    main()
