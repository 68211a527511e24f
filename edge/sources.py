"""Frame sources behind one interface: picamera2, OpenCV ``VideoCapture`` and folders of images.

Every source yields :class:`Frame` objects holding an RGB ``(H, W, 3) uint8`` image and a capture
timestamp in seconds. Nothing is opened in a constructor: call :meth:`FrameSource.open` (or use the
source as a context manager).

Source specs (``open_source``, parsed by :func:`dangol_edge.camera_spec.parse_camera_spec`): ``picamera2:0``
(Raspberry Pi camera), ``0`` (OpenCV device index), ``/dev/video0`` (V4L2 device), ``rtsp://…`` / ``http(s)://…``
(stream), a video file (``.mp4``, ``.gif``, …), a folder of images, or a single image file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .camera_spec import IMAGE_SUFFIXES, CameraSpec, CameraSpecError, parse_camera_spec

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the source."""


class ImageDecodeError(ValueError):
    """An image file is missing, unreadable or not a decodable image; the message names the file."""


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    Attributes:
        rgb: ``(H, W, 3) uint8`` image, RGB channel order.
        ts: capture time in seconds (video position for files, ``time.monotonic()`` for live sources).
        index: 0-based frame number within the source.
        name: file name for image folders, else ``""``.
    """

    rgb: np.ndarray
    ts: float
    index: int
    name: str = ""


#: Largest image file read, bytes (a 12 MP JPEG is ~5 MiB; anything this big is not a photo of a face).
MAX_IMAGE_BYTES = 64 << 20
#: Largest image decoded, pixels (checked from the header before decoding, so a "decompression bomb"
#: never allocates memory): 40 MP, above any phone camera's 4:3 mode in common use.
MAX_IMAGE_PIXELS = 40_000_000


def _check_dimensions(p: Path) -> int:
    """Refuse images whose header declares more than :data:`MAX_IMAGE_PIXELS` (Pillow reads only the header);
    return the EXIF orientation (1-8, 1 = as stored, also when there is none).

    Raises:
        ImageDecodeError: too many pixels, including an image so large that Pillow itself refuses to open it
            (its ``DecompressionBombError``, above ~179 MP).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # our own limit below replaces Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                try:
                    orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
                except (ValueError, TypeError, SyntaxError, OSError):  # a malformed EXIF block: pixels as stored
                    orientation = 1
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{p}: image too large ({exc})") from None
    except (UnidentifiedImageError, ValueError):
        return 1  # not something Pillow knows: OpenCV's decode below gives the error
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(f"{p}: image too large ({w}×{h} px > {MAX_IMAGE_PIXELS / 1e6:.0f} MP)")
    return orientation if 1 <= orientation <= 8 else 1


#: The EXIF tag that says how the stored pixels must be turned to be seen upright (TIFF/EXIF 2.3, tag 0x0112).
EXIF_ORIENTATION = 0x0112


def _upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn decoded pixels as their EXIF ``orientation`` says (2 mirror, 3 half turn, 4 flip, 5 transpose, 6 turn
    clockwise, 7 transverse, 8 turn anticlockwise; EXIF 2.3 §4.6.4): phones store portraits sideways."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(img), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB ``(H, W, 3) uint8``, upright as its EXIF orientation says.

    Greyscale is expanded to three channels and an alpha channel (RGBA PNG) is dropped.

    Raises:
        ImageDecodeError: the file is missing, unreadable, not a decodable image, or larger than
            :data:`MAX_IMAGE_BYTES` / :data:`MAX_IMAGE_PIXELS`.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageDecodeError(f"{p}: image file too large ({size / 2**20:.0f} MiB > {MAX_IMAGE_BYTES >> 20} MiB)")
        orientation = _check_dimensions(p)
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise ImageDecodeError(f"{p}: cannot read image: {exc.strerror or exc}") from exc
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageDecodeError(f"{p}: not a decodable image (corrupt or unsupported format)")
    if img.dtype != np.uint8:  # 16-bit PNG/TIFF
        img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    img = _upright(img, orientation)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class FrameSource:
    """Base class: ``open()``, iterate frames, ``close()``. Also a context manager."""

    spec: str = ""

    def open(self) -> "FrameSource":
        """Open the device or file. Raises :class:`SourceError` naming the source."""
        return self

    def close(self) -> None:
        """Release the device or file. Safe to call twice."""

    def frames(self) -> Iterator[Frame]:
        """Yield frames until the source ends (files) or :meth:`close` is called."""
        raise NotImplementedError

    @property
    def live(self) -> bool:
        """True for cameras and streams (frames may be dropped), False for files."""
        return False

    def __enter__(self) -> "FrameSource":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()


