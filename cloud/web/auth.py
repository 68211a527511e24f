"""Sign-in / sign-out with hashed passwords (werkzeug scrypt) and Flask-Login sessions."""

from __future__ import annotations

import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import UserMixin, current_user, login_required, login_user, logout_user
from sqlalchemy import select

from dangol_cloud.app import get_session, login_manager
from dangol_cloud.models import User
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


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        user = get_session().scalar(select(User).where(User.email == form.email.data.strip().lower()))
        if user is not None and check_password(user.password_hash, form.password.data):
            login_user(SignedInUser(user))
            return redirect(_safe_next(request.args.get("next")))
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
