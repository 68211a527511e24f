"""Sign-in / sign-out with hashed passwords (werkzeug scrypt) and server-side Flask-Login sessions.

A sign-in creates a ``web_sessions`` row (SHA-256 of a random token, absolute expiry after
``session_lifetime_hours``); the browser's signed session cookie carries only the token (Flask-Login's
"alternative token" as the user id). Signing out deletes the row, so a copied cookie stops working at once,
and a session ends at its expiry whatever the activity.

Unknown e-mails cost the same scrypt check as known ones (a throw-away hash), and failed sign-ins slow
further attempts down progressively per e-mail and address, per address and per e-mail
(:mod:`dangol_cloud.web.throttle`) instead of locking the right password out. Each attempt is recorded as a
failure and committed before the counts are read, so simultaneous wrong passwords for one e-mail get at most the
allowance checked (the rest are refused with 429 without a check); a success deletes the record.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from datetime import timedelta
from functools import wraps

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, session, url_for
from flask_login import UserMixin, current_user, login_required, login_user, logout_user
from sqlalchemy import delete, select

from dangol_cloud.app import get_session, get_settings, login_manager
from dangol_cloud.models import User, UserStore, WebSession, utcnow
from dangol_cloud.security import check_password_or_dummy, local_redirect_target
from dangol_cloud.web import throttle
from dangol_cloud.web.forms import LoginForm

__all__ = ["FIRST_ACCOUNT_COMMAND", "FIRST_ACCOUNT_HINT", "SignedInUser", "bp", "no_accounts", "owner_required"]

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)
#: How the first account is made (``dangol-cloud create-user``, :func:`dangol_cloud.cli_admin.cmd_create_user`).
FIRST_ACCOUNT_COMMAND = "dangol-cloud create-user you@example.com --role owner"
#: What ``dangol-cloud serve`` prints at start while nobody has an account (the sign-in page says the same).
FIRST_ACCOUNT_HINT = (f"No account yet: run `{FIRST_ACCOUNT_COMMAND}` on the server (with the same settings as "
                      "`dangol-cloud serve`; it asks for the password), then sign in. Owners add everyone else on "
                      "the Users page.")


def no_accounts(session) -> bool:
    """True while the users table is empty (a fresh install: :data:`FIRST_ACCOUNT_HINT`)."""
    return session.scalar(select(User.id).limit(1)) is None


def _login_page(form: LoginForm, status: int = 200, *, failed: bool = False):
    """The sign-in page and its status; on a fresh install with the first-account panel instead of "Wrong e-mail
    or password" after a ``failed`` sign-in (there is no account to get wrong)."""
    fresh = no_accounts(get_session())
    if failed and not fresh:
        flash("Wrong e-mail or password.", "error")
    return render_template("login.html", form=form, first_account=FIRST_ACCOUNT_COMMAND if fresh else None), status


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SignedInUser(UserMixin):
    """Flask-Login wrapper of a :class:`User` row and its server-side session.

    Attributes:
        id: the user's id (str); token: the session token (what the cookie holds, via :meth:`get_id`);
        email, role; store_ids: the stores a staff user may see (frozenset of store ids; owners: all).
    """

    def __init__(self, user: User, token: str, store_ids: frozenset[str] = frozenset()) -> None:
        self.id = str(user.id)
        self.token = token
        self.email = user.email
        self.role = user.role
        self.store_ids = store_ids

    def get_id(self) -> str:
        """The session token: Flask-Login keeps it in the session cookie and gives it to the user loader."""
        return self.token

    @property
    def is_owner(self) -> bool:
        return self.role == "owner"


@login_manager.user_loader
def _load_user(token: str) -> SignedInUser | None:
    """The signed-in user for a session token, or None if the session was signed out, expired or is unknown."""
    if not token or len(token) > 128:
        return None
    s = get_session()
    row = s.get(WebSession, _token_hash(token))
    if row is None or row.expires_at <= utcnow():
        return None
    user = s.get(User, row.user_id)
    if user is None:
        return None
    stores = frozenset(s.scalars(select(UserStore.store_id).where(UserStore.user_id == user.id)))
    return SignedInUser(user, token, stores)


def owner_required(view):
    """Decorator: signed in as an owner, else 403."""

    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_owner:
            abort(403)
        return view(*args, **kwargs)

    return wrapped


def _too_many(form: LoginForm, wait: float, email: str, addr: str):
    seconds = max(1, math.ceil(wait))
    log.warning("sign-in for %r from %s held back %d s after repeated failures", email, addr, seconds)
    when = f"{seconds} seconds" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes"
    flash(f"Too many failed sign-ins. Try again in {when}.", "error")
    response = make_response(*_login_page(form, 429))
    response.headers["Retry-After"] = str(seconds)
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    """GET/POST /login?next=PATH: 302 to ``next`` (a path on this site only) or Today; 401 for a wrong
    e-mail/password; 429 with ``Retry-After`` while a back-off is running, the password not checked (see module
    docstring; the attempt is recorded and committed first, so simultaneous attempts count each other)."""
    form = LoginForm()
    if not form.validate_on_submit():
        return _login_page(form)
    s = get_session()
    settings = get_settings()
    email = form.email.data.strip().lower()
    key, addr, now = throttle.email_key(email), throttle.client_address(), utcnow()
    _, wait = throttle.attempt_or_wait(s, settings, key, addr, now)  # a success clears it below
    if wait > 0:
        return _too_many(form, wait, email, addr)
    user = s.scalar(select(User).where(User.email == email))
    # always one scrypt check, also for an unknown e-mail (a throw-away hash): the time tells nothing
    if not check_password_or_dummy(user.password_hash if user is not None else None, form.password.data):
        log.warning("failed sign-in for %r from %s", email, addr)
        return _login_page(form, 401, failed=True)
    token = secrets.token_urlsafe(32)
    s.execute(delete(WebSession).where(WebSession.expires_at <= now))  # keep the table bounded
    s.add(WebSession(token_sha256=_token_hash(token), user_id=user.id, created_at=now,
                     expires_at=now + timedelta(hours=settings.session_lifetime_hours)))
    throttle.clear_failures(s, key, addr)
    s.commit()
    session.clear()
    login_user(SignedInUser(user, token))
    session.permanent = True  # the browser drops the cookie at the lifetime too (PERMANENT_SESSION_LIFETIME)
    response = redirect(local_redirect_target(request.args.get("next")) or url_for("home.index"))
    response.set_cookie(throttle.DEVICE_COOKIE, throttle.device_cookie(key), max_age=throttle.DEVICE_COOKIE_MAX_AGE,
                        httponly=True, samesite="Lax", secure=settings.cookie_secure)
    return response


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """POST /logout: delete this session on the server (the cookie is useless afterwards) and sign out."""
    s = get_session()
    s.execute(delete(WebSession).where(WebSession.token_sha256 == _token_hash(current_user.token)))
    s.commit()
    logout_user()
    session.clear()
    flash("Signed out.", "info")
    return redirect(url_for("auth.login"))


from dangol_cloud.web import users as _users  # noqa: E402,F401 - user management routes on this blueprint
