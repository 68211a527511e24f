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
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import flask
from flask import Flask, Response, flash, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.serving import BaseWSGIServer, make_server

from .config import EdgeConfig
from .gallery import Customer, Gallery, UnknownCustomer
from .menu_text import ago, format_price, greeting, house_menu, visible_picks
from .screen import Screen
from .state import StateStore
from .webguard import MAX_EVENT_STREAMS, PinThrottle, Streams, is_loopback

__all__ = ["DisplayServer", "create_app", "format_price", "house_menu", "load_secret_key", "visible_picks"]

log = logging.getLogger(__name__)

#: Seconds between checks of the cached catalogue's version by each open event stream.
CATALOGUE_POLL_S = 1.0
#: Seconds between ``ping`` events (they also reveal a closed connection so its thread ends).
HEARTBEAT_S = 15.0
#: Longest wait on the screen in one step of an event stream, seconds (bounds the reaction to stop()).
STREAM_STEP_S = 0.25
#: Paths of the kiosk (menu page, its event stream, the JSON API): loopback clients only.
KIOSK_PATHS = ("/", "/events")
KIOSK_PREFIX = "/api/"
#: How long a staff sign-in lasts, seconds.
STAFF_SESSION_S = 12 * 3600

def load_secret_key(home: Path) -> bytes:
    """The session/CSRF key from ``<home>/secret_key``, created once (32 random bytes, hex, mode 0600).

    Raises:
        OSError: the folder or file cannot be created or read.
    """
    path = Path(home) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip()
    if len(key) < 32:
        raise OSError(f"{path}: secret key too short; delete the file to make a new one")
    return key.encode()


_Streams = Streams  # the name older code used


