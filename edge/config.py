"""Typed, bounded configuration for the edge (pydantic v2 + pydantic-settings).

Values come, in increasing priority, from the defaults below, a TOML or JSON config file, environment
variables prefixed ``DANGOL_`` (nested fields with ``__``, e.g. ``DANGOL_MATCHER__THRESHOLD=0.6``; the flat
``DANGOL_MQTT_URL`` beats the file and loses to ``DANGOL_MQTT__URL``) and command-line options (the
``overrides`` of :func:`load_config`, e.g. ``--home``). ``DANGOL_HOME`` sets the data folder, so two
instances can run side by side on one machine.

Every numeric field has bounds; a value out of range raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import json
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from dangol_protocol import CONSENT_TEXT_VERSION
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .camera_spec import parse_camera_spec


#: Command-line values for the :class:`EdgeConfig` being built (highest priority; see :func:`load_config`).
_OVERRIDES: ContextVar[dict[str, Any]] = ContextVar("dangol_edge_config_overrides", default={})


class _Overrides(PydanticBaseSettingsSource):
    """A settings source returning the command-line overrides of the config being built."""

    def get_field_value(self, field, field_name):  # required by the base class; __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_OVERRIDES.get())


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the file and the field."""


def default_home() -> Path:
    """The edge data folder: ``$DANGOL_HOME``, else ``$XDG_DATA_HOME/dangol``, else ``~/.local/share/dangol``."""
    if os.environ.get("DANGOL_HOME"):
        return Path(os.environ["DANGOL_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "dangol"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorConfig(_Section):
    """Face detection and the quality gates applied to each detection.

    ``backend``: ``yunet`` (default; OpenCV Zoo YuNet 2023mar through ``cv2.FaceDetectorYN``, five
    landmarks: eyes, nose tip and the two mouth corners the ArcFace template needs; ``yunet_path``
    defaults to ``face_detection_yunet_2023mar.onnx`` next to the embedder model) or ``mediapipe``
    (BlazeFace; four usable landmarks, the mouth corners replaced by the mouth centre). Chosen by
    measurement with SFace int8 (``dangol-models evaluate --detector``, the Hamilton clip): on the LFW
    people ``pairs.txt`` does not use, TAR at FAR = 1e-4 100 % (YuNet) vs 96.4 % (MediaPipe full-range); all-pairs
    TAR at FAR = 1e-4 on the fold 99.83 % vs 98.38 %; on the clip YuNet finds Lin-Manuel Miranda on stage
    in frame 2 (cosine 0.53 to his photo; MediaPipe's landmarks on the same 45 px face give 0.20, so he
    is recognised only at 2.8 s) and the pianist MediaPipe misses; MediaPipe is then not even imported.
    ``model`` (MediaPipe only): ``full`` is BlazeFace full-range (faces up to ~5 m, what an entrance
    camera needs); ``short`` is BlazeFace short-range (within ~2 m, faster). Both ship inside the
    MediaPipe wheel.
    """

    backend: Literal["mediapipe", "yunet"] = "yunet"
    yunet_path: Path | None = None
    model: Literal["short", "full"] = "full"
    min_score: float = Field(0.6, ge=0.05, le=1.0, description="detector confidence threshold")
    min_face_px: int = Field(40, ge=16, le=2000, description="minimum face box width, px")
    min_sharpness: float = Field(
        15.0, ge=0.0, le=10_000.0, description="minimum variance of the Laplacian of the aligned crop"
    )
    max_yaw: float = Field(
        0.45, ge=0.0, le=1.0,
        description="max |nose offset from eye midpoint| / eye distance; 0 = perfectly frontal",
    )
    max_roll_deg: float = Field(35.0, ge=0.0, le=90.0, description="max in-plane eye tilt, degrees")


class EmbedderConfig(_Section):
    """The TFLite face embedder: ``model`` ``sface`` (default) or ``facenet``; ``model_path`` defaults to
    ``<home>/models/<model>-int8.tflite``.

    ``previous_model_path``: during a model upgrade, the embedder the gallery's templates were made
    with. While it is set, a customer recognised confidently by the previous model gets a template of
    the new model from the same frame (see :mod:`dangol_edge.upgrade`); ``upgrade_days`` after the
    first such run, or once every customer has a new template, the previous model is no longer used.
    """

    model: Literal["sface", "facenet"] = "sface"
    model_path: Path | None = None
    previous_model_path: Path | None = None
    upgrade_days: float = Field(30.0, gt=0.0, le=365.0, description="run both models at most this long, days")
    threads: int = Field(2, ge=1, le=16)


class MatcherConfig(_Section):
    """Open-set 1:N matching on cosine similarity of L2-normalised embeddings.

    A probe is accepted as customer *c* only when ``sim(c) >= threshold`` and
    ``sim(c) - sim(best other customer) >= margin``. Unless ``threshold`` is set, it is calibrated to the
    gallery: the smallest score at which a stranger's probe photo would be accepted as anyone with
    probability at most ``target_fpir`` (false-positive identification rate) against the current number
    of templates, from the model's impostor score distribution recorded by ``dangol-models build``
    (:mod:`dangol_edge.calibration`). A track must then also win ``tracker.min_votes`` such photos.
    """

    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="fixed threshold (overrides target_fpir)")
    target_fpir: float = Field(0.01, ge=1e-6, le=0.5, description="strangers accepted per probe photo")
    margin: float = Field(0.05, ge=0.0, le=2.0)


class TrackerConfig(_Section):
    """Tracking faces across frames and voting on identity."""

    iou_match: float = Field(0.3, ge=0.0, le=1.0, description="min IoU to continue a track")
    max_gap_s: float = Field(1.0, gt=0.0, le=30.0, description="a track unseen this long ends, seconds")
    min_votes: int = Field(3, ge=1, le=100, description="accepted frames for a known identity")
    vote_share: float = Field(0.6, gt=0.0, le=1.0, description="share of a track's votes the winner needs")
    unknown_after: int = Field(6, ge=1, le=1000, description="embedded frames before a track is called unknown")
    cooldown_s: float = Field(600.0, ge=0.0, le=86_400.0, description="one arrival per customer per this, seconds")


#: The door's sign-up rule (:class:`dangol_edge.enrol.SampleCollector`'s defaults, as the door's sign-up builds it): a
#: pool of this many good faces per template, taken at least ``SIGNUP_MIN_GAP_FRAMES`` frames apart.
SIGNUP_POOL_PER_TEMPLATE, SIGNUP_MIN_GAP_FRAMES = 3, 2


def signup_frames_needed(templates: int) -> int:
    """Frames a sign-up at the door needs at least for ``templates`` templates: a pool of
    :data:`SIGNUP_POOL_PER_TEMPLATE` × ``templates`` good faces :data:`SIGNUP_MIN_GAP_FRAMES` frames apart, the
    first in the first frame, so ``gap × (pool − 1) + 1`` frames (6 × templates − 1), reached only with a good face
    in every frame and none dropped. An ``enrol.max_frames`` below it ends every sign-up as failed."""
    pool = SIGNUP_POOL_PER_TEMPLATE * templates
    return SIGNUP_MIN_GAP_FRAMES * (pool - 1) + 1


class EnrolConfig(_Section):
    """Enrolment from photos or a live source. ``max_frames`` must leave a sign-up at the door room to succeed:
    at least :func:`signup_frames_needed` of ``templates`` (29 for 5 templates)."""

    templates: int = Field(5, ge=1, le=50, description="good frames to capture from a live source")
    max_frames: int = Field(300, ge=1, le=100_000, description="give up after this many frames")
    keep_photos: bool = Field(False, description="store the aligned enrolment crops (off: no face images kept)")
    pending_ttl_h: float = Field(24.0, gt=0.0, le=24 * 30, description="a pending customer expires after, hours")

    @model_validator(mode="after")
    def _room_for_a_sign_up(self) -> "EnrolConfig":
        need = signup_frames_needed(self.templates)
        if self.max_frames < need:
            raise ValueError(f"enrol.max_frames = {self.max_frames} is below the {need} frames a sign-up needs for "
                             f"enrol.templates = {self.templates} ({SIGNUP_POOL_PER_TEMPLATE * self.templates} good "
                             f"faces {SIGNUP_MIN_GAP_FRAMES} frames apart): every sign-up would fail; raise "
                             "enrol.max_frames or lower enrol.templates")
        return self


class PrivacyConfig(_Section):
    """Retention of biometric data on the edge.

    ``retention_days``: a customer not seen at this door for this many days is erased here (templates
    and name). Capped at 3 years by the Illinois Biometric Information Privacy Act, 740 ILCS 14/15(a).
    """

    retention_days: int = Field(365, ge=1, le=3 * 365)


class DeviceConfig(_Section):
    """Who this box is: UUIDs given by the cloud dashboard when the device is created."""

    id: UUID | None = None
    store_id: UUID | None = None


class MQTTConfig(_Section):
    """Broker connection. ``url`` is ``mqtt[s]://user:password@host:port`` (env ``DANGOL_MQTT_URL``
    also works); empty means run offline (cached catalogue and menus, events kept in the outbox)."""

    url: str | None = None
    tls_ca: Path | None = Field(None, description="CA certificate for mqtts://")
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0.0, le=60.0)
    reconnect_max_s: float = Field(60.0, gt=0.0, le=3600.0)
    status_interval_s: float = Field(30.0, ge=1.0, le=3600.0, description="health on the status topic every")


