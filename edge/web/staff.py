"""Blueprint ``staff``: pending sign-ups and active customers — activate with consent, a name and what the door greets
them with ("Greet as", pre-filled by :func:`dangol_protocol.greeting_name`; changed later on the list of regulars),
discard, erase — and the consent text staff confirm (``/staff/consent``; ``/staff/consent/customer``, the page turned
towards the customer), behind a PIN sign-in when a staff PIN is set. Every form carries a CSRF token (Flask-WTF)."""

from __future__ import annotations

import hmac
import logging
import sqlite3
import time
from datetime import datetime, timezone

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from werkzeug.exceptions import InternalServerError

from dangol_protocol import Consent, greeting_name
from dangol_protocol.names import FAMILY_NAME_FIRST, MAX_GREETING, TITLES

from ..consent_text import ConsentTextError, render_consent
from ..enrol import DoorRule
from ..events import EventNotSaved
from ..gallery import AlreadyRegular, Customer, NoCurrentTemplate, UnknownCustomer
from .deps import deps
from .erasing import after_erase, erase_here
from .formatting import ago, seconds_ago
from .menu import read_catalogue

log = logging.getLogger(__name__)

bp = Blueprint("staff", __name__, url_prefix="/staff")

#: How long a staff sign-in lasts, seconds.
STAFF_SESSION_S = 12 * 3600
#: How long the sign-up card tells how the last sign-up ended (did not work, cancelled, not saved), seconds; it stops
#: sooner when a new sign-up is asked for.
SIGNUP_OUTCOME_S = 10 * 60
#: How long after "Start a sign-up" the page follows it even if the capture has not begun yet, seconds.
SIGNUP_WATCH_S = 15
#: What staff are told when the event for the cloud could not be saved (the outbox holds and retries it:
#: :class:`~dangol_edge.events.EventNotSaved`).
NOT_SAVED = ("telling the cloud failed (this device cannot write its storage) — the message is kept and retried "
             "every minute while the device runs; check the device's storage if this repeats.")
#: What staff are told when reporting an activation failed otherwise (e.g. a damaged storage page): nothing is
#: retried while the device runs; the gallery's record of the activation makes the next start report it.
NOT_REPORTED = ("the cloud was not told ({why}). Nothing retries it while the device runs: this device tells the cloud "
                "when it next starts. Restart it, and tell the owner if this repeats (its storage may be failing).")


#: What staff are told when a "Greet as" is too long (at activation and when changed later).
GREETING_TOO_LONG = f"Keep the greeting short ({MAX_GREETING} characters at most): it is the door's headline."

#: What staff are told when the gallery itself cannot be written (disk full, a card remounted read-only).
CANNOT_SAVE = ("this device cannot save right now (its storage is full or read-only), so nothing was changed. "
               "Free space on its memory card or tell the owner.")


def cannot_save(what: str, customer_id: str, exc: sqlite3.Error):
    """The staff page with a 507 error: the gallery write for ``what`` (``activated``, ``erased``, ``discarded``,
    ``changed``) failed as a whole (one transaction), so the customer is as before."""
    log.error("staff page: %s not %s: the gallery cannot be written (%s)", customer_id, what, exc)
    return staff_page(507, {"_": f"Not {what}: {CANNOT_SAVE}"})


def server_error(_exc: InternalServerError):
    """An unexpected error (logged with its traceback by Flask): staff get a page that says what to do, not a
    bare "Internal Server Error"; the menu display and its API a short plain text."""
    if request.path.startswith("/staff"):
        return render_template("staff_error.html"), 500
    return "This device could not answer; the error was logged.\n", 500, {"Content-Type": "text/plain; charset=utf-8"}


def signed_in() -> bool:
    """True without a PIN, or within :data:`STAFF_SESSION_S` of a sign-in."""
    return deps().pin is None or time.time() - float(session.get("staff_at", 0)) < STAFF_SESSION_S


@bp.before_request
def staff_gate():
    if request.endpoint != "staff.login" and not signed_in():
        return redirect(url_for("staff.login", next=request.path if request.method == "GET" else None))
    return None


