"""Face embeddings with a TFLite FaceNet model (int8 or float32).

Model: FaceNet Inception-ResNet-v1 20180408-102900 (Schroff et al., "FaceNet", CVPR 2015; weights by
D. Sandberg, trained on CASIA-WebFace, MIT licence), converted by ``dangol-models build``. The runtime is
``ai-edge-litert`` or ``tflite-runtime`` (whichever is installed; TensorFlow itself as a last resort).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from .align import standardize

log = logging.getLogger(__name__)

EMBEDDING_DIM = 512


class ModelError(RuntimeError):
    """The embedder model is missing, unreadable or has the wrong shape; the message names the file."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (identifies the model a template was made with)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf  # type: ignore[import-not-found]

        return tf.lite.Interpreter
    except ImportError as exc:
        raise ModelError("no TFLite runtime: install ai-edge-litert or tflite-runtime") from exc


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of ``(N, D)`` float → ``(N, D) float32`` unit vectors."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class Embedder:
    """Computes L2-normalised ``(N, 512) float32`` embeddings from aligned RGB crops.

    Args:
        model_path: a ``.tflite`` file with input ``(1, 160, 160, 3)`` (float32 or int8) and output
            ``(1, 512)``.
        threads: interpreter threads.

    The model is loaded on first use or :meth:`open`; :attr:`sha256` identifies it.
    """

    def __init__(self, model_path: str | Path, threads: int = 2):
        self.model_path = Path(model_path)
        self.threads = threads
        self._interp = None
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """Hex sha256 of the model file."""
        if self._sha256 is None:
            if not self.model_path.is_file():
                raise ModelError(f"{self.model_path}: model file not found (run `dangol-models build`)")
            self._sha256 = file_sha256(self.model_path)
        return self._sha256

    def open(self) -> "Embedder":
        """Load the model. Raises :class:`ModelError` naming the file."""
        if self._interp is not None:
            return self
        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: model file not found (run `dangol-models build`)")
        try:
            interp = _interpreter_class()(model_path=str(self.model_path), num_threads=self.threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.model_path}: not a loadable TFLite model: {exc}") from exc
        inp = interp.get_input_details()[0]
        out = interp.get_output_details()[0]
        if tuple(inp["shape"][1:]) != (160, 160, 3) or int(out["shape"][-1]) != EMBEDDING_DIM:
            raise ModelError(
                f"{self.model_path}: expected input (1,160,160,3) and output (1,512), "
                f"got {tuple(inp['shape'])} and {tuple(out['shape'])}"
            )
        self._interp, self._inp, self._out = interp, inp, out
        return self

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed aligned crops.

        Args:
            crops: ``(N, 160, 160, 3) uint8`` RGB, from :func:`dangol_edge.align.align_face`.
        Returns:
            ``(N, 512) float32``, each row of unit L2 norm.
        """
        self.open()
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.shape[1:] != (160, 160, 3) or crops.dtype != np.uint8:
            raise ValueError(f"expected (N, 160, 160, 3) uint8 crops, got {crops.shape} {crops.dtype}")
        x = standardize(crops)
        interp, inp, out = self._interp, self._inp, self._out
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        res = np.empty((len(x), EMBEDDING_DIM), dtype=np.float32)
        for i in range(len(x)):
            interp.set_tensor(inp["index"], x[i : i + 1])
            interp.invoke()
            y = interp.get_tensor(out["index"])[0]
            if out["dtype"] != np.float32:
                scale, zero = out["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            res[i] = y
        return l2_normalize(res)
