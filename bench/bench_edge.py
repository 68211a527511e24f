"""Edge benchmark: SFace int8 (default), FaceNet int8 and the dlib peer side by side in one run, per-stage
latency on a real clip, and 1:N search at gallery scale.

Run: ``.venv/bin/python bench/bench_edge.py [--skip-peer]`` (after ``scripts/setup``; the models are built
if missing). Prints numbers only; nothing is asserted. The README's "Benchmarks" section holds the
latest output.

* Stages on ``short_hamilton_clip.mp4`` (640×360, 275 frames) with the default model: decode, detect,
  align (+ quality gates), embed (per face), match; p50/p95 in ms, and end-to-end frames per second.
* Per-face cost ``detect + align + embed`` on LFW photos (one face each) for every model, the models
  taking turns on each photo (so machine load hits them alike); the ratio to FaceNet int8 is printed.
* Model file size and the peak RSS of a process that detects and embeds 50 photos with only that model.
* 1:N search over 1k, 10k and 100k random unit templates (float32, 128-d as SFace): p50/p95 ms per probe
  and the matrix memory in MiB.
* LFW ``pairs.txt`` verification (10-fold accuracy and FaceNet's TAR@FAR=1e-3) for each model and the
  ``face_recognition`` (dlib ResNet-34, HOG detector) peer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "2")
if not os.environ.get("DANGOL_GALLERY_KEY"):  # throw-away galleries: a throw-away key
    import base64
    import secrets

    os.environ["DANGOL_GALLERY_KEY"] = base64.b64encode(secrets.token_bytes(32)).decode()

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def row(name, values, unit="ms") -> str:
    return f"  {name:<28} p50 {pct(values, 50):8.2f} {unit}   p95 {pct(values, 95):8.2f} {unit}   (n={len(values)})"


def stages(clip: Path, model: Path, lin_photo: Path) -> None:
    from dangol_edge.config import EdgeConfig
    from dangol_edge.embed import Embedder
    from dangol_edge.enrol import sample_from_photo
    from dangol_edge.gallery import Gallery
    from dangol_edge.recognition import Recognizer
    from dangol_edge.sources import OpenCVSource
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = EdgeConfig(home=Path(tmp), embedder={"model_path": model})
        emb = Embedder(model, threads=cfg.embedder.threads)
        rec = Recognizer.from_config(cfg, gallery=Gallery(Path(tmp) / "g.sqlite", emb.sha256).open(), embedder=emb)
        s = sample_from_photo(lin_photo, rec.pipeline)
        rec.gallery.enroll("Lin-Manuel Miranda", s.embedding[None])
        rec.pipeline.times.__init__()  # reset the enrolment's timings
        decode = []
        src = OpenCVSource(str(clip)).open()
        it = src.frames()
        n = 0
        t_all = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                break
            decode.append((time.perf_counter() - t0) * 1000)
            rec.process(frame)
            n += 1
        wall = time.perf_counter() - t_all
        src.close()
        t = rec.pipeline.times
        print(f"Stages on {clip.name} ({n} frames, {model.name}, {cfg.embedder.threads} threads):")
        print(row("decode (per frame)", decode))
        print(row("detect (per frame)", t.detect))
        print(row("align + gates (per face)", t.align))
        print(row("embed (per frame's faces)", t.embed))
        print(row("match (per frame)", rec.match_times))
        print(f"  end to end: {n / wall:.1f} frames/s ({wall:.1f} s); quality gates {dict(rec.pipeline.gate.counts)}")
        rec.close()


def per_face(models: list[Path], lfw_root: Path, n: int = 200) -> None:
    from dangol_edge.align import align_face
    from dangol_edge.config import DetectorConfig
    from dangol_edge.detect import FaceDetector
    from dangol_edge.embed import Embedder
    from dangol_edge.sources import read_image
    from dangol_models.lfw import LFWDataset

    lfw = LFWDataset(lfw_root)
    paths = [p for files in lfw.identities().values() for p in files][:n]
    images = [read_image(p) for p in paths]
    print(f"Per face, detect + align + embed on {len(images)} LFW photos (250×250), models taking turns per photo:")
    embs = {m: Embedder(m, threads=2).open() for m in models}
    for e in embs.values():
        e.embed(np.zeros((1, e.spec.size, e.spec.size, 3), np.uint8))  # warm-up
    times = {m: {"detect": [], "embed": [], "total": []} for m in models}
    with FaceDetector.beside(models[0], DetectorConfig()) as det:  # the edge's default detector (YuNet)
        for img in images:
            for m, e in embs.items():
                t0 = time.perf_counter()
                d = det.detect(img)
                t1 = time.perf_counter()
                if not d:
                    continue
                crop = align_face(img, d[0].keypoints, e.spec, d[0].corners)
                t2 = time.perf_counter()
                e.embed(crop[None])
                t3 = time.perf_counter()
                times[m]["detect"].append((t1 - t0) * 1000)
                times[m]["embed"].append((t3 - t2) * 1000)
                times[m]["total"].append((t3 - t0) * 1000)
    ref = next((m for m in models if m.name == "facenet-int8.tflite"), models[0])
    for m in models:
        t = times[m]
        print(f" {m.name} ({m.stat().st_size / 2**20:.1f} MiB):")
        print(row("detect", t["detect"]))
        print(row("embed", t["embed"]))
        print(row("detect + align + embed", t["total"])
              + f"   ratio to {ref.name} (p50) {pct(t['total'], 50) / pct(times[ref]['total'], 50):.2f}")


_RSS_SNIPPET = """
import resource, sys
from pathlib import Path
from dangol_edge.align import align_face
from dangol_edge.config import DetectorConfig
from dangol_edge.detect import FaceDetector
from dangol_edge.embed import Embedder
from dangol_edge.sources import read_image
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
paths = sorted(Path(sys.argv[2]).glob("lfw-deepfunneled/*/*.jpg"))[:50]
with FaceDetector.beside(sys.argv[1], DetectorConfig()) as det:
    det.detect(read_image(paths[0]))
    before = rss()
    e = Embedder(sys.argv[1], threads=2)
    for p in paths:
        img = read_image(p)
        d = det.detect(img)
        if d:
            e.embed(align_face(img, d[0].keypoints, e.spec, d[0].corners)[None])
    after = rss()
