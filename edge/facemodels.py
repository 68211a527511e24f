"""What each supported face embedder expects: crop size, landmark template, input normalisation.

The edge tells the models apart by their input size (read from the ``.tflite`` file), so a device needs
no extra metadata to run either of them:

* **SFace** (default): OpenCV Zoo ``face_recognition_sface_2021dec`` (Zhong et al., "SFace:
  Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition", IEEE TIP 2021; MobileFaceNet-class,
  trained on MS1M-ArcFace; Apache-2.0). Input ``(1, 112, 112, 3)`` RGB pixels 0–255 (the graph subtracts
  127.5 and multiplies by 1/128 itself); output 128-d. Alignment: the five-point ArcFace template for
  112×112 crops (Deng et al., "ArcFace", CVPR 2019; the same constants as OpenCV's
  ``FaceRecognizerSF::alignCrop``).
* **FaceNet** Inception-ResNet-v1 20180408-102900 (Schroff et al., CVPR 2015; weights by D. Sandberg, MIT).
  Input ``(1, 160, 160, 3)`` RGB standardised as ``(pixel − 127.5) / 128``; output the 512-d bottleneck.
  Alignment: a four-point template fitted to MediaPipe keypoints on the LFW fold (see :mod:`.align`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ArcFace five-point template for a 112×112 crop, px: right eye, left eye (as seen in the image: the
#: subject's right eye is on the image's left), nose tip, right and left mouth corners. Source:
#: insightface ``face_align.py`` ``arcface_dst`` / OpenCV ``face_recognize.cpp``.
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

#: FaceNet's template as fractions of the 160 px crop: right eye, left eye, nose tip, mouth centre (the
#: mean MediaPipe keypoints of the LFW fold after eye alignment, made left-right symmetric; eye distance
#: 0.33 and eye line at 0.40 of the side chosen by a small grid on that fold).
FACENET_TEMPLATE = np.array([[0.5 - 0.33 / 2, 0.40], [0.5 + 0.33 / 2, 0.40], [0.5, 0.5816], [0.5, 0.7601]],
                            dtype=np.float32)


@dataclass(frozen=True)
class FaceModelSpec:
    """How to feed one embedder.

    Attributes:
        name: ``sface`` or ``facenet`` (the built files are ``<name>-int8.tflite`` / ``-float32``).
        size: crop side, px (input ``(1, size, size, 3)``).
        template4: ``(4, 2) float32`` target px of right eye, left eye, nose tip, mouth centre.
        template5: ``(5, 2) float32`` target px with the two mouth corners instead of the mouth centre,
            or None when the model was aligned on four points only.
        mean, scale: float input = ``(pixel − mean) × scale`` (RGB order).
        dim: embedding size.
        flip: embed each crop and its mirror image and use the normalised sum (flip test-time augmentation,
            as in the ArcFace/InsightFace evaluation code); every template and every probe is then a
            mirrored-and-original pair. Chosen for SFace on held-out LFW people (the identities
            ``pairs.txt`` does not use), int8 + YuNet: TAR at FAR = 1e-4 99.29 % → 100 % on them, all-pairs
            TAR at 1e-4 on the fold 99.77 % → 99.84 %, for one more embedder call per face.
    """

    name: str
    size: int
    template4: np.ndarray
    template5: np.ndarray | None
    mean: float
    scale: float
    dim: int
    flip: bool = False

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        """``(N, size, size, 3) uint8`` RGB crops → ``float32`` model input ``(pixel − mean) × scale``."""
        return (crops.astype(np.float32) - self.mean) * self.scale


SFACE = FaceModelSpec(
    name="sface", size=112,
    template4=np.vstack([ARCFACE_112[:3], ARCFACE_112[3:].mean(axis=0, keepdims=True)]).astype(np.float32),
    template5=ARCFACE_112, mean=0.0, scale=1.0, dim=128, flip=True,
)

FACENET = FaceModelSpec(
    name="facenet", size=160, template4=FACENET_TEMPLATE * 160, template5=None,
    mean=127.5, scale=1.0 / 128.0, dim=512,
)

SPECS = {s.name: s for s in (SFACE, FACENET)}


def spec_for_input(size: int) -> FaceModelSpec:
    """The spec of the embedder whose input side is ``size`` px.

    Raises:
        ValueError: no supported model has that input size.
    """
    for s in SPECS.values():
        if s.size == size:
            return s
    raise ValueError(f"no supported face model takes {size}×{size} input (supported: "
                     + ", ".join(f"{s.name} {s.size}" for s in SPECS.values()) + ")")
