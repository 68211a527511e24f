"""Sign-in / sign-out with hashed passwords (werkzeug scrypt) and Flask-Login sessions; sign-in is rate
limited per e-mail and client address (``login_max_failures`` failures within ``login_window_minutes``,
default 5 in 15 minutes, then 429). Failures are counted in the database (``login_failures``), so the limit
holds across restarts and worker processes."""

from __future__ import annotations

import hashlib
import logging
import math
from datetime import datetime, timedelta

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import UserMixin, current_user, login_required, login_user, logout_user
from sqlalchemy import delete, func, select

from dangol_cloud.app import get_session, get_settings, login_manager
from dangol_cloud.models import LoginFailure, User, utcnow
from dangol_cloud.security import check_password
from dangol_cloud.web.forms import LoginForm

__all__ = ["bp", "owner_required"]

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)


class SignedInUser(UserMixin):
    """Flask-Login wrapper of a :class:`User` row."""

    def __init__(self, user: User) -> None:
        self.id = str(user.id)
        self.email = user.email
        self.role = user.role

    @property
    def is_owner(self) -> bool:
        return self.role == "owner"


@login_manager.user_loader
def _load_user(user_id: str) -> SignedInUser | None:
    user = get_session().get(User, int(user_id)) if user_id.isdigit() else None
    return SignedInUser(user) if user else None


def owner_required(view):
    """Decorator: signed in as an owner, else 403."""
    from functools import wraps

    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_owner:
            abort(403)
        return view(*args, **kwargs)

    return wrapped


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/") and not target.startswith("//") else url_for("home.index")


def _failure_key(email: str) -> tuple[str, str]:
    return hashlib.sha256(email.encode("utf-8")).hexdigest(), (request.remote_addr or "-")[:64]


def _recent_failures(session, email: str) -> tuple[int, datetime | None]:
    """(failures for this e-mail from this address inside the window, oldest of them)."""
    settings = get_settings()
    key, addr = _failure_key(email)
    since = utcnow() - timedelta(minutes=settings.login_window_minutes)
    n, oldest = session.execute(select(func.count(), func.min(LoginFailure.at)).where(
        LoginFailure.email_sha256 == key, LoginFailure.remote_addr == addr, LoginFailure.at >= since)).one()
    return n, oldest


@bp.route("/login", methods=["GET", "POST"])
def login():
    """GET/POST /login: 401 for a wrong e-mail/password, 429 after too many failures (see module docstring)."""
    form = LoginForm()
    if form.validate_on_submit():
        s = get_session()
        email = form.email.data.strip().lower()
        settings = get_settings()
        failures, oldest = _recent_failures(s, email)
        if failures >= settings.login_max_failures:
            wait = timedelta(minutes=settings.login_window_minutes) - (utcnow() - oldest)
            minutes = max(1, math.ceil(wait.total_seconds() / 60))
            log.warning("sign-in for %r from %s refused: %d failures in %.0f min", email, request.remote_addr,
                        failures, settings.login_window_minutes)
            flash(f"Too many failed sign-ins for this e-mail from your address. Try again in {minutes} minute"
                  f"{'s' if minutes != 1 else ''}.", "error")
            response = make_response(render_template("login.html", form=form), 429)
            response.headers["Retry-After"] = str(minutes * 60)
            return response
        user = s.scalar(select(User).where(User.email == email))
        if user is not None and check_password(user.password_hash, form.password.data):
            key, addr = _failure_key(email)
            s.execute(delete(LoginFailure).where(LoginFailure.email_sha256 == key, LoginFailure.remote_addr == addr))
            s.commit()
            login_user(SignedInUser(user))
            return redirect(_safe_next(request.args.get("next")))
        key, addr = _failure_key(email)
        s.add(LoginFailure(email_sha256=key, remote_addr=addr, at=utcnow()))
        s.commit()
        log.warning("failed sign-in for %r from %s", form.email.data, request.remote_addr)
        flash("Wrong e-mail or password.", "error")
        return render_template("login.html", form=form), 401
    return render_template("login.html", form=form)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    logout_user()
    flash("Signed out.", "info")
    return redirect(url_for("auth.login"))