def staff_page(status: int = 200, errors: dict[str, str] | None = None, values: dict | None = None):
    d = deps()
    now = datetime.now(timezone.utc)
    pending = [{"c": c, "age": ago(c.created_at, now), "expires": ago(c.expires_at, now)}
               for c in reversed(d.gallery.customers(status="pending"))]  # newest (at the counter) first
    active = [{"c": c, "since": ago(c.updated_at, now)}
              for c in sorted(d.gallery.customers(status="active"), key=lambda c: c.display_name.casefold())]
    signup = {"available": d.on_signup is not None, **signup_progress(), "last": last_signup()}
    # the page follows a sign-up by itself (_staff.js) while one is captured, or was just asked for and has not
    # ended since (a capture that never began stops being followed after SIGNUP_WATCH_S)
    since_asked, ended = time.time() - session.get("signup_asked", 0), d.screen.last_signup()
    signup["watch"] = signup["capturing"] or (since_asked < SIGNUP_WATCH_S
                                              and (ended is None or ended["age_s"] > since_asked))
    catalogue_unreadable = read_catalogue(d) is None and d.state.catalogue_read_errors > 0
    storage = d.storage() if d.storage is not None else "ok"
    button_problem = d.button_problem() if d.button_problem is not None else None
    greet_rule = {"titles": TITLES, "family_first": FAMILY_NAME_FIRST, "max": MAX_GREETING}  # for the page's script
    return render_template("staff.html", pending=pending, active=active, errors=errors or {},
                           greeting=greeting_name, greet_rule=greet_rule,
                           catalogue_unreadable=catalogue_unreadable, storage=storage, button_problem=button_problem,
                           values=values or {}, text_version=d.text_version, pin=d.pin is not None, signup=signup,
                           staff_name=session.get("staff_name", ""),
                           exposed=d.config.display.host not in ("127.0.0.1", "localhost", "::1")), status


def signup_progress() -> dict:
    """``{"capturing": bool, "samples": good snapshots so far, "wanted": snapshots needed, "ended": bool}`` of the
    door's sign-up, as the enrolment reports it (:meth:`~dangol_edge.screen.Screen.capture`), not what the door shows;
    ``ended``: a sign-up ended since this session asked for one (e.g. refused at once: the camera does not work)."""
    d = deps()
    capture, last = d.screen.capture(), d.screen.last_signup()
    since_asked = time.time() - session.get("signup_asked", 0)
    return {"capturing": capture is not None, "samples": capture["samples"] if capture else 0,
            "wanted": capture["wanted"] if capture else 0,
            "ended": last is not None and last["age_s"] < since_asked}


def last_signup() -> dict | None:
    """How the last sign-up ended, for the sign-up card: :meth:`~dangol_edge.screen.Screen.last_signup` with
    ``ago`` ("just now", "2 min ago"), when it did not work (``failed``, with ``why``), was ``cancelled``,
    ``not-saved`` or found someone ``already`` a regular (``regular_name``: their display name, None if erased since)
    less than :data:`SIGNUP_OUTCOME_S` seconds ago; else None (a ``pending`` one is on its own card)."""
    last = deps().screen.last_signup()
    if last is None or last["stage"] == "pending" or last["age_s"] >= SIGNUP_OUTCOME_S:
        return None
    name = None
    if last["stage"] == "already" and last.get("regular"):
        regular = lookup(last["regular"], "active")
        name = regular.display_name if regular is not None else None
    return {**last, "ago": seconds_ago(last["age_s"]), "regular_name": name}


def lookup(customer_id: str, status: str) -> Customer | None:
    try:
        c = deps().gallery.customer(customer_id)
    except UnknownCustomer:
        return None
    return c if c.status == status else None


@bp.get("")
def index():
    return staff_page()


@bp.post("/signup")
def signup():
    """Start a sign-up at the door (as the GPIO button does): the camera gathers the nearest face's good
    snapshots and the door screen shows the progress, then the pending code."""
    d = deps()
    if d.on_signup is None:
        return staff_page(409, {"_": "Sign-ups cannot be started here: no camera is running on this device."})
    if not d.on_signup("enrol"):
        return staff_page(503, {"_": "The device is busy — nothing was started. Please try again in a moment."})
    d.screen.forget_signup()  # the card stops telling how the last one ended now, not once the camera thread starts
    session["signup_asked"] = time.time()  # the page follows it even before the camera thread starts capturing
    flash("Sign-up started: ask the customer to look at the camera by the door. The door screen counts the "
          "snapshots, then shows a code; the sign-up appears below.", "success")
    return redirect(url_for("staff.index"))


@bp.get("/signup/progress")
def signup_progress_json():
    """GET /staff/signup/progress: :func:`signup_progress` as JSON, which the staff page polls while it follows a
    sign-up (signed-in staff only, like every /staff route)."""
    return signup_progress()


