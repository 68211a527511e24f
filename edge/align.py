"""Keypoint-based face alignment to the 160×160 crop FaceNet expects, and its fixed standardisation.

The crop is a similarity transform (rotation, uniform scale, translation) fitted robustly (least
median of squares, ``cv2.estimateAffinePartial2D``) from four MediaPipe keypoints — both eyes, nose
tip, mouth centre — to :data:`TEMPLATE`: eyes level, eye distance ``EYE_DISTANCE`` × 160 px, eye
midpoint at (80, ``EYE_Y`` × 160), nose and mouth at their mean LFW positions in that frame. If the fit
fails, the eyes alone set the transform. Using nose and mouth as well as the eyes makes the scale
steadier under yaw than an eye-only fit: on the LFW fold in ``shared/data`` the all-pairs TAR at
FAR = 1e-3 rose from 93.0 % (eyes only, distance 0.31) to 94.1 % (four points, 0.33); the constants were
chosen there by a small grid (README, "Accuracy").
"""

from __future__ import annotations

import cv2
import numpy as np

#: Output crop side, px (FaceNet 20180408-102900 input is 160×160×3).
CROP_SIZE = 160
#: Eye distance as a fraction of the crop side.
EYE_DISTANCE = 0.33
#: Vertical position of the eye midpoint as a fraction of the crop side.
EYE_Y = 0.40
#: Target positions (fractions of the crop side) of right eye, left eye, nose tip, mouth centre: the
#: mean MediaPipe keypoints of the LFW fold after eye alignment, made left-right symmetric.
TEMPLATE = np.array([[0.5 - EYE_DISTANCE / 2, EYE_Y], [0.5 + EYE_DISTANCE / 2, EYE_Y],
                     [0.5, 0.5816], [0.5, 0.7601]], dtype=np.float32)


def alignment_matrix(keypoints: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The ``(2, 3) float64`` similarity matrix mapping frame px to crop px.

    Args:
        keypoints: ``(≥4, 2)`` px in MediaPipe order (right eye, left eye, nose tip, mouth centre, …);
            with only two rows (the eyes) the eye-only transform is used.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    if len(kp) >= 4:
        m, _ = cv2.estimateAffinePartial2D(kp[:4], TEMPLATE * size, method=cv2.LMEDS)
        if m is not None and np.isfinite(m).all():
            return m.astype(np.float64)
    return eye_alignment_matrix(kp, size)


def eye_alignment_matrix(
    keypoints: np.ndarray, size: int = CROP_SIZE, eye_distance: float = EYE_DISTANCE, eye_y: float = EYE_Y
) -> np.ndarray:
    """The eye-only ``(2, 3) float64`` matrix: eyes level, ``eye_distance`` × size apart, midpoint at
    (size/2, ``eye_y`` × size).

    Args:
        keypoints: ``(≥2, 2)`` px; row 0 is the subject's right eye (image left), row 1 the left eye.
    """
    right, left = keypoints[0].astype(np.float64), keypoints[1].astype(np.float64)
    dx, dy = left - right
    dist = max(float(np.hypot(dx, dy)), 1e-6)
    angle = np.arctan2(dy, dx)
    scale = eye_distance * size / dist
    cos, sin = scale * np.cos(-angle), scale * np.sin(-angle)
    mid = (right + left) / 2.0
    # rotate+scale about the eye midpoint, then move it to its target position
    m = np.array([[cos, -sin, 0.0], [sin, cos, 0.0]])
    m[:, 2] = np.array([size / 2.0, eye_y * size]) - m[:, :2] @ mid
    return m


def align_face(rgb: np.ndarray, keypoints: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Cut the aligned ``(size, size, 3) uint8`` RGB crop of one face.

    When the face is much larger than the crop, the region is first shrunk with area averaging so the
    warp does not alias (a 1080p close-up would otherwise lose detail to sampling).

    Args:
        rgb: ``(H, W, 3) uint8`` RGB frame.
        keypoints: ``(≥2, 2)`` px keypoints (MediaPipe order, see :mod:`dangol_edge.detect`).
    """
    m = alignment_matrix(keypoints, size)
    scale = float(np.hypot(m[0, 0], m[0, 1]))
    if scale < 0.5:
        # Crop the source region the output covers, shrink it by area averaging, then warp.
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
        src = corners @ inv.T
        x0, y0 = np.floor(src.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(src.max(axis=0)).astype(int) + 2
        h, w = rgb.shape[:2]
        x0c, y0c, x1c, y1c = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1c > x0c and y1c > y0c:
            roi = rgb[y0c:y1c, x0c:x1c]
            f = scale * 1.5  # leave the warp a little headroom
            small = cv2.resize(roi, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            fx = small.shape[1] / roi.shape[1]
            fy = small.shape[0] / roi.shape[0]
            # frame px -> small px:  xs = (x - x0c) * fx
            to_small = np.array([[fx, 0, -x0c * fx], [0, fy, -y0c * fy], [0, 0, 1]])
            m = m @ np.linalg.inv(to_small)
            rgb = small
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def standardize(crops: np.ndarray) -> np.ndarray:
    """FaceNet 2018 fixed standardisation: ``(pixel - 127.5) / 128``.

    Source: davidsandberg/facenet ``facenet.py`` (``FIXED_STANDARDIZATION``), used to train
    20180408-102900.

    Args:
        crops: ``(N, 160, 160, 3) uint8`` RGB.
    Returns:
        ``(N, 160, 160, 3) float32`` in about [-1, 1].
    """
    return (crops.astype(np.float32) - 127.5) / 128.0


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop (higher is sharper); Pech-Pacheco et al., 2000."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())
