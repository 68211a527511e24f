"""Catalogue photos (issue 11, build 4): what is kept of an upload and what the door screen receives.

An upload is decoded **once** (:func:`checked_photo`, run by the form's validator, which keeps the result for the
save), turned upright (EXIF orientation), shrunk to at most :data:`STORED_MAX_PX` on its longer side and
**re-encoded** as JPEG without any metadata: the EXIF block (camera, time, GPS position) is never written to disk.
Before any pixel is decoded the header is checked: at most :data:`MAX_PHOTO_PIXELS`, and, from
:data:`RATIO_FROM_PIXELS` up, at most :data:`MAX_PIXELS_PER_BYTE` pixels per byte of file (a flat image of millions
of pixels in a few kilobytes is a decompression bomb, not a photo). A JPEG is decoded at the smallest of libjpeg's
scales (1/2, 1/4, 1/8) that still covers :data:`STORED_MAX_PX` (``Image.draft``), so a 12 MP phone photo costs a
quarter of its pixels or less; other formats are shrunk right after decoding, before any full-size copy is made.

The door screen gets a smaller copy (:data:`INLINE_MAX_PX`, JPEG quality :data:`INLINE_QUALITY`) inlined in the
catalogue snapshot as a ``data:image/jpeg;base64,...`` URI in the
``photo_url`` field of ``catalogue/1``, so a device never fetches a photo over the network and the photo
route can require a signed-in dashboard user. :func:`dangol_cloud.publishing.snapshot_items` leaves photos out
once their inlined bytes would pass its budget (the catalogue message must stay under
:data:`dangol_protocol.parse.MAX_PAYLOAD_BYTES`, 1 MiB), logged.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["INLINE_MAX_PX", "MAX_PHOTO_BYTES", "MAX_PHOTO_PIXELS", "MAX_PIXELS_PER_BYTE", "RATIO_FROM_PIXELS",
           "STORED_MAX_PX", "PhotoError", "checked_photo", "inline_builder", "inline_photo", "prepare_photo",
           "prepared_upload"]

log = logging.getLogger(__name__)

#: Largest upload: 8 MiB and 16 megapixels. A phone photo is ~12 MP (48 MP sensors save 12 MP by default) and the
#: door screen shows at most 800 pixels wide; a decoded 16 MP RGBA image is 64 MB (Pillow's own decompression-bomb
#: guard starts at ~89 MP).
MAX_PHOTO_BYTES = 8 * 1024 * 1024
MAX_PHOTO_PIXELS = 16_000_000
#: Pixels per byte of file above which an image of at least :data:`RATIO_FROM_PIXELS` pixels is refused unread.
#: Photos compress to 1–30 pixels per byte (a JPEG of a plain wall ~60); a flat PNG of 12 MP is ~300, the reviewer's
#: 40 MP bomb ~240 (166 KB).
MAX_PIXELS_PER_BYTE = 200
RATIO_FROM_PIXELS = 4_000_000

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


def _too_many(pixels: str) -> str:
    return (f"the photo has {pixels} pixels; at most {MAX_PHOTO_PIXELS // 1_000_000} megapixels: export it smaller "
            "(the door screen shows it at most 800 pixels wide)")


def _header_problem(image, size: int) -> str | None:
    """Why the opened (not yet decoded) ``image`` of ``size`` bytes is refused, or None."""
    width, height = image.size
    pixels = width * height
    if image.format not in ("JPEG", "PNG", "WEBP"):
        return f"the photo is {image.format}, not JPEG, PNG or WebP"
    if pixels > MAX_PHOTO_PIXELS:
        return _too_many(f"{width}×{height} ({pixels / 1e6:.0f} MP)")
    if pixels >= RATIO_FROM_PIXELS and pixels > MAX_PIXELS_PER_BYTE * size:
        return (f"the photo has {width}×{height} pixels in only {size / 1024:.0f} KB: compressed far more than a "
                "photo is (a flat image of that size is refused); export the photo itself, at most "
                f"{MAX_PHOTO_PIXELS // 1_000_000} megapixels")
    return None


def _shrunk(image, max_px: int):
    """The decoded ``image`` at most ``max_px`` a side (RGB, L or CMYK), without a full-size copy: with an alpha or
    padding band (RGBA, LA, RGBX) each colour band is shrunk on its own (Pillow would first convert, or premultiply,
    a full-size copy: +64 MB for 16 MP); a palette or other mode is converted (its pixels are 1 byte or the image
    is small)."""
    from PIL import Image

    def shrink(band):
        band.thumbnail((max_px, max_px), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return band

    if image.mode in ("RGB", "L", "CMYK"):
        return shrink(image)
    if image.mode in ("RGBA", "RGBX", "LA"):
        colour = "L" if image.mode == "LA" else "RGB"
        return Image.merge(colour, [shrink(image.getchannel(band)) for band in colour])  # one full-size band at a time
    return shrink(image.convert("RGB"))


def _upright(small, original):
    """``small`` turned as the ``original``'s EXIF orientation says (what ``ImageOps.exif_transpose`` does, read from
    the original: the shrunk copy has no metadata)."""
    from PIL import Image

    turn = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}.get(original.getexif().get(0x0112))  # 0x0112: Orientation
    return small.transpose(turn) if turn is not None else small


def checked_photo(data: bytes, max_px: int = STORED_MAX_PX) -> bytes:
    """Check an upload and make its stored form in one decode: upright, at most ``max_px`` on the longer side, JPEG
    (quality 85), no EXIF/XMP/ICC metadata.

    Refused before decoding: more than :data:`MAX_PHOTO_BYTES`, not JPEG/PNG/WebP, more than
    :data:`MAX_PHOTO_PIXELS`, or too many pixels per byte (:data:`MAX_PIXELS_PER_BYTE`). A JPEG is decoded at a
    reduced scale (``Image.draft``); any image is shrunk before it is copied (turned upright, converted to RGB).

    Raises:
        PhotoError: naming what is wrong (too large, not an image, truncated or corrupt, too many pixels).
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_PHOTO_BYTES:
        raise PhotoError(f"the photo is larger than {MAX_PHOTO_BYTES // (1024 * 1024)} MiB")
    problem = None  # PhotoError is a ValueError: raised only outside the try, never re-labelled
    try:
        with Image.open(io.BytesIO(data)) as image:
            problem = _header_problem(image, len(data))
            if problem is None:
                if image.format == "JPEG":
                    image.draft(None, (max_px, max_px))  # libjpeg's DCT scaling; still at least max_px a side
                image.load()  # decodes every pixel: a truncated or corrupt file fails here
                return _jpeg(_upright(_shrunk(image, max_px), image), max_px, 85)
    except Image.DecompressionBombError as exc:  # Pillow refuses to open it at all (> ~179 MP)
        size = re.search(r"(\d+) pixels", str(exc))
        problem = _too_many(f"{int(size.group(1)) / 1e6:.0f} million" if size else "too many")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        problem = f"the photo cannot be read as an image ({type(exc).__name__})"
    raise PhotoError(problem)


def prepare_photo(data: bytes, max_px: int = STORED_MAX_PX) -> bytes:
    """The stored form of an uploaded photo (:func:`checked_photo`).

    Args:
        data: the uploaded file's bytes.
    Raises:
        PhotoError: the bytes cannot be decoded or are refused.
    """
    return checked_photo(data, max_px)


def prepared_upload(field) -> bytes:
    """The stored form of the photo attached to the form ``field``: the one :func:`dangol_cloud.web.forms.valid_image`
    made while checking it (no second decode), else made now.

    Raises:
        PhotoError: the upload cannot be decoded or is refused (only when it was not validated).
    """
    prepared = getattr(field, "prepared_photo", None)
    if prepared is not None:
        return prepared
    field.data.seek(0)
    return checked_photo(field.data.read(MAX_PHOTO_BYTES + 1))


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
