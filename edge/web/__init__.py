"""The edge's web app: the full-screen menu page for the HDMI kiosk and the small staff page.

Routes (see :func:`create_app`):

* ``GET /`` — the menu page (1920×1080 target, read from ~3 m). Rendered on the server (house menu,
  welcome or enrolment screen) and kept live by server-sent events; no face image is ever shown.
* ``GET /events`` — ``text/event-stream``: one ``data:`` line of JSON per change of the :class:`Screen`
  or of the cached catalogue's version (checked every :data:`CATALOGUE_POLL_S`). Each message is the
  screen snapshot (picks filtered against the current catalogue) plus ``catalogue_version``, ``app``
  (an id of this app instance: the page reloads itself when the server was replaced) and ``html``
  (the rendered screen, which the page swaps in). ``event: ping`` every :data:`HEARTBEAT_S`.
* ``GET /api/state`` — the same JSON without ``html``. ``GET /api/catalogue`` — the cached catalogue
  (404 before the first one arrives).
* ``GET /staff`` and ``POST /staff/activate/<id>``, ``/staff/discard/<id>``, ``/staff/erase/<id>`` —
  pending sign-ups and active customers; ``/staff/login``, ``/staff/logout`` when a staff PIN is set.
  Every form carries a CSRF token (Flask-WTF); a POST without one is refused with 400.

Access (:mod:`dangol_edge.webguard`): the menu page, its stream and the ``/api`` routes answer loopback
clients only (403 otherwise, whatever ``display.host`` is); the staff pages answer other clients only when
a staff PIN is set (config requires one for a non-loopback host), with a per-client PIN back-off; at most
``max_streams`` event streams are open at once (503 beyond).

:class:`DisplayServer` runs the app with werkzeug's threaded server in a background thread.

Layout: blueprints :mod:`.menu` (kiosk) and :mod:`.staff`; :mod:`.formatting` (prices, house menu, pick
filtering, "ago"); :mod:`.server` (session key, :class:`DisplayServer`); the dependencies live in
``app.extensions["dangol_edge"]`` (:class:`.deps.WebDeps`), as ``cloud/app.py`` keeps its services.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask, Response, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import InternalServerError

from ..config import EdgeConfig
from ..gallery import Customer, Gallery
from ..screen import Screen
from ..state import StateStore
from ..webguard import MAX_EVENT_STREAMS, PinThrottle, Streams, is_loopback
from . import menu, staff
from .deps import EXTENSION, WebDeps
from .formatting import format_price, house_menu, visible_picks
from .server import DisplayServer, load_secret_key

__all__ = ["DisplayServer", "create_app", "format_price", "house_menu", "load_secret_key", "visible_picks"]

log = logging.getLogger(__name__)

#: Paths of the kiosk (menu page, its event stream, the JSON API): loopback clients only.
KIOSK_PATHS = ("/", "/events")
KIOSK_PREFIX = "/api/"


def create_app(*, screen: Screen, state: StateStore, gallery: Gallery, config: EdgeConfig,
               on_activate: Callable[[Customer], None] | None = None,
               on_erase: Callable[[str], None] | None = None,
               on_signup: Callable[[str], bool] | None = None,
               storage: Callable[[], str] | None = None,
               button_problem: Callable[[], str | None] | None = None,
               max_streams: int = MAX_EVENT_STREAMS, clock: Callable[[], float] = time.monotonic) -> Flask:
    """Build the menu + staff web app.

    Args:
        screen: what the menu page shows (the daemon changes it; the page follows by SSE).
        state: the cache with the current catalogue.
        gallery: customers (the staff page activates, discards and erases them).
        config: ``display`` (picks, staff_pin, consent_version: the consent text version staff confirm,
            recorded with each consent) and ``home`` (for ``secret_key``).
        on_activate: called with the activated :class:`Customer` (the daemon reports it to the cloud).
        on_erase: called with the id of a discarded or erased customer (the daemon reports it).
        on_signup: starts (``"enrol"``) or cancels (``"cancel"``) a sign-up at the door from the staff page
            (the daemon's enrolment worker); None hides the button.
        storage: returns the daemon's storage state (``ok``, ``full`` or ``error``: its databases cannot be
            written); the staff page says so while it is not ``ok``. None: not shown.
        button_problem: returns why the GPIO enrolment button could not be claimed, or None when it works; the
            staff page says so while it is not None. None: not shown.
        max_streams: event streams served at once (503 beyond).
        clock: monotonic seconds for the PIN back-off (tests pass a fake one).
    Returns:
        the Flask app; ``app.extensions["dangol_edge"]`` holds its :class:`~.deps.WebDeps`,
        ``app.extensions["dangol_streams"]`` / ``["dangol_pins"]`` the stream limit and PIN back-off.
    Raises:
        OSError: ``<home>/secret_key`` cannot be created or read.
    """
    app = Flask(__name__, template_folder=str(Path(__file__).parent.parent / "templates"), static_folder=None)
    app.secret_key = load_secret_key(config.home)
    app.config.update(SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_NAME="dangol_edge",
                      WTF_CSRF_TIME_LIMIT=None, TEMPLATES_AUTO_RELOAD=False, JSON_SORT_KEYS=False)
    d = WebDeps(screen=screen, state=state, gallery=gallery, config=config, on_activate=on_activate,
                on_erase=on_erase, on_signup=on_signup, text_version=config.display.consent_version,
                pin=config.display.staff_pin or None, app_id=secrets.token_hex(6), streams=Streams(max_streams),
                pins=PinThrottle(clock=clock),  # per client address: a wrong-PIN guesser cannot lock staff out
                storage=storage, button_problem=button_problem)
    app.extensions[EXTENSION] = d
    app.extensions["dangol_streams"] = d.streams
    app.extensions["dangol_pins"] = d.pins

    @app.before_request
    def kiosk_gate():
        """The kiosk's routes for the Pi's own screen only; the staff pages for others only behind a PIN."""
        local = is_loopback(request.remote_addr)
        if not local and (request.path in KIOSK_PATHS or request.path.startswith(KIOSK_PREFIX)):
            log.warning("refused %s %s from %s: the menu display is served to this device only",
                        request.method, request.path, request.remote_addr)
            return Response("The menu display is served to this device's own screen only.\n", status=403,
                            mimetype="text/plain")
        if not local and d.pin is None:
            log.warning("refused %s %s from %s: no staff PIN is set", request.method, request.path,
                        request.remote_addr)
            return Response("The staff page needs a staff PIN (display.staff_pin) to be used from the network.\n",
                            status=403, mimetype="text/plain")
        return None

    CSRFProtect(app)  # after the gate: a refused client is refused before anything else
    app.register_blueprint(menu.bp)
    app.register_blueprint(staff.bp)
    app.register_error_handler(CSRFError, staff.csrf_error)
    app.register_error_handler(InternalServerError, staff.server_error)

    @app.after_request
    def no_store(resp: Response) -> Response:
        if request.path.startswith(("/staff", "/api", "/events")) or request.path == "/":
            resp.headers["Cache-Control"] = "no-store"
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "DENY")  # the staff page cannot be framed (clickjacking)
        resp.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'; object-src 'none'; base-uri 'none'")
        return resp

    return app