@bp.post("/signup/cancel")
def signup_cancel():
    """Cancel the sign-up being captured (as holding the button does); nothing is stored."""
    d = deps()
    if d.on_signup is None or not d.on_signup("cancel"):
        return staff_page(409, {"_": "No sign-up could be cancelled here. Nothing was changed."})
    flash("Sign-up cancelled; nothing was stored.", "success")
    return redirect(url_for("staff.index"))


@bp.post("/activate/<customer_id>")
def activate(customer_id: str):
    d = deps()
    name = " ".join(request.form.get("display_name", "").split())
    greet = " ".join(request.form.get("greet_as", "").split())  # empty: the rule on the name (greeting_name)
    staff_name = " ".join(request.form.get("staff", "").split())
    consent = request.form.get("consent") == "yes"
    values = {"id": customer_id, "display_name": name, "greet_as": greet, "staff": staff_name, "consent": consent}
    customer = lookup(customer_id, "pending")
    if customer is None:
        return staff_page(404, {"_": "That sign-up no longer exists (it may have expired or been "
                                     "handled already). Nothing was changed."})
    errors = {}
    if not name:
        errors["display_name"] = "Enter the customer's name (at least the first name)."
    elif len(name) > 80:
        errors["display_name"] = "That name is too long (80 characters at most)."
    if len(greet) > MAX_GREETING:
        errors["greet_as"] = GREETING_TOO_LONG
    if not consent:
        errors["consent"] = "Tick the box only once the customer has agreed to the consent text."
    if not staff_name:
        errors["staff"] = "Enter your name so the consent record says who took it."
    elif len(staff_name) > 120:
        errors["staff"] = "That name is too long (120 characters at most)."
    if errors:
        return staff_page(400, {customer_id: "Not activated — fix the marked fields.", **errors}, values)
    # the protocol's consent record, as the cloud will receive it (validated here, stored by the gallery)
    record = Consent(recorded_by=staff_name, recorded_at=datetime.now(timezone.utc).replace(microsecond=0),
                     text_version=d.text_version)
    rule = DoorRule.or_none(d.config, d.gallery.model_sha256)
    check = None if rule is None else lambda: rule.check_pending(d.gallery, customer_id)
    try:  # refused, nothing changed, when the sign-up is an active customer's face (two records: neither greeted)
        activated = d.gallery.activate(customer_id, name, record, greet_name=greet or None, check=check)
    except AlreadyRegular as exc:
        log.warning("staff page: not activated: %s", exc)
        regular = exc.customer.display_name
        return staff_page(409, {"_": f"Sign-up {customer.short_code or ''} was not activated: already a regular: "
                                     f"{regular}. Nothing was changed.",
                                customer_id: f"Already a regular: {regular} (the same face). Discard this sign-up — "
                                             "they are greeted at the door as they are."}, values)
    except NoCurrentTemplate as exc:
        log.warning("staff page: not activated: %s", exc)
        return staff_page(409, {"_": f"Sign-up {customer.short_code or ''} was not activated: re-enrol needed: no "
                                     "template of the current model. Nothing was changed.",
                                customer_id: "Re-enrol needed: no template of the current model (this sign-up was made "
                                             "with the previous face model). Discard it and start a new sign-up."},
                         values)
    except sqlite3.OperationalError as exc:
        return cannot_save("activated", customer_id, exc)
    session["staff_name"] = staff_name
    snap = d.screen.snapshot()
    if snap.get("screen") == "enrol" and customer.short_code and snap.get("code") == customer.short_code:
        d.screen.show_house()
    if d.on_activate is not None:
        try:
            d.on_activate(activated)
        except EventNotSaved as exc:  # held by the outbox and retried
            log.error("reporting the activation of %s failed: %s", customer_id, exc)
            flash(f"{activated.display_name} is active on this device, but {NOT_SAVED}", "warning")
            return redirect(url_for("staff.index"))
        except Exception as exc:  # nothing held: the gallery's record of the activation is reported at the next start
            log.exception("reporting the activation of %s failed; it is reported again at the next start",
                          customer_id)
            why = ("its storage failed" if isinstance(exc, sqlite3.Error) else
                   "the customer's consent record cannot be read" if isinstance(exc, ValueError) else
                   f"an unexpected error: {type(exc).__name__}")
            flash(f"{activated.display_name} is active on this device, but {NOT_REPORTED.format(why=why)}", "warning")
            return redirect(url_for("staff.index"))
    flash(f"{activated.display_name} is now a regular. Welcome aboard! The door greets them: "
          f"Welcome back, {activated.first_name}.", "success")
    return redirect(url_for("staff.index"))


@bp.get("/consent")
def consent_text():
    """The consent text of ``display.consent_version`` for staff to read, with "Show to the customer"."""
    return consent_page(customer_view=False)