def create_app(*, screen: Screen, state: StateStore, gallery: Gallery, config: EdgeConfig,
               on_activate: Callable[[Customer], None] | None = None,
               on_erase: Callable[[str], None] | None = None,
               consent_version: str | None = None, max_streams: int = MAX_EVENT_STREAMS,
               clock: Callable[[], float] = time.monotonic) -> Flask:
    """Build the menu + staff web app.

    Args:
        screen: what the menu page shows (the daemon changes it; the page follows by SSE).
        state: the cache with the current catalogue.
        gallery: customers (the staff page activates, discards and erases them).
        config: ``display`` (picks, staff_pin) and ``home`` (for ``secret_key``).
        on_activate: called with the activated :class:`Customer` (the daemon publishes an enrolment).
        on_erase: called with the id of a discarded or erased customer (the daemon confirms erasure).
        consent_version: the consent text version staff confirm; default ``config.display.consent_version``
            if that setting exists, else ``"1"``.
        max_streams: event streams served at once (503 beyond).
        clock: monotonic seconds for the PIN back-off (tests pass a fake one).
    Returns:
        the Flask app; ``app.extensions["dangol_streams"]`` is what :class:`DisplayServer` uses to end
        open event streams on stop.
    Raises:
        OSError: ``<home>/secret_key`` cannot be created or read.
    """
    here = Path(__file__).parent
    app = Flask(__name__, template_folder=str(here / "templates"), static_folder=None)
    app.secret_key = load_secret_key(config.home)
    app.config.update(SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_NAME="dangol_edge",
                      WTF_CSRF_TIME_LIMIT=None, TEMPLATES_AUTO_RELOAD=False, JSON_SORT_KEYS=False)
    streams = Streams(max_streams)
    app.extensions["dangol_streams"] = streams
    app_id = secrets.token_hex(6)
    display = config.display
    pin = display.staff_pin or None
    text_version = str(consent_version or getattr(display, "consent_version", None) or "1")
    pins = PinThrottle(clock=clock)  # per client address: a wrong-PIN guesser cannot lock the staff out
    app.extensions["dangol_pins"] = pins

    @app.before_request
    def kiosk_gate():
        """The kiosk's routes for the Pi's own screen only; the staff pages for others only behind a PIN."""
        local = is_loopback(request.remote_addr)
        if not local and (request.path in KIOSK_PATHS or request.path.startswith(KIOSK_PREFIX)):
            log.warning("refused %s %s from %s: the menu display is served to this device only",
                        request.method, request.path, request.remote_addr)
            return Response("The menu display is served to this device's own screen only.\n", status=403,
                            mimetype="text/plain")
        if not local and pin is None:
            log.warning("refused %s %s from %s: no staff PIN is set", request.method, request.path,
                        request.remote_addr)
            return Response("The staff page needs a staff PIN (display.staff_pin) to be used from the network.\n",
                            status=403, mimetype="text/plain")
        return None

    CSRFProtect(app)  # after the gate: a refused client is refused before anything else

    # --- menu page ---------------------------------------------------------------------------------
    def view(snapshot: dict, catalogue: dict | None) -> dict:
        out = dict(snapshot)
        if out.get("screen") == "welcome":
            out["picks"] = visible_picks(out.get("picks") or [], catalogue, display.picks)
        out["catalogue_version"] = (catalogue or {}).get("version")
        out["app"] = app_id
        return out

    def render_screen(v: dict, catalogue: dict | None) -> str:
        menu = house_menu(catalogue)
        count = sum(len(g["items"]) for g in menu)
        return app.jinja_env.get_template("_screen.html").render(
            v=v, menu=menu, cols=1 if count <= 4 else 2 if count <= 10 else 3 if count <= 36 else 4,
            greeting=greeting(), now=datetime.now())

    def read_catalogue() -> dict | None:
        try:
            return state.catalogue()
        except Exception:  # a broken cache must not take the screen down
            log.exception("cannot read the cached catalogue")
            return None

    @app.get("/")
    def menu_page():
        catalogue = read_catalogue()
        v = view(screen.snapshot(), catalogue)
        return render_template("menu.html", v=v, key=f"{v['version']}:{v['catalogue_version']}",
                               screen_html=render_screen(v, catalogue))

    @app.get("/api/state")
    def api_state():
        return flask.jsonify(view(screen.snapshot(), read_catalogue()))

    @app.get("/api/catalogue")
    def api_catalogue():
        catalogue = read_catalogue()
        if catalogue is None:
            return flask.jsonify({"error": "no catalogue cached yet"}), 404
        return flask.jsonify(catalogue)

    @app.get("/events")
    def events():
        release = streams.try_enter()
        if release is None:
            log.warning("refused an event stream from %s: %d open already", request.remote_addr, streams.limit)
            return Response("Too many open event streams.\n", status=503, mimetype="text/plain",
                            headers={"Retry-After": "5"})

        def stream() -> Iterator[str]:
            try:
                yield "retry: 1000\n\n"
                sent: tuple | None = None
                snap = screen.snapshot()
                catalogue, polled = read_catalogue(), time.monotonic()
                beat = time.monotonic()
                while not streams.stopping.is_set():
                    now = time.monotonic()
                    if now - polled >= CATALOGUE_POLL_S:
                        catalogue, polled = read_catalogue(), now
                    key = (snap["version"], (catalogue or {}).get("version"))
                    if key != sent:
                        v = view(snap, catalogue)
                        v["html"] = render_screen(v, catalogue)
                        yield f"data: {json.dumps(v, separators=(',', ':'))}\n\n"
                        sent, beat = key, now
                    elif now - beat >= HEARTBEAT_S:
                        yield "event: ping\ndata: {}\n\n"
                        beat = now
                    snap = screen.wait(snap["version"], STREAM_STEP_S)
            finally:
                release()

        response = Response(stream(), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.call_on_close(release)  # also when the stream never started (client gone at once)
        return response

    # --- staff page --------------------------------------------------------------------------------
    def signed_in() -> bool:
        return pin is None or time.time() - float(session.get("staff_at", 0)) < STAFF_SESSION_S

    @app.before_request
    def staff_gate():
        if request.path.startswith("/staff") and request.endpoint not in ("staff_login", "static"):
            if not signed_in():
                return redirect(url_for("staff_login", next=request.path if request.method == "GET" else None))
        return None

    def staff_page(status: int = 200, errors: dict[str, str] | None = None, values: dict | None = None):
        now = datetime.now(timezone.utc)
        pending = [{"c": c, "age": ago(c.created_at, now), "expires": ago(c.expires_at, now)}
                   for c in reversed(gallery.customers(status="pending"))]  # newest (at the counter) first
        active = [{"c": c, "since": ago(c.updated_at, now)}
                  for c in sorted(gallery.customers(status="active"), key=lambda c: c.display_name.casefold())]
        return render_template("staff.html", pending=pending, active=active, errors=errors or {},
                               values=values or {}, text_version=text_version, pin=pin is not None,
                               staff_name=session.get("staff_name", ""),
                               exposed=display.host not in ("127.0.0.1", "localhost", "::1")), status

    def lookup(customer_id: str, status: str) -> Customer | None:
        try:
            c = gallery.customer(customer_id)
        except UnknownCustomer:
            return None
        return c if c.status == status else None

    def after_erase(customer_id: str, verb: str, who: str) -> None:
        if on_erase is not None:
            try:
                on_erase(customer_id)
            except Exception:
                log.exception("on_erase callback failed for %s", customer_id)
                flash(f"{verb} {who} on this device, but telling the cloud failed — it will be retried.", "warning")
                return
        flash(f"{verb} {who}.", "success")

    @app.get("/staff")
    def staff():
        return staff_page()

    @app.post("/staff/activate/<customer_id>")
    def staff_activate(customer_id: str):
        name = " ".join(request.form.get("display_name", "").split())
        staff_name = " ".join(request.form.get("staff", "").split())
        consent = request.form.get("consent") == "yes"
        values = {"id": customer_id, "display_name": name, "staff": staff_name, "consent": consent}
        customer = lookup(customer_id, "pending")
        if customer is None:
            return staff_page(404, {"_": "That sign-up no longer exists (it may have expired or been "
                                         "handled already). Nothing was changed."})
        errors = {}
        if not name:
            errors["display_name"] = "Enter the customer's name (at least the first name)."
        elif len(name) > 80:
            errors["display_name"] = "That name is too long (80 characters at most)."
        if not consent:
            errors["consent"] = "Tick the box only once the customer has agreed to the consent text."
        if not staff_name:
            errors["staff"] = "Enter your name so the consent record says who took it."
        if errors:
            return staff_page(400, {customer_id: "Not activated — fix the marked fields.", **errors}, values)
        record = {"recorded_by": staff_name, "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "text_version": text_version}
        activated = gallery.activate(customer_id, name, record)
        session["staff_name"] = staff_name
        snap = screen.snapshot()
        if snap.get("screen") == "enrol" and customer.short_code and snap.get("code") == customer.short_code:
            screen.show_house()
        if on_activate is not None:
            try:
                on_activate(activated)
            except Exception:
                log.exception("on_activate callback failed for %s", customer_id)
                flash(f"{activated.display_name} is active on this device, but telling the cloud failed — "
                      "it will be retried.", "warning")
                return redirect(url_for("staff"))
        flash(f"{activated.display_name} is now a regular. Welcome aboard!", "success")
        return redirect(url_for("staff"))

    @app.post("/staff/discard/<customer_id>")
    def staff_discard(customer_id: str):
        customer = lookup(customer_id, "pending")
        if customer is None:
            return staff_page(404, {"_": "That sign-up no longer exists. Nothing was changed."})
        gallery.delete(customer_id)
        after_erase(customer_id, "Discarded", f"sign-up {customer.short_code or ''}".strip())
        return redirect(url_for("staff"))

    @app.post("/staff/erase/<customer_id>")
    def staff_erase(customer_id: str):
        customer = lookup(customer_id, "active")
        if customer is None:
            return staff_page(404, {"_": "No such customer on this device. Nothing was changed."})
        gallery.delete(customer_id)
        after_erase(customer_id, "Erased", customer.display_name)
        return redirect(url_for("staff"))

    @app.route("/staff/login", methods=["GET", "POST"])
    def staff_login():
        if pin is None:
            return redirect(url_for("staff"))
        error, status, headers = None, 200, {}
        if request.method == "POST":
            client = request.remote_addr or "-"
            locked = pins.wait(client) > 0
            ok = not locked and hmac.compare_digest(request.form.get("pin", "").strip().encode(), pin.encode())
            if ok:
                pins.success(client)
            elif not locked:
                pins.failure(client)
                log.warning("wrong staff PIN from %s", client)
            if ok:
                session.clear()
                session["staff_at"] = time.time()
                target = request.args.get("next") or ""
                return redirect(target if target.startswith("/staff") else url_for("staff"))
            if locked:
                wait = pins.retry_after(client)
                error, status, headers = (f"Too many wrong PINs — wait {wait} seconds and try again.", 429,
                                          {"Retry-After": str(wait)})
            else:
                error, status = "That PIN is not right.", 401
        return render_template("staff_login.html", error=error), status, headers

    @app.post("/staff/logout")
    def staff_logout():
        session.clear()
        return redirect(url_for("staff_login") if pin else url_for("staff"))

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        if request.path.startswith("/staff") and signed_in() and request.endpoint != "staff_login":
            return staff_page(400, {"_": "The form was out of date (or not sent by this page), so nothing "
                                         "was changed. Please try again."})
        return render_template("staff_login.html", error="The form was out of date — please try again."), 400

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


class DisplayServer:
    """Serve an app from :func:`create_app` on ``(host, port)`` in a background daemon thread.

    Args:
        app: the WSGI app; host: address to bind (``127.0.0.1`` for the kiosk only, ``0.0.0.0`` to let
            staff phones on the LAN reach ``/staff``); port: TCP port, 0 = any free port.

    Attributes:
        url: ``http://host:port`` once started (the bound port; loopback for a wildcard host).
    """

    def __init__(self, app: Flask, host: str, port: int):
        self.app = app
        self.host = host
        self.port = port
        self.url = ""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and start serving.

        Raises:
            OSError: the address cannot be bound (e.g. the port is in use); the message names it.
        """
        if self._server is not None:
            return
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        streams: Streams | None = self.app.extensions.get("dangol_streams")  # type: ignore[union-attr]
        if streams is not None:
            streams.stopping.clear()
        try:
            server = make_server(self.host, self.port, self.app, threaded=True)
        except SystemExit as exc:  # werkzeug prints the reason and calls sys.exit(1) when bind fails
            raise OSError(f"cannot listen on {self.host}:{self.port} (in use or not a local address)") from exc
        server.daemon_threads = True
        self._server = server
        self.port = server.port
        shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="dangol-display", daemon=True)
        self._thread.start()
        log.info("menu display on %s", self.url)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting requests, end open event streams (within ~:data:`STREAM_STEP_S`) and close the
        socket. Waits at most ``timeout`` seconds for streams to finish. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        streams: Streams | None = self.app.extensions.get("dangol_streams")  # type: ignore[union-attr]
        if streams is not None:
            streams.stopping.set()
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)
        if streams is not None and not streams.wait_idle(timeout):
            log.warning("%d event stream(s) still open after stop", streams.open)
        server.server_close()