class ImageFolderSource(FrameSource):
    """Images from a folder (sorted by name) or a single image file; timestamps are ``index / fps``.

    Unreadable images are logged and skipped (counted in :attr:`skipped`), so one corrupt file does
    not stop a folder.
    """

    def __init__(self, path: str | Path, fps: float = 10.0):
        self.path = Path(path)
        self.spec = str(path)
        self.fps = fps
        self.skipped = 0
        self._files: list[Path] = []

    def open(self) -> "ImageFolderSource":
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise SourceError(f"{self.path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif self.path.is_file():
            self._files = [self.path]
        else:
            raise SourceError(f"{self.path}: no such file or folder")
        return self

    def frames(self) -> Iterator[Frame]:
        for i, f in enumerate(self._files):
            try:
                rgb = read_image(f)
            except ImageDecodeError as exc:
                self.skipped += 1
                log.warning("skipping image: %s", exc)
                continue
            yield Frame(rgb=rgb, ts=i / self.fps, index=i, name=f.name)


class OpenCVSource(FrameSource):
    """OpenCV ``VideoCapture``: a device index, a V4L2 device path, an RTSP/HTTP URL or a video file (incl.
    animated GIF).

    For files the timestamp is the position in the video (``CAP_PROP_POS_MSEC`` / 1000, falling back
    to ``index / fps``); for live sources it is ``time.monotonic()`` at read.

    Raises:
        SourceError: (constructor) ``spec`` is a string that is not an index, device, URL or existing file.
    """

    def __init__(self, spec: str | int | CameraSpec):
        try:
            self._parsed = spec if isinstance(spec, CameraSpec) else parse_camera_spec(str(spec))
        except CameraSpecError as exc:
            raise SourceError(str(exc)) from None
        self.spec = self._parsed.text
        p = self._parsed
        self._target: str | int = p.number if p.kind == "index" else str(p.path) if p.path else p.text
        self._cap: cv2.VideoCapture | None = None
        self._live = p.live
        self.fps = 0.0

    @property
    def live(self) -> bool:
        return self._live

    def open(self) -> "OpenCVSource":
        if self._parsed.kind == "video" and not Path(str(self._target)).is_file():
            raise SourceError(f"{self.spec}: no such video file")
        if self._parsed.kind == "device":  # the V4L2 back end takes a device path (FFmpeg would try it first)
            cap = cv2.VideoCapture(self._target, getattr(cv2, "CAP_V4L2", cv2.CAP_ANY))
        else:
            cap = cv2.VideoCapture(self._target)
        if not cap.isOpened():
            cap.release()
            if self._parsed.kind == "device" and not Path(str(self._target)).exists():
                raise SourceError(f"{self.spec}: no such device (camera not plugged in?)")
            raise SourceError(f"{self.spec}: OpenCV cannot open this source")
        self._cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not (0 < self.fps < 1000):
            self.fps = 25.0
        return self

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def frames(self) -> Iterator[Frame]:
        if self._cap is None:
            raise SourceError(f"{self.spec}: source is not open")
        i = 0
        while self._cap is not None:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                if self._live:
                    raise SourceError(f"{self.spec}: camera stopped delivering frames")
                return
            if self._live:
                ts = time.monotonic()
            else:
                pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                ts = pos / 1000.0 if pos and pos > 0 else i / self.fps
            yield Frame(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ts=ts, index=i)
            i += 1


class Picamera2Source(FrameSource):
    """A Raspberry Pi camera through picamera2 (libcamera). Imported only when used, i.e. on a Pi.

    Args:
        camera: camera number (``picamera2:0`` → 0).
        size: capture size ``(width, height)`` px.
    """

    def __init__(self, camera: int = 0, size: tuple[int, int] = (1280, 720)):
        self.camera = camera
        self.size = size
        self.spec = f"picamera2:{camera}"
        self._cam = None

    @property
    def live(self) -> bool:
        return True

    def open(self) -> "Picamera2Source":
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as exc:
            raise SourceError(
                f"{self.spec}: picamera2 is not installed (on Pi OS: apt install python3-picamera2)"
            ) from exc
        try:
            cam = Picamera2(self.camera)
            # "RGB888" in libcamera terms is BGR byte order in memory; ask for it and convert below.
            cam.configure(cam.create_video_configuration(main={"size": self.size, "format": "RGB888"}))
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError/IndexError for a missing camera
            raise SourceError(f"{self.spec}: cannot start camera: {exc}") from exc
        self._cam = cam
        return self

    def close(self) -> None:
        if self._cam is not None:
            self._cam.stop()
            self._cam.close()
            self._cam = None

    def frames(self) -> Iterator[Frame]:
        """Yield frames until :meth:`close`.

        Raises:
            SourceError: the camera failed to deliver or convert a frame (libcamera raises ``RuntimeError``
                on a frontend timeout, ``IndexError`` and others when the camera goes away).
        """
        i = 0
        while self._cam is not None:
            try:
                bgr = self._cam.capture_array("main")
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            except Exception as exc:  # whatever libcamera/picamera2 raise: the capture worker reopens the camera
                raise SourceError(f"{self.spec}: cannot read a frame: {type(exc).__name__}: {exc}") from exc
            yield Frame(rgb=rgb, ts=time.monotonic(), index=i)
            i += 1


def open_source(spec: str | CameraSpec, size: tuple[int, int] = (1280, 720)) -> FrameSource:
    """Make (but do not open) the source for a spec; see :mod:`dangol_edge.camera_spec` for the forms.

    Args:
        spec: a spec string, or one parsed by :func:`~dangol_edge.camera_spec.parse_camera_spec`.
        size: capture size ``(width, height)`` px of a Raspberry Pi camera (ignored by other sources).

    Raises:
        SourceError: the spec is not a valid source (the :class:`~dangol_edge.camera_spec.CameraSpecError`
            message: a typo, or no such file or folder).
    """
    try:
        parsed = spec if isinstance(spec, CameraSpec) else parse_camera_spec(spec)
    except CameraSpecError as exc:
        raise SourceError(str(exc)) from None
    if parsed.kind == "picamera2":
        return Picamera2Source(parsed.number or 0, size)
    if parsed.kind == "images":
        return ImageFolderSource(parsed.path)
    return OpenCVSource(parsed)
