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
from .screen import Screen
from .state import StateStore

log = logging.getLogger(__name__)

#: Seconds between checks of the cached catalogue's version by each open event stream.
CATALOGUE_POLL_S = 1.0
#: Seconds between ``ping`` events (they also reveal a closed connection so its thread ends).
HEARTBEAT_S = 15.0
#: Longest wait on the screen in one step of an event stream, seconds (bounds the reaction to stop()).
STREAM_STEP_S = 0.25
#: Wrong PINs allowed before the staff sign-in is locked for :data:`PIN_LOCK_S` seconds.
PIN_MAX_FAILS = 5
PIN_LOCK_S = 60.0
#: How long a staff sign-in lasts, seconds.
STAFF_SESSION_S = 12 * 3600

_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "KRW": "₩", "JPY": "¥", "CNY": "¥", "INR": "₹",
            "AUD": "A$", "CAD": "C$", "NZD": "NZ$", "CHF": "CHF ", "SEK": "kr ", "NOK": "kr ", "DKK": "kr "}
_NO_DECIMALS = {"KRW", "JPY", "VND", "CLP", "ISK", "HUF", "TWD"}


def format_price(price: float | None, currency: str | None) -> str:
    """A price for the menu, e.g. ``€3.50``, ``₩4,500``; ``""`` when the price is unknown.

    Args:
        price: major units (``3.5`` is three euros fifty); None for no price.
        currency: ISO 4217 code (default EUR); unknown codes are written before the amount.
    """
    if price is None:
        return ""
    code = (currency or "EUR").upper()
    amount = f"{price:,.0f}" if code in _NO_DECIMALS else f"{price:,.2f}"
    return f"{_SYMBOLS.get(code, code + ' ')}{amount}"


def _catalogue_items(catalogue: dict | None) -> dict[str, dict]:
    return {str(i.get("id")): i for i in (catalogue or {}).get("items", [])}


def house_menu(catalogue: dict | None) -> list[dict]:
    """The house menu: available items grouped by category in catalogue order.

    Returns:
        ``[{"name": category, "items": [{"id", "name", "price", "description"}, ...]}, ...]``
        (price already formatted); empty without a catalogue.
    """
    groups: dict[str, list[dict]] = {}
    currency = (catalogue or {}).get("currency")
    for item in (catalogue or {}).get("items", []):
        if not item.get("available", True):
            continue
        groups.setdefault((item.get("category") or "").strip() or "More", []).append({
            "id": str(item.get("id")), "name": item.get("name", ""),
            "price": format_price(item.get("price"), currency), "description": item.get("description") or ""})
    return [{"name": k, "items": v} for k, v in groups.items()]


def visible_picks(picks: list[dict], catalogue: dict | None, limit: int) -> list[dict]:
    """A customer's picks as the screen may show them: only items the current catalogue lists as
    available (a missing catalogue shows none), with the catalogue's current name, price and description.

    Args:
        picks: the daemon's picks, each with ``id`` (or ``item_id``).
        limit: at most this many.
    Returns:
        ``[{"id", "name", "category", "price" (formatted), "description"}, ...]`` in pick order.
    """
    items = _catalogue_items(catalogue)
    currency = (catalogue or {}).get("currency")
    out: list[dict] = []
    for pick in picks or []:
        item = items.get(str(pick.get("id", pick.get("item_id"))))
        if item is None or not item.get("available", True):
            continue
        out.append({"id": str(item["id"]), "name": item.get("name", ""), "category": item.get("category"),
                    "price": format_price(item.get("price"), currency),
                    "description": item.get("description") or ""})
        if len(out) >= limit:
            break
    return out


def _greeting(now: datetime | None = None) -> str:
    hour = (now or datetime.now()).hour
    return ("Good morning" if 5 <= hour < 12 else "Good afternoon" if 12 <= hour < 18
            else "Good evening" if hour >= 18 else "Nice to see you")


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


def _ago(iso: str | None, now: datetime) -> str:
    """'5 min ago' / 'in 3 h 10 min' for an ISO timestamp."""
    if not iso:
        return ""
    try:
        ts = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    secs = (ts - now).total_seconds()
    m = int(abs(secs) // 60)
    text = "just now" if m < 1 else f"{m} min" if m < 60 else (
        f"{m // 60} h {m % 60} min" if m < 24 * 60 else f"{m // 1440} d {m // 60 % 24} h")
    if text == "just now":
        return text
    return f"in {text}" if secs > 0 else f"{text} ago"


class _Streams:
    """Open event streams and the shutdown flag shared by the app and its :class:`DisplayServer`."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._open = 0
        self._idle = threading.Condition(self._lock)

    def enter(self) -> None:
        with self._lock:
            self._open += 1

    def leave(self) -> None:
        with self._lock:
            self._open -= 1
            self._idle.notify_all()

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._idle.wait_for(lambda: self._open == 0, timeout=timeout)


def create_app(*, screen: Screen, state: StateStore, gallery: Gallery, config: EdgeConfig,
               on_activate: Callable[[Customer], None] | None = None,
               on_erase: Callable[[str], None] | None = None,
               consent_version: str | None = None) -> Flask:
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
    CSRFProtect(app)
    streams = _Streams()
    app.extensions["dangol_streams"] = streams
    app_id = secrets.token_hex(6)
    display = config.display
    pin = display.staff_pin or None
    text_version = str(consent_version or getattr(display, "consent_version", None) or "1")
    pin_fails: list[float] = []  # monotonic times of recent wrong PINs (all clients: a LAN-wide lock)
    pin_lock = threading.Lock()

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
            greeting=_greeting(), now=datetime.now())

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
        def stream() -> Iterator[str]:
            streams.enter()
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
                streams.leave()

        return Response(stream(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

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
        pending = [{"c": c, "age": _ago(c.created_at, now), "expires": _ago(c.expires_at, now)}
                   for c in reversed(gallery.customers(status="pending"))]  # newest (at the counter) first
        active = [{"c": c, "since": _ago(c.updated_at, now)}
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
        error, status = None, 200
        if request.method == "POST":
            now = time.monotonic()
            with pin_lock:
                pin_fails[:] = [t for t in pin_fails if now - t < PIN_LOCK_S]
                locked = len(pin_fails) >= PIN_MAX_FAILS
                ok = not locked and hmac.compare_digest(request.form.get("pin", "").strip().encode(), pin.encode())
                if ok:
                    pin_fails.clear()
                elif not locked:
                    pin_fails.append(now)
            if ok:
                session.clear()
                session["staff_at"] = time.time()
                target = request.args.get("next") or ""
                return redirect(target if target.startswith("/staff") else url_for("staff"))
            error, status = (("Too many wrong PINs — wait a minute and try again.", 429) if locked
                             else ("That PIN is not right.", 401))
        return render_template("staff_login.html", error=error), status

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
        streams: _Streams | None = self.app.extensions.get("dangol_streams")  # type: ignore[union-attr]
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
        streams: _Streams | None = self.app.extensions.get("dangol_streams")  # type: ignore[union-attr]
        if streams is not None:
            streams.stopping.set()
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)
        if streams is not None and not streams.wait_idle(timeout):
            log.warning("%d event stream(s) still open after stop", streams.open)
        server.server_close()
