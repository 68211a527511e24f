"""Typed settings of the cloud service (pydantic-settings).

Sources, highest priority first: keyword arguments, environment variables prefixed ``DANGOL_``
(e.g. ``DANGOL_DATABASE_URL``, ``DANGOL_MQTT_URL``, ``DANGOL_DATA``), a TOML config file (path in
``DANGOL_CONFIG`` or passed as ``config_file``), then the defaults below.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from dangol_protocol import CONSENT_TEXT_VERSION
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

__all__ = ["MAX_RETENTION_DAYS", "ConfigError", "Settings", "default_cloud_home", "load_settings"]

#: Longest retention: 3 years. BIPA (740 ILCS 14/15(a)) requires biometric identifiers to be destroyed
#: when their purpose is satisfied or within 3 years of the individual's last interaction, whichever first.
MAX_RETENTION_DAYS = 3 * 365


class ConfigError(ValueError):
    """A config file or setting is invalid; the message names the file or variable."""


def default_cloud_home() -> Path:
    """The cloud's data folder when ``DANGOL_CLOUD_HOME`` is unset: ``$XDG_DATA_HOME/dangol-cloud``, else
    ``~/.local/share/dangol-cloud`` (XDG Base Directory Specification), never the working directory."""
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "dangol-cloud"


def _shown(url: str) -> str:
    """``url`` as an error message may show it: scheme, host and port only (never the user, password, path or
    query), as :class:`dangol_protocol.client.MqttUrlError` does; ``(not a URL)`` when it has no ``scheme://``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        return "(not a URL)"
    if not parts.scheme or "://" not in url:
        return "(not a URL)"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host or ''}" + (f":{port}" if port else "")


