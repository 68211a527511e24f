"""Dashboard users and roles, managed by owners (issue 11): add an owner or a staff member (with their
stores), change a role or stores, reset a password (a new one shown once; the user's sessions end), remove
(after a confirmation). The last owner cannot be demoted or removed, nor can owners remove themselves.
Routes live on the auth blueprint under ``/users``; ``/account/password`` lets every user choose their own
password (the current one checked under the sign-in throttle, :mod:`dangol_cloud.web.throttle`)."""

from __future__ import annotations

import logging
import math
import re

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import delete, func, select
from wtforms import PasswordField
from wtforms.validators import DataRequired

from dangol_cloud.app import get_session, get_settings
from dangol_cloud.models import Store, User, UserStore, WebSession, utcnow
from dangol_cloud.security import check_password, hash_password, new_secret
from dangol_cloud.web import throttle
from dangol_cloud.web.auth import _token_hash, bp, owner_required
from dangol_cloud.web.confirm import confirmation_page
from dangol_cloud.web.forms import ActionForm

log = logging.getLogger(__name__)

ROLES = ("owner", "staff")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,60}")


def _owners(s) -> int:
    return s.scalar(select(func.count()).select_from(User).where(User.role == "owner"))


def _set_stores(s, user: User, store_ids: list[str]) -> None:
    known = set(s.scalars(select(Store.id)))
    s.execute(delete(UserStore).where(UserStore.user_id == user.id))
    if user.role == "staff":
        s.add_all(UserStore(user_id=user.id, store_id=sid) for sid in dict.fromkeys(store_ids) if sid in known)


#: What a staff user without a store sees, said on the Users page when it happens.
NO_STORE = ("{email} has no store: a staff user sees only the customers, sales and devices of their stores, so "
            "they see nothing yet. Tick their store on the Users page and Save (Stores & devices adds a store).")


@bp.route("/users/", methods=["GET", "POST"])
@owner_required
def users():
    """GET /users/: users, roles and stores; POST: add a user (``email``, ``role``, ``stores``) → their first
    password, shown once, with a warning when a staff user was given no store (they would see nothing).

    Refused (the form is shown again with what was typed, and the error): an e-mail that is not an address (or
    over 254 characters), a role other than owner or staff, an e-mail that already has an account."""
    s = get_session()
    typed = {"email": "", "role": "staff", "stores": set()}
    if request.method == "POST":
        if not ActionForm().validate_on_submit():
            abort(400)
        email = (request.form.get("email") or "").strip().lower()
        role = request.form.get("role", "staff")
        chosen = request.form.getlist("stores")
        typed = {"email": (request.form.get("email") or "").strip()[:254], "role": role, "stores": set(chosen)}
        if not EMAIL.fullmatch(email) or len(email) > 254:
            flash(f"{typed['email'][:80]!r} is not an e-mail address (name@domain.tld): check the e-mail.", "error")
        elif role not in ROLES:
            flash("Choose a role: owner or staff.", "error")
        elif s.scalar(select(User.id).where(User.email == email)):
            flash(f"{email} already has an account.", "error")
        else:
            password = new_secret(12)
            user = User(email=email, password_hash=hash_password(password), role=role)
            s.add(user)
            s.flush()
            _set_stores(s, user, chosen)
            s.commit()
            storeless = role == "staff" and not _store_count(s, user)
            return render_template("user_password.html", user=user, password=password, new=True,
                                   no_store=NO_STORE.format(email=email) if storeless else None)
    rows = s.scalars(select(User).order_by(User.role, User.email)).all()
    stores = s.execute(select(Store.id, Store.name).order_by(Store.name)).all()
    scope: dict[int, set[str]] = {}
    for uid, sid in s.execute(select(UserStore.user_id, UserStore.store_id)):
        scope.setdefault(uid, set()).add(sid)
    return render_template("users.html", users=rows, stores=stores, scope=scope, action=ActionForm(), typed=typed)


def _store_count(s, user: User) -> int:
    return s.scalar(select(func.count()).select_from(UserStore).where(UserStore.user_id == user.id))


@bp.route("/users/<int:user_id>/role", methods=["POST"])
@owner_required
def user_role(user_id: int):
    """POST /users/<id>/role: ``role`` and, for staff, ``stores`` (staff without a store: saved, with a warning
    that they see nothing). 400 for an unknown role; the last owner stays an owner (refused with a message)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    user = s.get(User, user_id) or abort(404)
    role = request.form.get("role", user.role)
    if role not in ROLES:
        abort(400)
    if user.role == "owner" and role != "owner" and _owners(s) <= 1:
        flash("The last owner stays an owner: make someone else owner first.", "error")
        return redirect(url_for("auth.users"))
    user.role = role
    _set_stores(s, user, request.form.getlist("stores"))
    s.commit()
    flash(f"{user.email} is now {role}.", "success")
    if role == "staff" and not _store_count(s, user):
        flash(NO_STORE.format(email=user.email), "warning")
    return redirect(url_for("auth.users"))


@bp.route("/users/<int:user_id>/password", methods=["POST"])
@owner_required
def user_password(user_id: int):
    """POST /users/<id>/password: reset the password (after a confirmation) → the new one, shown once; the user's
    open sessions end. One's own password is chosen on /account/password instead (a redirect there)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    user = s.get(User, user_id) or abort(404)
    if str(user.id) == current_user.id:
        return redirect(url_for("auth.account_password"))
    page = confirmation_page(title=f"Reset the password of {user.email}?", button="Reset password",
                             detail="A new password is shown once; the old one stops working and their open "
                                    "sessions end.", cancel_url=url_for("auth.users"))
    if page is not None:
        return page
    password = new_secret(12)
    user.password_hash = hash_password(password)
    s.execute(delete(WebSession).where(WebSession.user_id == user.id))
    s.commit()
    return render_template("user_password.html", user=user, password=password, new=False)


