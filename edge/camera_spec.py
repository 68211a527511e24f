"""Parsing of a camera source spec (``camera.source``, ``--source``): the one place that decides what it names.

The config's field validator checks the spelling only (``on_disk=False``: loading a config for ``customers`` or
``rotate-key`` never fails on a video file that is not there); ``dangol-edge check-config`` and ``run``
(:func:`dangol_edge.config.check_daemon_settings`) and :func:`dangol_edge.sources.open_source` check the disk too.
A typo fails ``check-config`` with the field and value named, instead of the daemon retrying a camera that can
never open. Standard
library only, so the config can import it without OpenCV.

Accepted forms (surrounding spaces are dropped):

* ``picamera2`` or ``picamera2:N`` — Raspberry Pi camera *N* (CSI connector; ``picamera2`` = ``picamera2:0``).
* ``N`` (digits) — OpenCV camera index, e.g. ``0`` for the first USB webcam.
* ``rtsp://``, ``rtsps://``, ``http://`` or ``https://`` URL with a host — a network camera stream; any other
  ``scheme://`` (``rtmp://``, ``udp://``, ``srt://``, ``file://``) is handed to OpenCV's FFmpeg back end as it is,
  except the usual misspellings of ``rtsp`` (``rstp``, ``rtps``, ``rtp``), refused with a hint.
* a V4L2 device: an existing video4linux character device (``/dev/video0``, ``/dev/v4l/by-id/usb-…``).
  ``/dev/video<N>`` and ``/dev/v4l/by-id|by-path/…`` are accepted even when absent: a USB camera may be
  plugged in after the check (the daemon retries it and reports the camera ``missing`` until then).
* an existing folder (its images, by name) or a readable file: an image (by suffix) or a video.
  A relative path is relative to the current folder (``/var/lib/dangol`` for the systemd service); write a
  relative file name holding a colon as ``./name``.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

#: Image file suffixes: a file with one of these is shown as a still, any other readable file is a video.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
#: Stream URL schemes (OpenCV's FFmpeg back end).
URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
#: Character-device major number of video4linux (Linux Documentation/admin-guide/devices.txt).
V4L_MAJOR = 81
#: Device paths accepted while absent: a USB camera not plugged in yet.
_HOTPLUG_DEVICE = re.compile(r"/dev/(video\d+|v4l/by-(id|path)/.+)")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")

FORMS = ("picamera2 or picamera2:N (Raspberry Pi camera N), a camera number (0, 1, …), a V4L2 device "
         "(/dev/video0), an rtsp:// or http(s):// URL, a video file or a folder of images")

SourceKind = Literal["picamera2", "index", "url", "device", "video", "images", "path"]


class CameraSpecError(ValueError):
    """A camera source spec names nothing that can be opened; the message quotes the spec and says why."""


@dataclass(frozen=True)
class CameraSpec:
    """A parsed camera source spec.

    Attributes:
        kind: ``picamera2`` (Pi camera), ``index`` (OpenCV camera number), ``url`` (stream), ``device``
            (V4L2 device path), ``video`` (video file) or ``images`` (a folder of images, or one image file); ``path``
            for a path not looked up (``on_disk=False``).
        text: the spec as written, without surrounding spaces (the URL for ``url``).
        number: the camera number for ``picamera2`` and ``index``, else ``None``.
        path: the path (``~`` expanded) for ``device``, ``video`` and ``images``, else ``None``.
    """

    kind: SourceKind
    text: str
    number: int | None = None
    path: Path | None = None

    @property
    def live(self) -> bool:
        """True for cameras and streams (frames may be dropped), False for files and folders."""
        return self.kind in ("picamera2", "index", "url", "device")


def parse_camera_spec(spec: str, *, on_disk: bool = True) -> CameraSpec:
    """Parse a camera source spec; see the module docstring for the accepted forms.

    With ``on_disk`` (default), paths are checked on disk (existence, type, readability); without, a path is
    returned unchecked as kind ``path``. Nothing is opened.

    Raises:
        CameraSpecError: (a ``ValueError``) the spec is empty, a misspelt ``picamera2``, a URL of another
            scheme or without ``//`` or host or with a bad port, a path that does not exist (other than an
            absent ``/dev/video<N>``), an unreadable file, or something that is not a folder, a file or a
            video4linux device (a FIFO, ``/dev/null``). The message quotes the spec.
    """
    text = str(spec).strip()
    if not text:
        raise CameraSpecError(f"'' is empty: use {FORMS}")
    if text.startswith("picamera2"):
        num = text.removeprefix("picamera2")
        if num == "":
            return CameraSpec("picamera2", text, number=0)
        if num.startswith(":") and num[1:].isascii() and num[1:].isdigit():
            return CameraSpec("picamera2", text, number=int(num[1:]))
        raise CameraSpecError(f"{text!r}: a Raspberry Pi camera is picamera2 or picamera2:N with N its number "
                              "(picamera2:0 for the first)")
    if text.isascii() and text.isdigit():
        return CameraSpec("index", text, number=int(text))
    if "://" in text:
        return _parse_url(text)
    if (m := _SCHEME.match(text)) and len(m.group(1)) > 1:  # "rtsp:/cam", "picamera:0" (not "C:")
        scheme = m.group(1).lower()
        if scheme in URL_SCHEMES:
            raise CameraSpecError(f"{text!r}: a stream URL starts with {scheme}:// (two slashes), "
                                  f"e.g. {scheme}://192.168.1.20:554/stream")
        hint = " (did you mean picamera2:0?)" if scheme.startswith(("picam", "libcam", "pi")) else ""
        raise CameraSpecError(f"{text!r} is not a camera source{hint}: use {FORMS}")
    if not on_disk:
        return CameraSpec("path", text, path=Path(text).expanduser())
    return _parse_path(text)


def _parse_url(text: str) -> CameraSpec:
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        raise CameraSpecError(f"{text!r}: not a valid URL (bad port?): {exc}") from None
    scheme = url.scheme.lower()
    if scheme in ("rstp", "rtps", "rtp"):
        raise CameraSpecError(f"{text!r}: {url.scheme}:// is not a camera stream (did you mean rtsp://?)")
    if scheme not in URL_SCHEMES:  # rtmp, udp, srt, file, …: FFmpeg knows more protocols than we do
        return CameraSpec("url", text)
    if not url.hostname:
        raise CameraSpecError(f"{text!r}: the URL names no host (e.g. {url.scheme}://192.168.1.20:554/stream)")
    return CameraSpec("url", text)


def _parse_path(text: str) -> CameraSpec:
    path = Path(text).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        if _HOTPLUG_DEVICE.fullmatch(str(path)):
            return CameraSpec("device", text, path=path)  # a USB camera not plugged in yet
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise CameraSpecError(f"{text!r}: no such file or folder{where}; a camera source is {FORMS}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL character
        raise CameraSpecError(f"{text!r}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        return CameraSpec("images", text, path=path)
    if stat.S_ISCHR(st.st_mode):
        if os.major(st.st_rdev) != V4L_MAJOR:
            raise CameraSpecError(f"{text!r}: not a video device (a camera is /dev/video<N>)")
        return CameraSpec("device", text, path=path)
    if not stat.S_ISREG(st.st_mode):
        raise CameraSpecError(f"{text!r}: not a folder, a file or a video device")
    if not os.access(path, os.R_OK):
        raise CameraSpecError(f"{text!r}: cannot read this file (permission denied)")
    return CameraSpec("images" if path.suffix.lower() in IMAGE_SUFFIXES else "video", text, path=path)