class Settings(BaseSettings):
    """Cloud service settings.

    Attributes:
        cloud_home: (``DANGOL_CLOUD_HOME``; the edge's folder is ``DANGOL_HOME``) folder for the default
            SQLite database, trained models, uploaded photos and the secret key; default
            :func:`default_cloud_home`. A relative value is made absolute once, when the settings are loaded.
        database_url: SQLAlchemy URL; default ``sqlite:///{cloud_home}/dangol.sqlite``; PostgreSQL as
            ``postgresql+psycopg://user@host/db``.
        mqtt_url: broker as ``mqtt://user:password@host:port`` (``mqtts://`` for TLS); None = no MQTT.
        data: folder with the real data sets (``purchases/ta-feng`` ...), used by tests and demos.
        secret_key: Flask session/CSRF key; generated once into ``{cloud_home}/secret_key`` if unset.
        menu_size: picks per customer menu (top-N).
        currency: ISO 4217 code of a currency in use (:func:`dangol_protocol.money.check_currency`; lower case is
            put in capitals), in which the dashboard shows amounts and the catalogue is sent to stores without
            their own currency (Stores page).
        timezone: IANA zone of the café: naive imported timestamps are local time in it, and analytics
            (visits by hour/weekday) are shown in it.
        consent_text_version: version label of the consent text staff read to customers.
        train_interval_hours: if set, ``serve`` retrains (and publishes) on this schedule.
        listen: if true, ``serve`` also runs the MQTT consumer (device events and status).
        public_url: base URL at which the edge devices reach this service (e.g. ``http://cloud.local:8000``),
            used for item photo URLs in the catalogue; default: the URL of the dashboard request.
        import_batch_size: rows per bulk insert in ``import-purchases``.
        data_key: (``DANGOL_DATA_KEY``) base64 of the 32-byte key that encrypts personal fields at rest
            (see :mod:`dangol_cloud.crypto`); if unset, ``data_key_file``, then the systemd credential
            ``$CREDENTIALS_DIRECTORY/dangol-data-key``. Never stored in the database or the repository.
        data_key_file: file holding the base64 data key (alternative to ``data_key``).
        retention_days: customers not seen (no visit, no purchase, not created) for this many days are
            erased by ``dangol-cloud retention`` and daily inside ``serve``; 1 to 1095 (3 years: BIPA,
            740 ILCS 14/15(a), requires destroying biometric identifiers within 3 years of the last
            interaction at the latest).
        device_event_days: accepted device events (arrival, erasure-done; an enrolment once its customer is
            gone) are kept in ``device_events`` this many days after they were received (default 30), then
            deleted by the daily sweep inside ``serve``; 1 to 1095. A replay arriving later still changes
            nothing: an arrival's visit keeps its ``event_id`` (unique) and an erased customer's id is refused.
        erasure_republish_minutes: ``serve`` re-publishes erasures that some device has not confirmed
            yet this often (and at once when such a device comes online).
        session_cookie_secure: send the dashboard's session cookie only over HTTPS; default: on when
            ``public_url`` is ``https://``.
        login_max_failures: failed sign-ins for one e-mail from one client address (within
            ``login_window_minutes``) before progressive back-off starts (then 429 with ``Retry-After``).
        login_account_max_failures: failed sign-ins for one e-mail from any address before the back-off applies
            to that e-mail everywhere, except in browsers that signed in to it before (a signed device cookie,
            OWASP "device cookies"): someone guessing from elsewhere cannot lock the owner out.
        login_address_max_failures: failed sign-ins from one client address, whatever the e-mail, before the
            back-off applies to that address (one password tried across many e-mails).
        login_backoff_seconds / login_backoff_max_seconds: the first wait after a limit is reached, doubled with
            each further failure, capped at the maximum; the right password works again once the wait is over.
        login_window_minutes: failures older than this are forgotten (and deleted).
        session_lifetime_hours: a dashboard sign-in ends this long after it began, whatever the activity
            (absolute lifetime, enforced on the server: the session row expires; signing out deletes it).
        trusted_proxies: number of reverse proxies in front of the service whose ``X-Forwarded-For``,
            ``-Proto``, ``-Host`` and ``-Prefix`` headers are believed (werkzeug ``ProxyFix``); 0 (default)
            ignores them, so a client cannot choose the address the sign-in limits see.
    """

    # hide_input_in_errors: pydantic's own error text never repeats a value (a URL's password, a key)
    model_config = SettingsConfigDict(env_prefix="DANGOL_", extra="forbid", hide_input_in_errors=True)

    cloud_home: Path = Field(default_factory=default_cloud_home)
    database_url: str | None = None
    mqtt_url: str | None = None
    mqtt_client_id: str = "dangol-cloud"
    data: Path | None = None
    secret_key: SecretStr | None = None
    menu_size: int = Field(10, ge=1, le=50)
    currency: str = Field("EUR", min_length=3, max_length=3)
    timezone: str = "UTC"
    consent_text_version: str = CONSENT_TEXT_VERSION
    train_interval_hours: float | None = Field(None, gt=0)
    listen: bool = True
    public_url: str | None = None
    import_batch_size: int = Field(5000, ge=1)
    data_key: SecretStr | None = None
    data_key_file: Path | None = None
    retention_days: int = Field(365, ge=1)
    device_event_days: int = Field(30, ge=1, le=MAX_RETENTION_DAYS)
    erasure_republish_minutes: float = Field(10, gt=0, le=24 * 60)
    session_cookie_secure: bool | None = None
    login_max_failures: int = Field(5, ge=1, le=100)
    login_account_max_failures: int = Field(10, ge=1, le=1000)
    login_address_max_failures: int = Field(20, ge=1, le=10000)
    login_backoff_seconds: float = Field(30, gt=0, le=3600)
    login_backoff_max_seconds: float = Field(900, gt=0, le=24 * 3600)
    login_window_minutes: float = Field(15, gt=0, le=24 * 60)
    session_lifetime_hours: float = Field(12, gt=0, le=24 * 30)
    trusted_proxies: int = Field(0, ge=0, le=5)

    config_file: Path | None = Field(None, exclude=True)

    @field_validator("cloud_home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("retention_days")
    @classmethod
    def _check_retention(cls, value: int) -> int:
        if value > MAX_RETENTION_DAYS:
            raise ValueError(f"{value} days is longer than {MAX_RETENTION_DAYS} (3 years, the BIPA limit, "
                             "740 ILCS 14/15(a))")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{_shown(value)!r} is not an http(s):// URL")
        return value.rstrip("/")

    @field_validator("currency", mode="before")
    @classmethod
    def _check_currency(cls, value: object) -> str:
        from dangol_protocol.money import check_currency

        return check_currency(value)  # an ISO 4217 code in use ("krw" → "KRW"); "WON", "ZZZ" are refused by name

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        from dangol_protocol.client import parse_url

        parse_url(value)  # MqttUrlError (a ValueError) names scheme, host and port, never the password
        if urlsplit(value).scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {_shown(value)!r}: expected mqtt://[user:password@]host[:port] or mqtts://…")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except (ArgumentError, ValueError) as exc:  # a bad port is a ValueError; the message never repeats the URL
            raise ValueError(f"{_shown(value)!r} is not a SQLAlchemy database URL ({type(exc).__name__}); expected "
                             "e.g. postgresql+psycopg://user@host/db or sqlite:////path/dangol.sqlite") from None
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        """Sources, highest priority first: init kwargs, ``DANGOL_*`` environment, the TOML config file."""
        path = init_settings.init_kwargs.get("config_file") or os.environ.get("DANGOL_CONFIG")
        sources = [init_settings, env_settings]
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)

    # --- derived values -------------------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        """``database_url`` or the SQLite file under ``cloud_home``."""
        return self.database_url or f"sqlite:///{(self.cloud_home / 'dangol.sqlite').resolve()}"

    @property
    def models_dir(self) -> Path:
        """Where trained models are saved (``{cloud_home}/models``)."""
        return self.cloud_home / "models"

    @property
    def door_timezone(self) -> str | None:
        """The zone sent to the doors in ``catalogue/1`` (the day-parts' clock), or None for the doors' own clocks.

        ``timezone`` when it was set (file, environment or argument); None while it is the default ``UTC``: then
        the naive times of a POS export were read as UTC, so the trained day-part hours are the café's wall-clock
        hours, which a door set to the café's zone (``install-edge --timezone``) reads off its own clock. Sending
        ``UTC`` would shift every door outside UTC by its offset.
        """
        return self.timezone if "timezone" in self.model_fields_set else None

    @property
    def photos_dir(self) -> Path:
        """Where uploaded catalogue photos are stored (``{cloud_home}/photos``)."""
        return self.cloud_home / "photos"

    def resolved_secret_key(self) -> str:
        """The configured secret key, or one generated once and kept in ``{cloud_home}/secret_key`` (mode 600)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.cloud_home / "secret_key"
        if not path.exists():
            self.cloud_home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


    def resolved_data_key(self) -> bytes | None:
        """The data key from ``data_key``, else ``data_key_file``, else the systemd credential
        ``$CREDENTIALS_DIRECTORY/dangol-data-key``; None if none is configured.

        Raises:
            DataKeyError: a configured key is malformed or its file unreadable (message names the source).
        """
        from dangol_cloud.crypto import CREDENTIAL_NAME, decode_key, load_key_file

        if self.data_key is not None:
            return decode_key(self.data_key.get_secret_value(), "DANGOL_DATA_KEY")
        if self.data_key_file is not None:
            return load_key_file(self.data_key_file)
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
            return load_key_file(Path(credentials) / CREDENTIAL_NAME)
        return None

    @property
    def https(self) -> bool:
        """True when ``public_url`` is ``https://`` (the dashboard is served over TLS: HSTS is sent)."""
        return bool(self.public_url and self.public_url.startswith("https://"))

    @property
    def cookie_secure(self) -> bool:
        """Whether the session cookie gets the ``Secure`` flag (explicit setting, else https public_url)."""
        if self.session_cookie_secure is not None:
            return self.session_cookie_secure
        return self.https


def load_settings(config_file: str | Path | None = None, **overrides) -> Settings:
    """Build :class:`Settings` from overrides, ``DANGOL_*`` variables and the TOML config file.

    Raises:
        ConfigError: the config file is missing/unreadable/not TOML, or a value is invalid (the message
            names the file or the ``DANGOL_`` variable and the field).
    """
    from pydantic import ValidationError

    path = config_file or os.environ.get("DANGOL_CONFIG")
    if path and not Path(path).is_file():
        raise ConfigError(f"config file {path}: no such file")
    where = f"config file {path} or DANGOL_* environment" if path else "DANGOL_* environment"
    try:
        kwargs = dict(overrides)
        if path:
            kwargs["config_file"] = Path(path)
        return Settings(**kwargs)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'} "
                             f"(DANGOL_{str(e['loc'][0]).upper() if e['loc'] else ''}): {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid settings from {where}: {problems}") from None
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"config file {path}: {exc}") from None
