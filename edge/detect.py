"""Face detection (MediaPipe BlazeFace or OpenCV YuNet) and the quality gates applied before embedding.

Models:

* MediaPipe Face Detection (default), BlazeFace short-range (``face_detection_short_range.tflite``,
  faces within ~2 m) or full-range (``face_detection_full_range_sparse.tflite``, up to ~5 m), both
  shipped in the MediaPipe 0.10.21 (x86-64) / 0.10.18 (aarch64) wheels; Bazarevsky et al., "BlazeFace:
  Sub-millisecond Neural Face Detection on Mobile GPUs", 2019. Apache-2.0. Six keypoints: eyes, nose
  tip, mouth centre, ears.
* YuNet ``face_detection_yunet_2023mar.onnx`` (OpenCV Zoo; Wu et al., "YuNet: A Tiny Millisecond-level
  Face Detector", Machine Intelligence Research 2023; MIT), run by ``cv2.FaceDetectorYN`` from
  opencv-contrib-python. ``dangol-models build`` puts the file next to the embedder. Five landmarks:
  eyes, nose tip, mouth corners.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DetectorConfig

log = logging.getLogger(__name__)

#: File name of the YuNet detector, which ``dangol-models build`` writes beside the embedder models.
YUNET_FILE = "face_detection_yunet_2023mar.onnx"

#: Longest side, px, of the copy YuNet runs on. Larger images (phone/DSLR portraits given to
#: ``dangol-edge enroll --image``) are scaled down with ``cv2.INTER_AREA`` before detection, and the
#: boxes and landmarks scaled back to the full image, which alignment still cuts from. Measured in a code
#: review (LFW faces and knn_examples photos enlarged with cv2.resize), YuNet finds faces up to roughly
#: 550-700 px wide; on a whole 2400-3000 px portrait it missed the face or boxed it wrongly (biden2.jpg
#: enlarged to 2400 px enrolled at cosine 0.22 to the original-size enrolment, at 3000 px no face).
#: 1280 px keeps 640x480 and 1280x720 camera frames at their native resolution (unchanged detection);
#: 1920x1080 frames are detected at 1280x720, where the ``min_face_px`` = 40 px gate is ~27 px.
YUNET_MAX_SIDE = 1280

#: Photo enrolment (:meth:`FaceDetector.detect_photo`): a face box at least this wide, px of the ≤
#: :data:`YUNET_MAX_SIDE` px detection copy, marks a close-up, which is detected again with a border. YuNet
#: misses faces much wider than ~550 px or boxes part of them. Measured on 50 LFW people (tests/edge/
#: test_closeup_photo.py: each photo cut to its central 110 px, which the face fills, and enlarged), enrolment
#: without the border refused 0, 11, 22, 37 and 34 of the 50 close-ups at 600, 800, 1000, 1280 and 3000 px
#: ("no face found", "2 faces found") and enrolled 0, 1, 10, 9 and 13 wrong templates (cosine -0.06-0.41 to
#: the uncropped photo); with it, 0 or 1 refused and none wrong (cosine ≥ 0.47, median 0.84-0.86). The wrong
#: boxes were ≥ 460 px wide; portraits' faces are 100-460 px (biden2.jpg: 430 px).
PHOTO_CLOSEUP_PX = 320
#: Border added on each side of a close-up (or of a photo with no face found), as a fraction of its width
#: (left/right) and height (top/bottom), in flat grey: the face then fills at most half the copy and has the
#: margin detectors are trained with. An edge-replicated border did a little worse on the close-ups above
#: (3 of 50 refused at 1280 and 3000 px, against 1).
PHOTO_PAD = 0.5
#: Grey level (R = G = B) of that border.
PHOTO_PAD_GREY = 128
#: The bordered copy confirms the photo's own detection when both eyes lie within this fraction of the eye
#: distance. Measured on the close-ups above: faces YuNet found right at 600 px moved a median 0.04 (up to
#: 0.25) with the border; the wrong boxes at 1280 px moved 0.26-1.1, at 1000 px as little as 0.15.
PHOTO_SAME_EYES = 0.1

#: Keypoint order of MediaPipe face detection (the subject's right eye appears on the image's left).
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")


def detector_file(config: DetectorConfig, model_path: str | Path) -> Path | None:
    """The model file the detector backend loads: YuNet's ``.onnx`` (``config.yunet_path``, else :data:`YUNET_FILE`
    beside the embedder ``model_path``, where ``dangol-models build`` writes it); None for MediaPipe (its models ship
    inside its wheel)."""
    if config.backend != "yunet":
        return None
    return Path(config.yunet_path or Path(model_path).parent / YUNET_FILE)  # as FaceDetector.beside


def detector_file_problem(config: DetectorConfig, model_path: str | Path) -> str | None:
    """Why the detector could not load its model file (:func:`detector_file`), or None when it is there, readable
    and loads in OpenCV. The message names the file and what to do."""
    path = detector_file(config, model_path)
    if path is None:
        return None
    fix = (f"copy {YUNET_FILE} (written by `dangol-models build` beside the embedder model) to {path}, or set "
           "detector.yunet_path to where it is; `sudo scripts/install-edge --model PATH` copies it from beside PATH")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except FileNotFoundError:
        return f"the face detector {path} is missing (detector.backend = \"yunet\" needs it): {fix}"
    except OSError as exc:
        return (f"the face detector {path} cannot be read ({exc.strerror or exc}): make it a file readable by the "
                f"daemon's user (dangol), or {fix}")
    if empty:
        return f"the face detector {path} is empty (an interrupted copy?): {fix}"
    import cv2

    try:  # a truncated copy opens but does not load (OpenCV parses the ONNX graph: milliseconds)
        cv2.FaceDetectorYN.create(str(path), "", (320, 320))
    except cv2.error as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        return f"the face detector {path} is not a loadable YuNet model ({first}; an interrupted copy?): {fix}"
    return None


@dataclass(frozen=True)
class Detection:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` float, px in the frame (may extend past the frame edge).
        score: detector confidence in [0, 1].
        keypoints: ``(≥4, 2) float32`` px ``(x, y)``, in :data:`KEYPOINTS` order (MediaPipe gives all
            six; YuNet the first four, its mouth centre being the mean of the corners).
        corners: ``(2, 2) float32`` px right and left mouth corners (YuNet), or None (MediaPipe).
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray
    corners: np.ndarray | None = None

    @property
    def width(self) -> float:
        """Box width, px."""
        return self.box[2] - self.box[0]

    @property
    def area(self) -> float:
        """Box area, px²."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def eye_distance(self) -> float:
        """Distance between the two eye keypoints, px."""
        return float(np.linalg.norm(self.keypoints[1] - self.keypoints[0]))

    @property
    def yaw(self) -> float:
        """Horizontal nose offset from the eye midpoint divided by the eye distance (0 = frontal).

        A cheap frontal-pose proxy from the keypoints: about 0.1 for a frontal face, rising past 0.5
        when the head is turned by roughly 45°.
        """
        right, left, nose = self.keypoints[0], self.keypoints[1], self.keypoints[2]
        mid = (right + left) / 2.0
        axis = left - right
        d = float(np.linalg.norm(axis))
        if d < 1e-6:
            return 1.0
        # signed offset of the nose along the eye axis
        return abs(float(np.dot(nose - mid, axis / d))) / d

    @property
    def roll_deg(self) -> float:
        """In-plane rotation of the eye line, degrees (0 = eyes level)."""
        dx, dy = self.keypoints[1] - self.keypoints[0]
        return float(np.degrees(np.arctan2(dy, dx)))