print(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), round(after - before))
"""


def peak_rss(models: list[Path], lfw_root: Path) -> None:
    """Peak RSS of a fresh process detecting and embedding 50 photos with one model (MiB)."""
    import subprocess

    print("Peak RSS of a process that detects and embeds 50 LFW photos (YuNet, the default detector, + one model):")
    for m in models:
        out = subprocess.run([sys.executable, "-c", _RSS_SNIPPET, str(m), str(lfw_root)], capture_output=True,
                             text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if out.returncode == 0 and out.stdout.strip():
            peak, model = out.stdout.strip().splitlines()[-1].split()
            print(f"  {m.name:<28} peak {peak} MiB; the embedder adds {model} MiB to the detector's process")
        else:
            print(f"  {m.name:<28} failed: {out.stderr.strip()[-200:]}")


def search(sizes=(1_000, 10_000, 100_000), probes: int = 200) -> None:
    from dangol_edge.gallery import Gallery

    rng = np.random.default_rng(0)
    print("1:N search (one probe, 128-d templates, threshold + margin over the runner-up customer):")
    for n in sizes:
        tracemalloc.start()
        m = rng.standard_normal((n, 128), dtype=np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        owners = [f"c{i // 2}" for i in range(n)]  # two templates per customer
        g = Gallery(":memory:", "bench")
        g.load_matrix(m, owners)
        mem = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        q = rng.standard_normal((probes, 128), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        times = []
        for p in q:
            t0 = time.perf_counter()
            g.match(p, 0.5, 0.05)
            times.append((time.perf_counter() - t0) * 1000)
        print(row(f"{n:>7,} templates", times) + f"   matrix {m.nbytes / 2**20:.0f} MiB, peak {mem:.0f} MiB")


def _pkg_resources_shim() -> None:
    """face_recognition_models 0.3.0 calls ``pkg_resources.resource_filename``, which setuptools ≥ 81 no
    longer ships; provide that one function from importlib.resources."""
    if "pkg_resources" in sys.modules:
        return
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.resources
        import types

        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda pkg, name: str(importlib.resources.files(pkg) / name)
        sys.modules["pkg_resources"] = shim


def peer(lfw_root: Path, models: list[Path]) -> None:
    from dangol_edge.config import DetectorConfig
    from dangol_edge.detect import FaceDetector
    from dangol_edge.embed import Embedder
    from dangol_models.evaluate import embed_images, kfold_accuracy, kfold_val_at_far
    from dangol_models.lfw import LFWDataset

    lfw = LFWDataset(lfw_root)
    pairs = lfw.pairs()
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    same = np.array([p.same for p in pairs])
    print(f"LFW pairs.txt verification ({len(pairs)} pairs, 10-fold; TAR@FAR=1e-3 by FaceNet's protocol):")
    for model in models:
        t0 = time.perf_counter()
        with FaceDetector.beside(model, DetectorConfig(min_score=0.5)) as det:
            e = embed_images(paths, det, Embedder(model), progress=False)
        idx = e.index()
        sims = np.array([e.emb[idx[p.a]] @ e.emb[idx[p.b]] for p in pairs])
        acc, std, thr = kfold_accuracy(sims, same)
        tar, _ = kfold_val_at_far(sims, same)
        print(f"  Dangol {model.stem:<28} accuracy {acc * 100:.2f} % ± {std * 100:.2f}   TAR {tar * 100:.2f} %   "
              f"{(time.perf_counter() - t0) / len(paths) * 1000:.0f} ms/image")
    try:
        _pkg_resources_shim()
        import face_recognition  # type: ignore[import-not-found]
    except ImportError:
        print("  face_recognition (dlib) peer: not installed (pip install 'dangol[bench]', see scripts/setup)")
        return
    t0 = time.perf_counter()
    enc = {}
    for p in paths:
        img = face_recognition.load_image_file(str(p))
        locs = face_recognition.face_locations(img, model="hog")
        if locs:  # the face nearest the centre, as for Dangol
            h, w = img.shape[:2]
            locs = [min(locs, key=lambda b: ((b[1] + b[3]) / 2 - w / 2) ** 2 + ((b[0] + b[2]) / 2 - h / 2) ** 2)]
        else:
            locs = [(0, w, h, 0)]
        enc[p] = face_recognition.face_encodings(img, known_face_locations=locs)[0]
    d = np.array([-np.linalg.norm(enc[p.a] - enc[p.b]) for p in pairs])  # higher = more similar
    acc, std, thr = kfold_accuracy(d, same)
    tar, _ = kfold_val_at_far(1.0 - d**2 / 2.0, same)  # the protocol thresholds squared L2 = 2 - 2·sim
    print(f"  face_recognition (dlib ResNet-34)   accuracy {acc * 100:.2f} % ± {std * 100:.2f}   TAR {tar * 100:.2f} %   "
          f"{(time.perf_counter() - t0) / len(paths) * 1000:.0f} ms/image (threshold distance {-thr:.3f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args()
    data = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    if not data.is_dir():
        print(f"real data not found at {data}: set DANGOL_DATA", file=sys.stderr)
        return 2
    models = Path(os.environ.get("DANGOL_MODELS_DIR") or REPO / ".cache" / "models")
    from dangol_models.build import build_all

    build_all(models, data / "faces")
    clips = data / "clips" / "face_recognition_examples"
    files = [models / f for f in ("sface-int8.tflite", "facenet-int8.tflite", "sface-float32.tflite", "facenet-float32.tflite")]
    stages(clips / "short_hamilton_clip.mp4", files[0], clips / "lin-manuel-miranda.png")
    per_face(files, data / "faces")
    peak_rss(files[:2], data / "faces")
    search()
    if not args.skip_peer:
        peer(data / "faces", files[:2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