@bp.route("/users/<int:user_id>/remove", methods=["POST"])
@owner_required
def user_remove(user_id: int):
    """POST /users/<id>/remove: delete the account (after a confirmation); not yourself, not the last owner."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    user = s.get(User, user_id) or abort(404)
    if str(user.id) == current_user.id or (user.role == "owner" and _owners(s) <= 1):
        flash("You cannot remove your own account or the last owner.", "error")
        return redirect(url_for("auth.users"))
    page = confirmation_page(title=f"Remove {user.email}?", button="Remove user", cancel_url=url_for("auth.users"),
                             detail="They can no longer sign in; their open sessions end. The audit log keeps "
                                    "their e-mail where they acted.")
    if page is not None:
        return page
    s.delete(user)
    s.commit()
    flash(f"Removed {user.email}.", "success")
    return redirect(url_for("auth.users"))


#: A chosen password's length: at least what ``dangol-cloud create-user`` asks (8), at most what is worth hashing.
PASSWORD_LENGTH = (8, 1024)


class PasswordForm(FlaskForm):
    """One's own password: the current one and the new one twice (CSRF token included)."""

    current_password = PasswordField("Current password", validators=[DataRequired("Type your current password.")])
    new_password = PasswordField("New password", validators=[DataRequired("Type the new password.")])
    repeat_password = PasswordField("New password again", validators=[DataRequired("Type the new password again.")])


def _new_password_problems(form: PasswordForm) -> bool:
    """Put the new password's problems on the form (length, the two differ, same as now); True if there are any."""
    new, low, high = form.new_password.data or "", *PASSWORD_LENGTH
    if not low <= len(new) <= high:
        limit = f"at least {low}" if len(new) < low else f"at most {high}"
        form.new_password.errors = [*form.new_password.errors, f"Use {limit} characters."]
    elif new != form.repeat_password.data:
        form.repeat_password.errors = [*form.repeat_password.errors, "The two new passwords do not match."]
    elif new == form.current_password.data:
        form.new_password.errors = [*form.new_password.errors, "That is your current password: choose a new one."]
    return bool(form.new_password.errors or form.repeat_password.errors)


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def account_password():
    """GET/POST /account/password: change one's own password (current password, the new one twice, at least 8
    characters). The current password is checked under the sign-in back-off (the same counts: guessing here is no
    faster than at /login; 429 with ``Retry-After`` while it runs). On success the user's other sessions end, this
    one stays → Today. Refused: 422 with the reason on the form."""
    form = PasswordForm()
    if not form.validate_on_submit():
        return render_template("account_password.html", form=form), 422 if request.method == "POST" else 200
    if _new_password_problems(form):
        return render_template("account_password.html", form=form), 422
    s, settings = get_session(), get_settings()
    key, addr, now = throttle.email_key(current_user.email), throttle.client_address(), utcnow()
    _, wait = throttle.attempt_or_wait(s, settings, key, addr, now)  # as at sign-in
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        log.warning("password change for %r from %s held back %d s after repeated failures", current_user.email,
                    addr, seconds)
        when = f"{seconds} seconds" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes"
        flash(f"Too many wrong passwords. Try again in {when}; nothing was changed.", "error")
        response = make_response(render_template("account_password.html", form=form), 429)
        response.headers["Retry-After"] = str(seconds)
        return response
    user = s.get(User, int(current_user.id)) or abort(404)
    if not check_password(user.password_hash, form.current_password.data):
        log.warning("wrong current password for %r from %s", current_user.email, addr)
        form.current_password.errors = ["The current password is wrong; nothing was changed."]
        return render_template("account_password.html", form=form), 422
    user.password_hash = hash_password(form.new_password.data)
    s.execute(delete(WebSession).where(WebSession.user_id == user.id,  # every other sign-in of theirs ends
                                       WebSession.token_sha256 != _token_hash(current_user.token)))
    throttle.clear_failures(s, key, addr)
    s.commit()
    log.info("%s changed their password", user.email)
    flash("Password changed. You stay signed in here; your other sign-ins have ended.", "success")
    return redirect(url_for("home.index"))
