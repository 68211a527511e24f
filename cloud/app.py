"""Flask application factory: settings, database (migrated to head), CSRF, login, security headers, trusted
proxies, one blueprint per area."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from flask import Flask, Response, g
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from jinja2 import pass_context
from werkzeug.routing import IntegerConverter

from dangol_protocol.money import format_money

from dangol_cloud.db import Database
from dangol_cloud.jobs import TrainingJob
from dangol_cloud.settings import Settings, load_settings

__all__ = ["CHAIN", "CONTENT_SECURITY_POLICY", "MAX_URL_INT", "BoundedIntConverter", "StoreClock", "create_app",
           "get_db", "get_session", "get_settings", "store_clock"]

#: Content-Security-Policy of every response: scripts, styles, images and form targets from this site only,
#: no inline script (the dashboard has none), no plugins, no framing (clickjacking). Inline ``style``
#: attributes stay allowed (``style-src-attr``): they cannot run code.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
                           "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
#: Largest integer id an address may carry (PostgreSQL ``integer``, 2**31 - 1); :class:`BoundedIntConverter`.
MAX_URL_INT = 2**31 - 1
#: HSTS max-age when the public URL is https: one year (RFC 6797; the usual preload minimum).
HSTS_MAX_AGE = 365 * 24 * 3600

log = logging.getLogger(__name__)
csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.login_message_category = "info"
#: The ``local`` filter's ``store`` when none is given: a time of the whole chain (``StoreClock.default``).
CHAIN = object()


class BoundedIntConverter(IntegerConverter):
    """Flask's ``<int:…>`` URL converter limited to the 32-bit signed range of the database's integer ids
    (PostgreSQL ``integer``; SQLite fails beyond 64 bits): a larger number in the address is a 404, not a
    database error. It replaces the default ``int`` converter in :func:`create_app`."""

    def __init__(self, map, fixed_digits: int = 0, min: int | None = None, max: int | None = None,  # noqa: A002
                 signed: bool = False) -> None:
        super().__init__(map, fixed_digits, -MAX_URL_INT - 1 if min is None and signed else min,
                         MAX_URL_INT if max is None else max, signed)


def create_app(settings: Settings | None = None, *, db: Database | None = None, migrate: bool = True,
               **flask_config) -> Flask:
    """Build the Flask app.

    Args:
        settings: service settings; default :func:`load_settings` (``DANGOL_*`` environment / config file).
        db: database to use; default one for ``settings.effective_database_url``.
        migrate: run Alembic ``upgrade head`` now (always true in production).
        flask_config: extra Flask config (e.g. ``TESTING=True``, ``WTF_CSRF_ENABLED=False``).

    Session cookies are ``HttpOnly``, ``SameSite=Lax`` and ``Secure`` when ``settings.cookie_secure``
    (``session_cookie_secure``, default on for an ``https://`` public URL). Every response carries
    :data:`CONTENT_SECURITY_POLICY`, ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
    ``Referrer-Policy: same-origin`` and, for an ``https://`` public URL, ``Strict-Transport-Security``.
    With ``settings.trusted_proxies`` = N > 0 the app is wrapped in werkzeug's ``ProxyFix`` believing N
    proxies' ``X-Forwarded-*`` headers.

    Raises:
        ConfigError: invalid settings; DataKeyError (a ConfigError) if no data key is configured.
    """
    settings = settings or load_settings()
    db = db or Database.from_settings(settings)
    if migrate:
        db.migrate()
    db.require_key()
    app = Flask(__name__)
    app.url_map.converters["int"] = BoundedIntConverter  # before any route is added: every <int:…> is bounded
    secure = settings.cookie_secure
    app.config.update(SECRET_KEY=settings.resolved_secret_key(), MAX_CONTENT_LENGTH=64 * 1024 * 1024,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=secure,
                      REMEMBER_COOKIE_HTTPONLY=True, REMEMBER_COOKIE_SAMESITE="Lax", REMEMBER_COOKIE_SECURE=secure,
                      WTF_CSRF_TIME_LIMIT=None,
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_lifetime_hours), **flask_config)
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_prefix=n)  # type: ignore[method-assign]
    app.extensions["dangol_settings"] = settings
    app.extensions["dangol_db"] = db
    app.extensions["dangol_training"] = TrainingJob()
    app.extensions["dangol_republisher"] = _menu_republisher(db, settings)
    csrf.init_app(app)
    login_manager.init_app(app)

    from dangol_cloud.web import analytics, api, audit, auth, catalogue, customers, home, purchases, stores

    for module in (auth, home, stores, catalogue, customers, purchases, analytics, audit):
        app.register_blueprint(module.bp)
    app.register_blueprint(api.bp)
    csrf.exempt(api.bp)

    @app.before_request
    def _refuse_nul():
        """U+0000 in the address, a query parameter or a form field is a 400 naming it (no id, search or text
        needs one; PostgreSQL cannot store or even compare it), before any view reads or writes anything."""
        from flask import abort, request

        if "\x00" in request.path:
            abort(400, description="the address contains a NUL character")
        for key, value in request.args.items(multi=True):
            if "\x00" in key or "\x00" in value:
                abort(400, description=f"URL parameter {key!r} contains a NUL character")
        if request.method == "POST" and request.mimetype in ("application/x-www-form-urlencoded",
                                                               "multipart/form-data"):
            for key, value in request.form.items(multi=True):
                if "\x00" in key or "\x00" in value:
                    abort(400, description=f"form field {key!r} contains a NUL character")

    from dangol_cloud.security import check_password_or_dummy

    check_password_or_dummy(None, "")  # make the throw-away hash now, not during the first sign-in
    https = settings.https

    @app.after_request
    def _security_headers(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        if https:
            headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE}; includeSubDomains")
        if response.mimetype == "text/html":
            headers.setdefault("Cache-Control", "no-store")  # signed-in pages stay out of shared caches
        return response

    @app.template_filter("local")
    def _local(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M", store: str | None | object = CHAIN) -> str:
        """The time on the wall clock of ``store`` (``p.ts|local(store=p.store_id)``: the store's own zone, else
        ``TIMEZONE``; None = a store-less sale, read in ``TIMEZONE``), or without ``store`` of the chain (the zone
        every store shares, else ``TIMEZONE``: :class:`StoreClock`). A stored time that zone cannot show (year 9999
        east of UTC, year 1 west of it) is shown in UTC instead of failing the page."""
        if value is None:
            return ""
        clock = store_clock()
        zone = clock.default if store is CHAIN else clock.of(store)  # type: ignore[arg-type]
        try:
            return value.astimezone(zone).strftime(fmt)
        except (OverflowError, ValueError):
            return value.astimezone(timezone.utc).strftime(fmt) + " UTC"

    @app.template_filter("money")
    @pass_context
    def _money(context, value: float | None, currency: str | None = None, store: str | None | object = CHAIN) -> str:
        """An amount (major units) as the door writes it, by :func:`dangol_protocol.money.format_money` (``₩4,500``,
        ``$4.50``); "—" for none. In ``currency``; else, given ``store`` (``p.amount|money(store=p.store_id)``), that
        store's own currency (None: a store-less sale → the CURRENCY setting); else the page's ``currency`` (the
        stores' own when they share one, else the CURRENCY setting). A value stored before the checks (an infinite
        price, a store currency that is not ISO 4217) is shown as it is rather than breaking the page."""
        if value is None:
            return "—"
        if currency is None and store is not CHAIN:
            currency = _store_currencies().get(store, settings.currency) if store else settings.currency  # type: ignore
        return shown_money(value, currency or context.get("currency") or settings.currency)

    @app.context_processor
    def _globals() -> dict:
        return {"currency": settings.currency, "mqtt_configured": bool(settings.mqtt_url)}

    @app.teardown_appcontext
    def _close_session(exc) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            if exc is not None:
                session.rollback()
            session.close()

    return app


def _menu_republisher(db: Database, settings: Settings):
    """The app's :class:`~dangol_cloud.background.MenuRepublisher` (``app.extensions["dangol_republisher"]``):
    publishes customers' menus after a dislike, off the request (its thread starts at the first use)."""
    from dangol_cloud.background import MenuRepublisher
    from dangol_cloud.feedback import republish_menus

    return MenuRepublisher(lambda ids: republish_menus(db, settings, ids))


def shown_money(value: float, code: str) -> str:
    """An amount as the door writes it (:func:`dangol_protocol.money.format_money`: ``₩4,500``, ``$4.50``); one in a
    currency stored before the checks, which it refuses (``WON``), as the number and the code (``4,500.00 WON``) rather
    than breaking the page. The dashboard's one fallback (the ``money`` filter, chart labels, store-price hints)."""
    try:
        return format_money(value, code)
    except ValueError:
        return f"{value:,.2f} {code}"


def get_settings() -> Settings:
    """Settings of the current app."""
    from flask import current_app

    return current_app.extensions["dangol_settings"]


def get_db() -> Database:
    """Database of the current app."""
    from flask import current_app

    return current_app.extensions["dangol_db"]


def get_session():
    """The request's SQLAlchemy session (opened on first use, closed at teardown; commit explicitly)."""
    if "db_session" not in g:
        g.db_session = get_db().sessions()
    return g.db_session


@dataclass(frozen=True)
class StoreClock:
    """The wall clocks of the stores (:mod:`dangol_cloud.store_zones`), as the dashboard shows times.

    Attributes:
        zones: ``{store id: its own zone}`` (Stores page); fallback: ``TIMEZONE``, the zone of every other store
            and of store-less (history) sales, which imports read in it; stores: every store's id.
        default: the zone of times that belong to no one store ("today", a training run): the one zone that
            all the stores the user sees (staff: their stores) share, else ``TIMEZONE``.
    """

    zones: dict[str, ZoneInfo]
    fallback: ZoneInfo
    stores: tuple[str, ...]
    default: ZoneInfo

    def of(self, store: str | None) -> ZoneInfo:
        """The zone of ``store`` (None: a store-less sale → ``TIMEZONE``)."""
        return self.zones.get(store, self.fallback) if store else self.fallback

    def shared(self, stores: Collection[str] | None = None) -> ZoneInfo:
        """The one zone these stores (None: every store) share, else ``TIMEZONE``."""
        found = {self.of(s).key for s in (self.stores if stores is None else stores)}
        return ZoneInfo(found.pop()) if len(found) == 1 else self.fallback


def _store_currencies() -> dict[str, str]:
    """``{store id: the currency it sells in}`` of every store (its own, else the ``CURRENCY`` setting:
    :func:`dangol_cloud.store_prices.store_currencies`), read once per request for the ``money`` filter."""
    if "store_currencies" not in g:
        from dangol_cloud.store_prices import store_currencies

        stores = store_currencies(get_session(), get_settings().currency)
        g.store_currencies = {sid: code for sid, _name, code in stores}
    return g.store_currencies


def store_clock() -> StoreClock:
    """The request's :class:`StoreClock`, read once per request (two queries, kept on ``flask.g``).

    A stored zone that is no longer a known IANA zone is logged and that store shown in ``TIMEZONE`` (the page
    still renders; the Stores page and imports name the store)."""
    if "store_clock" not in g:
        from flask_login import current_user
        from sqlalchemy import select

        from dangol_cloud.models import Store
        from dangol_cloud.store_zones import store_zones

        session = get_session()
        fallback = ZoneInfo(get_settings().timezone)
        try:
            zones = {store: ZoneInfo(name) for store, name in store_zones(session).items()}
        except ValueError as exc:
            log.warning("times shown in TIMEZONE: %s", exc)
            zones = {}
        stores = tuple(session.scalars(select(Store.id)))
        clock = StoreClock(zones, fallback, stores, fallback)
        staff = getattr(current_user, "is_authenticated", False) and not current_user.is_owner
        g.store_clock = StoreClock(zones, fallback, stores,
                                   clock.shared(current_user.store_ids if staff else None))
    return g.store_clock