@dataclass
class QualityGate:
    """Checks a detection against :class:`DetectorConfig` and counts each rejection by reason.

    Reasons: ``score``, ``size``, ``pose``, ``roll``, ``blur``. ``accepted`` counts passes.
    """

    config: DetectorConfig
    counts: Counter = field(default_factory=Counter)

    def check(self, det: Detection) -> str | None:
        """Return the first failed reason for a detection, or None (the pose/size/score gates)."""
        c = self.config
        if det.score < c.min_score:
            reason = "score"
        elif det.width < c.min_face_px:
            reason = "size"
        elif det.yaw > c.max_yaw:
            reason = "pose"
        elif abs(det.roll_deg) > c.max_roll_deg:
            reason = "roll"
        else:
            return None
        self.counts[reason] += 1
        return reason

    def check_sharpness(self, sharpness: float) -> str | None:
        """Blur gate on the aligned crop's variance of the Laplacian; counts ``blur`` or ``accepted``."""
        if sharpness < self.config.min_sharpness:
            self.counts["blur"] += 1
            return "blur"
        self.counts["accepted"] += 1
        return None


class FaceDetector:
    """Face detection on RGB frames with the backend named in the config.

    Args:
        config: backend (``mediapipe``: model ``short``/``full``; ``yunet``), and thresholds: detections
            below ``min(config.min_score, 0.5)`` are not even reported, the quality gate applies
            ``min_score`` afterwards.
        yunet_path: the YuNet ``.onnx`` file (needed only with ``backend = "yunet"``).

    The model is loaded on first use (or :meth:`open`), not in the constructor.
    """

    def __init__(self, config: DetectorConfig | None = None, yunet_path: str | Path | None = None):
        self.config = config or DetectorConfig()
        self.yunet_path = Path(yunet_path) if yunet_path else None
        self._impl = None

    @classmethod
    def beside(cls, model_path: str | Path, config: DetectorConfig | None = None) -> "FaceDetector":
        """A detector whose YuNet file is the one ``dangol-models build`` wrote next to ``model_path`` (the
        embedder's ``.tflite``), unless ``config.yunet_path`` names another. Nothing is loaded yet."""
        config = config or DetectorConfig()
        return cls(config, config.yunet_path or Path(model_path).parent / YUNET_FILE)

    def open(self) -> "FaceDetector":
        """Load the model.

        Raises:
            RuntimeError: MediaPipe is missing, or the YuNet file is missing or unreadable (named).
        """
        if self._impl is not None:
            return self
        floor = min(self.config.min_score, 0.5)
        if self.config.backend == "yunet":
            if self.yunet_path is None or not self.yunet_path.is_file():
                raise RuntimeError(f"{self.yunet_path}: YuNet model not found (run `dangol-models build`)")
            import cv2

            try:
                self._impl = cv2.FaceDetectorYN.create(str(self.yunet_path), "", (320, 320), floor, 0.3, 50)
            except cv2.error as exc:
                raise RuntimeError(f"{self.yunet_path}: not a loadable YuNet model: {exc}") from exc
        else:
            import mediapipe as mp  # heavy import: only when used

            self._impl = mp.solutions.face_detection.FaceDetection(
                model_selection=1 if self.config.model == "full" else 0, min_detection_confidence=floor)
        return self

    def close(self) -> None:
        """Release the model."""
        if self._impl is not None and hasattr(self._impl, "close"):
            self._impl.close()
        self._impl = None

    def __enter__(self) -> "FaceDetector":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Detect faces in an RGB ``(H, W, 3) uint8`` frame, largest first.

        Raises:
            ValueError: the array is not ``(H, W, 3) uint8``.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB (H, W, 3) uint8 frame, got {rgb.shape} {rgb.dtype}")
        self.open()
        out = self._yunet(rgb) if self.config.backend == "yunet" else self._mediapipe(rgb)
        out.sort(key=lambda d: d.area, reverse=True)
        return out

    def detect_photo(self, rgb: np.ndarray) -> list[Detection]:
        """Detect faces in a still photo given for enrolment, close-ups included.

        :meth:`detect` first. When that finds no face with ``score >= config.min_score``, or its largest box is
        at least :data:`PHOTO_CLOSEUP_PX` wide in the detection copy (a close-up, which YuNet may miss or box
        wrongly), detection runs again on a copy of the photo with a grey border (:data:`PHOTO_PAD` of its width
        and height on each side, the whole at most :data:`YUNET_MAX_SIDE` px on its longest side). The bordered
        copy's faces are used, unless they confirm the first result (as many faces with ``score >=
        config.min_score``, the largest with its eyes within :data:`PHOTO_SAME_EYES` of the eye distance): then
        the first result stands, so a photo :meth:`detect` handled keeps its template.

        Not for camera frames: a camera at the door never sees a face filling the frame, and the retry would cost
        a second detection on every empty frame.

        Args:
            rgb: ``(H, W, 3) uint8`` photo, RGB channel order.
        Returns:
            Detections in px of ``rgb``, largest first. From the bordered copy: boxes clipped to the photo,
            keypoints and corners not clipped; a face whose eyes or nose tip lie in the border is dropped, and of
            two boxes around one face (eyes within half the eye distance) only the more confident is kept.
        Raises:
            ValueError: the array is not ``(H, W, 3) uint8``.
        """
        import cv2

        dets = self.detect(rgb)
        h, w = rgb.shape[:2]
        floor = self.config.min_score
        good = [d for d in dets if d.score >= floor]
        if good and dets[0].width * min(1.0, YUNET_MAX_SIDE / max(h, w)) < PHOTO_CLOSEUP_PX:
            return dets
        top, left = round(PHOTO_PAD * h), round(PHOTO_PAD * w)
        k = min(1.0, YUNET_MAX_SIDE / max(h + 2 * top, w + 2 * left))  # border a small copy, not the photo
        small = rgb
        if k < 1.0:
            small = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        sx, sy = w / small.shape[1], h / small.shape[0]  # photo px per small-copy px
        t, lft = round(top / sy), round(left / sx)
        framed = cv2.copyMakeBorder(small, t, t, lft, lft, cv2.BORDER_CONSTANT, value=(PHOTO_PAD_GREY,) * 3)
        found: list[Detection] = []
        for d in sorted(self.detect(framed), key=lambda d: -d.score):
            m = _unframe(d, lft, t, sx, sy, w, h)
            if m is not None and not any(_same_eyes(m, f, 0.5) for f in found):
                found.append(m)
        found.sort(key=lambda d: d.area, reverse=True)
        best = [d for d in found if d.score >= floor]
        if good and len(good) == len(best) and _same_eyes(good[0], best[0], PHOTO_SAME_EYES):
            return dets  # confirmed: the template stays what it was
        return found  # the photo's own faces, unconfirmed, are not kept: a close-up's are often parts of the face

    def _mediapipe(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        result = self._impl.process(np.ascontiguousarray(rgb))
        out: list[Detection] = []
        for d in result.detections or []:
            rb = d.location_data.relative_bounding_box
            box = (rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h)
            kps = np.array(
                [(k.x * w, k.y * h) for k in d.location_data.relative_keypoints], dtype=np.float32
            )
            out.append(Detection(box=box, score=float(d.score[0]), keypoints=kps))
        return out

    def _yunet(self, rgb: np.ndarray) -> list[Detection]:
        """YuNet on a copy whose longest side is at most :data:`YUNET_MAX_SIDE` px; boxes, keypoints
        and corners are returned in px of the full-resolution ``rgb``."""
        import cv2

        h, w = rgb.shape[:2]
        bgr = rgb[:, :, ::-1]  # YuNet takes BGR
        sx = sy = 1.0  # full-image px per detection-copy px, per axis
        if max(h, w) > YUNET_MAX_SIDE:
            k = YUNET_MAX_SIDE / max(h, w)
            size = (max(1, round(w * k)), max(1, round(h * k)))
            bgr = cv2.resize(np.ascontiguousarray(bgr), size, interpolation=cv2.INTER_AREA)
            sx, sy = w / size[0], h / size[1]  # exact factors after rounding the copy's size
        dh, dw = bgr.shape[:2]
        self._impl.setInputSize((dw, dh))
        _, faces = self._impl.detect(np.ascontiguousarray(bgr))
        out: list[Detection] = []
        for f in faces if faces is not None else []:
            x, y, bw, bh = float(f[0]) * sx, float(f[1]) * sy, float(f[2]) * sx, float(f[3]) * sy
            lm = f[4:14].reshape(5, 2).astype(np.float32)  # right eye, left eye, nose, mouth r, mouth l
            lm *= np.array([sx, sy], dtype=np.float32)
            kps = np.vstack([lm[:3], lm[3:].mean(axis=0, keepdims=True)])
            out.append(Detection(box=(x, y, x + bw, y + bh), score=float(f[14]), keypoints=kps, corners=lm[3:]))
        return out


def _same_eyes(a: Detection, b: Detection, tol: float) -> bool:
    """True when both eye keypoints of ``a`` and ``b`` are within ``tol`` × ``b``'s eye distance (px)."""
    return float(np.linalg.norm(a.keypoints[:2] - b.keypoints[:2], axis=1).max()) <= tol * max(b.eye_distance, 1.0)


def _unframe(d: Detection, left: int, top: int, sx: float, sy: float, w: int, h: int) -> Detection | None:
    """A detection in a bordered, scaled copy mapped to the photo's px (``x = (x' - left) * sx``), its box clipped
    to the ``w`` x ``h`` photo; None when an eye or the nose tip lies outside the photo (a face in the border)."""
    off = np.array([left, top], dtype=np.float32)
    scale = np.array([sx, sy], dtype=np.float32)
    kps = (d.keypoints - off) * scale
    if not ((kps[:3, 0] >= 0) & (kps[:3, 0] < w) & (kps[:3, 1] >= 0) & (kps[:3, 1] < h)).all():
        return None
    x0, y0, x1, y1 = d.box
    box = (min(max((x0 - left) * sx, 0.0), w), min(max((y0 - top) * sy, 0.0), h),
           min(max((x1 - left) * sx, 0.0), w), min(max((y1 - top) * sy, 0.0), h))
    corners = None if d.corners is None else (d.corners - off) * scale
    return Detection(box=box, score=d.score, keypoints=kps, corners=corners)