@bp.get("/consent/customer")
def consent_for_customer():
    """The consent text alone, in large type, for the customer to read on the phone staff hand them: no staff
    controls, no link back to the staff page (it lists other customers' names)."""
    return consent_page(customer_view=True)


def consent_page(customer_view: bool):
    """The consent page; when the text cannot be rendered (its file removed since ``check-config`` passed) a 500 page
    that says so and why — never a text staff could mistake for the one the customer agrees to."""
    d = deps()
    try:
        text, problem = Markup(render_consent(d.config)), None
    except ConsentTextError as exc:
        log.error("staff page: the consent text cannot be shown: %s", exc)
        text, problem = None, str(exc)
    return render_template("consent.html", text=text, problem=problem, version=d.text_version,
                           customer_view=customer_view), 500 if problem else 200


@bp.post("/discard/<customer_id>")
def discard(customer_id: str):
    customer = lookup(customer_id, "pending")
    if customer is None:
        return staff_page(404, {"_": "That sign-up no longer exists. Nothing was changed."})
    try:
        erase_here(customer_id)
    except sqlite3.OperationalError as exc:
        return cannot_save("discarded", customer_id, exc)
    after_erase(customer_id, "Discarded", f"sign-up {customer.short_code or ''}".strip())
    return redirect(url_for("staff.index"))


@bp.post("/erase/<customer_id>")
def erase(customer_id: str):
    customer = lookup(customer_id, "active")
    if customer is None:
        return staff_page(404, {"_": "No such customer on this device. Nothing was changed."})
    try:
        erase_here(customer_id)
    except sqlite3.OperationalError as exc:
        return cannot_save("erased", customer_id, exc)
    after_erase(customer_id, "Erased", customer.display_name)
    return redirect(url_for("staff.index"))


@bp.post("/greeting/<customer_id>")
def change_greeting(customer_id: str):
    """Change what the door says to an active customer ("Greet as" on the list of regulars): cleaned and bounded as
    at activation; empty: the rule on their name. Greeted with from their next arrival; logged by customer id only.
    The cloud is not told: it keeps no greeting (its menus' name is never what the door says)."""
    greet = " ".join(request.form.get("greet_as", "").split())
    try:
        changed = deps().gallery.set_greeting(customer_id, greet)
    except ValueError:
        return staff_page(400, {customer_id: f"Not changed: {GREETING_TOO_LONG}"},
                          {"id": customer_id, "greet_as": greet})
    except UnknownCustomer:  # erased (or never active): the page lists only the regulars still here
        return staff_page(404, {"_": "No such customer on this device. Nothing was changed."})
    except sqlite3.OperationalError as exc:
        return cannot_save("changed", customer_id, exc)
    log.info("staff page: the greeting of customer %s changed (%s)", customer_id,
             "their own" if changed.greet_name else "the rule on their name")
    flash(f"The door now greets {changed.display_name}: Welcome back, {changed.first_name}.", "success")
    return redirect(url_for("staff.index"))


@bp.route("/login", methods=["GET", "POST"])
def login():
    d = deps()
    if d.pin is None:
        return redirect(url_for("staff.index"))
    error, status, headers = None, 200, {}
    if request.method == "POST":
        client = request.remote_addr or "-"
        locked = d.pins.wait(client) > 0
        ok = not locked and hmac.compare_digest(request.form.get("pin", "").strip().encode(), d.pin.encode())
        if ok:
            d.pins.success(client)
        elif not locked:
            d.pins.failure(client)
            log.warning("wrong staff PIN from %s", client)
        if ok:
            session.clear()
            session["staff_at"] = time.time()
            target = request.args.get("next") or ""
            return redirect(target if target.startswith("/staff") else url_for("staff.index"))
        if locked:
            wait = d.pins.retry_after(client)
            error, status, headers = (f"Too many wrong PINs — wait {wait} seconds and try again.", 429,
                                      {"Retry-After": str(wait)})
        else:
            error, status = "That PIN is not right.", 401
    return render_template("staff_login.html", error=error), status, headers


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("staff.login") if deps().pin else url_for("staff.index"))


def csrf_error(exc: CSRFError):
    """A form without a valid CSRF token: nothing changed, said on the page the form came from."""
    if request.path.startswith("/staff") and signed_in() and request.endpoint != "staff.login":
        return staff_page(400, {"_": "The form was out of date (or not sent by this page), so nothing "
                                     "was changed. Please try again."})
    return render_template("staff_login.html", error="The form was out of date — please try again."), 400