class CameraConfig(_Section):
    """The entrance camera for ``dangol-edge run``.

    ``source``: ``picamera2[:N]`` (Raspberry Pi camera N), a camera number (``0``), a V4L2 device
    (``/dev/video0``; accepted while unplugged), an ``rtsp://`` or ``http(s)://`` URL, a video file or a folder
    of images (see :mod:`dangol_edge.camera_spec`). A typo or a path that does not exist is refused here.
    """

    source: str = "picamera2:0"
    width: int = Field(1280, ge=160, le=4096, description="picamera2 capture width, px")
    height: int = Field(720, ge=120, le=4096, description="picamera2 capture height, px")
    queue_size: int = Field(2, ge=1, le=64, description="frames waiting for recognition; older ones are dropped")
    loop: bool = Field(False, description="restart a video file at its end (demos, soak tests)")
    realtime: bool = Field(True, description="pace video files at their frame rate")
    retry_min_s: float = Field(1.0, gt=0.0, le=60.0)
    retry_max_s: float = Field(30.0, gt=0.0, le=600.0)

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        # spelling only: a missing file fails check-config and run (check_daemon_settings), not every command
        return parse_camera_spec(value, on_disk=False).text  # CameraSpecError is a ValueError: the field is named


#: Shortest staff PIN accepted, digits (10^6 combinations; with the per-client back-off of
#: ``dangol_edge.webguard`` a guesser gets about a hundred tries a day per address).
MIN_PIN_DIGITS = 6


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DisplayConfig(_Section):
    """The menu page served for the HDMI kiosk and the staff page.

    ``host`` other than loopback (e.g. ``0.0.0.0``, for staff phones on the shop's network) requires a
    ``staff_pin`` of at least :data:`MIN_PIN_DIGITS` digits; the menu page itself is served to loopback
    clients only whatever the host.
    """

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535, description="the kiosk unit (systemd/dangol-kiosk.service) opens "
                                                         "http://127.0.0.1:8080/: change both together")
    welcome_s: float = Field(12.0, ge=1.0, le=600.0, description="how long a welcome stays on screen")
    picks: int = Field(6, ge=1, le=20, description="picks shown to a customer")
    staff_pin: str | None = Field(None, repr=False, description="PIN for the staff page, at least 6 digits "
                                                                "(env DANGOL_DISPLAY__STAFF_PIN)")
    consent_version: str = Field(CONSENT_TEXT_VERSION, min_length=1, max_length=40,
                                 description="version of the consent text staff read (the cloud's "
                                             "consent_text_version); recorded with each consent")

    @field_validator("staff_pin")
    @classmethod
    def _check_pin(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not (value.isascii() and value.isdigit()):
            raise ValueError("the staff PIN must be digits only")
        if not MIN_PIN_DIGITS <= len(value) <= 32:
            raise ValueError(f"the staff PIN must have at least {MIN_PIN_DIGITS} digits (and at most 32); "
                             f"this one has {len(value)}")
        return value

    @field_validator("host")
    @classmethod
    def _kiosk_reachable(cls, value: str) -> str:
        """The kiosk unit opens ``http://127.0.0.1:<port>/`` and the menu is served to loopback clients only: a
        server bound to one LAN address alone would leave the door screen blank."""
        if _is_loopback_host(value) or value.strip("[]") in ("0.0.0.0", "::"):
            return value
        raise ValueError(f"{value!r}: use 127.0.0.1 (this device only) or 0.0.0.0 / :: (also staff phones on the "
                         "shop's network); bound to one LAN address alone, the door screen's kiosk "
                         "(http://127.0.0.1) could not reach the menu")

    @model_validator(mode="after")
    def _lan_needs_pin(self) -> "DisplayConfig":
        if self.staff_pin is None and not _is_loopback_host(self.host):
            raise ValueError(f"display.staff_pin is required when display.host is {self.host!r}: the staff page "
                             f"would be open to the network (set a PIN of at least {MIN_PIN_DIGITS} digits, or keep "
                             "host 127.0.0.1)")
        return self


class GPIOConfig(_Section):
    """The staff enrolment button and its LED (BCM pin numbers; gpiozero)."""

    enabled: bool = True
    button_pin: int = Field(17, ge=0, le=27)
    led_pin: int = Field(27, ge=0, le=27)
    hold_cancel_s: float = Field(3.0, ge=0.5, le=30.0, description="holding the button this long cancels")

    @model_validator(mode="after")
    def _a_pin_each(self) -> "GPIOConfig":
        if self.enabled and self.button_pin == self.led_pin:
            raise ValueError(f"gpio.button_pin and gpio.led_pin are both {self.button_pin}: the button and the LED "
                             "need a pin each")
        return self


class EdgeConfig(BaseSettings):
    """Everything the edge reads. See the class of each section for its fields and bounds."""

    model_config = SettingsConfigDict(
        env_prefix="DANGOL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    home: Path = Field(default_factory=default_home)
    detector: DetectorConfig = DetectorConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    matcher: MatcherConfig = MatcherConfig()
    tracker: TrackerConfig = TrackerConfig()
    enrol: EnrolConfig = EnrolConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    device: DeviceConfig = DeviceConfig()
    mqtt: MQTTConfig = MQTTConfig()
    camera: CameraConfig = CameraConfig()
    display: DisplayConfig = DisplayConfig()
    gpio: GPIOConfig = GPIOConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command line beats the environment, which beats the file (init kwargs), as systemd overrides expect.
        return _Overrides(settings_cls), env_settings, init_settings

    @property
    def model_path(self) -> Path:
        """Path of the ``.tflite`` embedder."""
        return self.embedder.model_path or self.home / "models" / f"{self.embedder.model}-int8.tflite"

    @property
    def gallery_path(self) -> Path:
        """Path of the SQLite gallery."""
        return self.home / "gallery.sqlite"

    @property
    def state_path(self) -> Path:
        """Path of the SQLite cache of catalogue, menus and the event outbox."""
        return self.home / "state.sqlite"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start}): save the config file as UTF-8") from exc
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc


