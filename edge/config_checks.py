"""The daemon's checks of a loaded :class:`~dangol_edge.config.EdgeConfig` that look outside the config itself (files on
disk, the broker URL): :func:`check_daemon_settings`, run by ``dangol-edge check-config`` (by hand and by
``scripts/install-edge``) and by ``dangol-edge run`` before it opens anything, so a box that cannot run stops at the
check (exit 2, naming the setting; systemd does not restart the daemon's main process after exit 2) instead of failing
later (exit 1, which systemd keeps restarting).

Re-exported by :mod:`dangol_edge.config`; imports nothing of it at module level, so either module may be imported
first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .camera_spec import parse_camera_spec

if TYPE_CHECKING:
    from .config import EdgeConfig


def check_daemon_settings(config: "EdgeConfig", source: str = "config", camera_source: str | None = None) -> None:
    """The rules between sections, and against the disk, that only the daemon (``dangol-edge run``) needs;
    ``check-config`` applies them too. ``camera_source`` is ``run --source``, which replaces ``camera.source``.

    Raises:
        ConfigError: ``camera.source`` names a path that is not there or not a camera, video or folder;
            ``mqtt.url`` is set without ``device.id`` and ``device.store_id`` (the device could not tell the cloud
            who it is nor subscribe to its store's topics), or is malformed, including a host name no resolver
            takes such as ``broker..lan`` (:func:`dangol_protocol.client.parse_url`; the message never shows the
            password); ``mqtt.tls_ca`` is set for an ``mqtts://`` broker but missing, unreadable or holds no
            certificate (:func:`check_tls_ca`); the model file exists without its calibration file while
            ``matcher.threshold`` is unset (:func:`dangol_edge.calibration.uncalibrated`); or the YuNet detector file
            is missing or unreadable (:func:`~dangol_edge.detect.detector_file_problem`, checked when
            ``detector.yunet_path`` is set or the model is there); the calibration file was measured with another
            pipeline (detector backend or file, alignment) than this config runs while ``matcher.threshold`` is unset
            (:class:`dangol_edge.calibration.PipelineMismatch`, naming both); ``display.consent_version`` has no
            consent text (:func:`dangol_edge.consent_text.render_consent`: staff would confirm a text nobody can read;
            the message names the version and the file it looked for); while the gallery holds templates of another
            model than the current one, the previous model (``embedder.previous_model_path``) is missing or its
            calibration unusable (:func:`check_previous_model`). The message names ``source`` and the setting.
    """
    from .calibration import calibration_path, uncalibrated
    from .config import ConfigError
    from .consent_text import ConsentTextError, render_consent
    from .detect import detector_file_problem

    if config.mqtt.url and (config.device.id is None or config.device.store_id is None):
        raise ConfigError(f"{source}: device.id and device.store_id are required when mqtt.url is set "
                          "(both from the cloud dashboard's Stores page)")
    if config.mqtt.url:
        check_mqtt(config, source)
    try:
        parse_camera_spec(camera_source or config.camera.source)  # on disk now: the file, folder or device must be there
    except ValueError as exc:
        raise ConfigError(f"{source}: invalid config: camera.source: {exc}") from None
    model = config.model_path
    if config.matcher.threshold is None and model.is_file() and not calibration_path(model).is_file():
        raise ConfigError(f"{source}: {uncalibrated(model)}")
    # the detector opens lazily, on the first frame: unchecked, the daemon would start, then fail on every frame
    if problem := (config.detector.yunet_path is not None or model.is_file()) and detector_file_problem(
            config.detector, model):
        raise ConfigError(f"{source}: {problem}")
    if config.matcher.threshold is None and calibration_path(model).is_file():
        check_calibration_pipeline(config, source)
    try:
        render_consent(config)
    except ConsentTextError as exc:
        raise ConfigError(f"{source}: invalid config: display.consent_version: {exc}") from None
    check_previous_model(config, source)  # only while the gallery holds templates of another model


def check_previous_model(config: "EdgeConfig", source: str = "config") -> None:
    """While the gallery file holds templates of another model than the current one (a model upgrade has customers
    to migrate), ``embedder.previous_model_path`` names a file that is there and loads, and its calibration was
    measured with the pipeline this config runs in front of it: what
    :meth:`dangol_edge.recognition.Recognizer.from_config` refuses at start otherwise. Nothing is looked at when no
    previous model is configured, the current model is missing (the daemon names it) or no such template is left (an
    upgrade that ended: the old file may be deleted, the config line kept). The gallery is read without its key.

    Raises:
        ConfigError: naming ``source`` and the previous model's file: missing while templates of another model
            remain (:func:`~dangol_edge.gallery_models.previous_embedder`), not a loadable model, or its calibration
            missing, malformed or measured with another pipeline (:func:`dangol_edge.upgrade.previous_door_model`);
            or the gallery file cannot be read.
    """
    import sqlite3

    from .calibration import CalibrationError, pipeline_of
    from .config import ConfigError
    from .embed import ModelError, file_sha256
    from .gallery_models import previous_embedder, stored_template_models

    if config.embedder.previous_model_path is None or not config.model_path.is_file():
        return
    try:
        stored = stored_template_models(config.gallery_path)
    except sqlite3.Error as exc:
        raise ConfigError(f"{source}: {config.gallery_path}: cannot read the gallery to check "
                          f"embedder.previous_model_path: {exc}") from None
    current = file_sha256(config.model_path)
    try:
        old = previous_embedder(config, {sha: n for sha, n in stored.items() if sha != current})
        if old is None or old.sha256 == current:
            return
        from .upgrade import previous_door_model

        previous_door_model(old, config.matcher.target_fpir, pipeline_of(config.detector, config.model_path, old.spec))
    except (ModelError, CalibrationError) as exc:
        raise ConfigError(f"{source}: embedder.previous_model_path: {exc}") from None


def check_calibration_pipeline(config: "EdgeConfig", source: str = "config") -> None:
    """The model's calibration file was measured with the pipeline this config runs (what
    :func:`dangol_edge.recognition.rule_for` refuses at start otherwise). A model that does not load is left to the
    daemon's start, as before.

    Raises:
        ConfigError: naming ``source`` and both pipelines (:class:`~dangol_edge.calibration.PipelineMismatch`), or a
            malformed calibration file.
    """
    from .calibration import CalibrationError, load_calibration, pipeline_of
    from .config import ConfigError
    from .embed import Embedder, ModelError

    try:
        embedder = Embedder(config.model_path, threads=1)
        spec, sha = embedder.spec, embedder.sha256
    except ModelError:
        return
    try:
        load_calibration(config.model_path, sha, pipeline_of(config.detector, config.model_path, spec))
    except CalibrationError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def check_mqtt(config: "EdgeConfig", source: str = "config") -> None:
    """``mqtt.url`` parses (:func:`dangol_protocol.client.parse_url`: scheme, a host name a resolver takes, port) and,
    for TLS, ``mqtt.tls_ca`` (when set) can be loaded (:func:`check_tls_ca`). Checked here because the MQTT client
    finds out only in its network thread (a bad host name ended that thread for good) or at start (paho's
    ``tls_set`` raises ``FileNotFoundError``: exit 1, restarted by systemd for ever).

    Raises:
        ConfigError: naming ``source`` and ``mqtt.url`` (without its password) or ``mqtt.tls_ca`` and its path.
    """
    from dangol_protocol.client import MqttUrlError, parse_url

    from .config import ConfigError

    try:
        address = parse_url(config.mqtt.url or "")
    except MqttUrlError as exc:
        raise ConfigError(f"{source}: invalid config: mqtt.url: {exc}") from None
    if address.tls and config.mqtt.tls_ca is not None:
        if problem := check_tls_ca(config.mqtt.tls_ca):
            raise ConfigError(f"{source}: invalid config: mqtt.tls_ca: {problem}")


def check_tls_ca(path) -> str | None:
    """Why the CA certificate file ``path`` cannot be used to check the broker (missing, unreadable, a folder, no
    PEM certificate in it), or None when it loads as paho's ``tls_set`` will load it."""
    import ssl

    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except OSError as exc:  # FileNotFoundError, PermissionError, IsADirectoryError; ssl.SSLError is an OSError too
        if isinstance(exc, ssl.SSLError):
            return f"{path}: holds no usable CA certificate ({exc.reason or exc}); expected a PEM file"
        return f"{path}: cannot be read ({exc.strerror or exc})"
    return None
