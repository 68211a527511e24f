"""Small helpers shared by the model build, calibration and evaluation."""

from __future__ import annotations

import hashlib
from pathlib import Path


class BuildError(RuntimeError):
    """A model cannot be built; the message names the missing or bad input."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def centre_face(dets, shape):
    """The detection whose box centre is nearest the image centre (LFW images are centred on the subject)."""
    h, w = shape[:2]
    if not dets:
        return None
    return min(dets, key=lambda d: ((d.box[0] + d.box[2]) / 2 - w / 2) ** 2 + ((d.box[1] + d.box[3]) / 2 - h / 2) ** 2)