def load_config(path: str | Path | None = None, **overrides: Any) -> EdgeConfig:
    """Load the edge config from ``path`` (TOML or JSON, optional), the environment and ``overrides``
    (command-line values: they win over both, e.g. ``home`` from ``--home`` over ``DANGOL_HOME``).

    Raises:
        ConfigError: the file is unreadable or malformed, or a field is unknown or out of bounds
            (the message names the file and the dotted field, e.g. ``matcher.threshold``).
    """
    data: dict[str, Any] = {}
    source = "environment"
    if path is not None:
        data = _read_file(Path(path))
        source = str(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: invalid config: expected a table of sections (mqtt, camera, …), "
                              f"got a {type(data).__name__}")
    # docs/mqtt.md names DANGOL_MQTT_URL (flat) for every component: it beats the file (an environment
    # value), and the nested DANGOL_MQTT__URL, read by the environment source, beats it
    if os.environ.get("DANGOL_MQTT_URL"):
        if not isinstance(data.get("mqtt") or {}, dict):
            raise ConfigError(f"{source}: invalid config: mqtt: expected a section ([mqtt] with url = …), "
                              f"got {data['mqtt']!r}")
        data["mqtt"] = {**(data.get("mqtt") or {}), "url": os.environ["DANGOL_MQTT_URL"]}
    token = _OVERRIDES.set(dict(overrides))
    try:
        return EdgeConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{source}: invalid config: {problems}") from exc
    finally:
        _OVERRIDES.reset(token)


from .config_checks import check_daemon_settings  # noqa: E402,F401  (checks against the disk and the broker URL)
