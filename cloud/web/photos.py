"""Catalogue photos (issue 11, build 4): what is kept of an upload and what the door screen receives.

An upload is decoded once, turned upright (EXIF orientation), shrunk to at most :data:`STORED_MAX_PX` on its
longer side and **re-encoded** as JPEG without any metadata: the EXIF block (camera, time, GPS position) is
never written to disk. The door screen gets a smaller copy (:data:`INLINE_MAX_PX`, JPEG quality
:data:`INLINE_QUALITY`) inlined in the catalogue snapshot as a ``data:image/jpeg;base64,...`` URI in the
``photo_url`` field of ``catalogue/1``, so a device never fetches a photo over the network and the photo
route can require a signed-in dashboard user. :func:`dangol_cloud.publishing.snapshot_items` leaves photos out
once their inlined bytes would pass its budget (the catalogue message must stay under
:data:`dangol_protocol.parse.MAX_PAYLOAD_BYTES`, 1 MiB), logged.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from pathlib import Path

__all__ = ["INLINE_MAX_PX", "STORED_MAX_PX", "PhotoError", "inline_builder", "inline_photo",
           "prepare_photo"]

log = logging.getLogger(__name__)

#: Longer side of the stored photo, pixels (dashboard thumbnails and the item page).
STORED_MAX_PX = 800
#: Longer side of the copy inlined in the catalogue snapshot for the door screen, pixels.
INLINE_MAX_PX = 240
#: JPEG quality of the inlined copy (typically 6–15 KB for a 240 px food photo).
INLINE_QUALITY = 70


class PhotoError(ValueError):
    """The upload cannot be turned into a catalogue photo; the message says why."""


def _jpeg(image, max_px: int, quality: int) -> bytes:
    from PIL import Image

    image = image.convert("RGB")
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)  # no exif= argument: no metadata is written
    return out.getvalue()


def prepare_photo(data: bytes, max_px: int = STORED_MAX_PX) -> bytes:
    """The stored form of an uploaded photo: upright, at most ``max_px`` on the longer side, JPEG (quality 85),
    no EXIF/XMP/ICC metadata.

    Args:
        data: the uploaded file's bytes (already checked by :func:`dangol_cloud.web.forms.valid_image`).
    Raises:
        PhotoError: the bytes cannot be decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _jpeg(ImageOps.exif_transpose(image), max_px, 85)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PhotoError(f"the photo cannot be read as an image ({type(exc).__name__})") from None


def inline_photo(path: Path, max_px: int = INLINE_MAX_PX) -> str | None:
    """``data:image/jpeg;base64,...`` of a small copy of the stored photo at ``path``; None (logged) when the
    file is missing or unreadable, so one bad file never stops a Publish."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            jpeg = _jpeg(image, max_px, INLINE_QUALITY)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("catalogue photo %s cannot be inlined (%s): published without it", path.name, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def inline_builder(photos_dir: Path) -> Callable[[str], str | None]:
    """``filename -> data URI`` (or None) of photos in ``photos_dir``, for
    :func:`dangol_cloud.publishing.snapshot_items` (which also keeps the snapshot within its photo budget)."""
    root = Path(photos_dir).resolve()

    def build(filename: str) -> str | None:
        path = (root / filename).resolve()
        if path.parent != root:  # a stored name is a bare file name; anything else is not ours
            log.warning("catalogue photo name %r is not a file in the photos folder: left out", filename)
            return None
        return inline_photo(path)

    return build
