"""Dashboard users and roles, managed by owners (issue 11): add an owner or a staff member (with their
stores), change a role or stores, reset a password (a new one shown once; the user's sessions end), remove
(after a confirmation). The last owner cannot be demoted or removed, nor can owners remove themselves.
Routes live on the auth blueprint under ``/users``."""

from __future__ import annotations

import re

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import delete, func, select

from dangol_cloud.app import get_session
from dangol_cloud.models import Store, User, UserStore, WebSession
from dangol_cloud.security import hash_password, new_secret
from dangol_cloud.web.auth import bp, owner_required
from dangol_cloud.web.confirm import confirmation_page
from dangol_cloud.web.forms import ActionForm

ROLES = ("owner", "staff")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,60}")


def _owners(s) -> int:
    return s.scalar(select(func.count()).select_from(User).where(User.role == "owner"))


def _set_stores(s, user: User, store_ids: list[str]) -> None:
    known = set(s.scalars(select(Store.id)))
    s.execute(delete(UserStore).where(UserStore.user_id == user.id))
    if user.role == "staff":
        s.add_all(UserStore(user_id=user.id, store_id=sid) for sid in dict.fromkeys(store_ids) if sid in known)


@bp.route("/users/", methods=["GET", "POST"])
@owner_required
def users():
    """GET /users/: users, roles and stores; POST: add a user (``email``, ``role``, ``stores``) → their first
    password, shown once."""
    s = get_session()
    if request.method == "POST":
        if not ActionForm().validate_on_submit():
            abort(400)
        email = (request.form.get("email") or "").strip().lower()
        role = request.form.get("role", "staff")
        if not EMAIL.fullmatch(email) or len(email) > 254 or role not in ROLES:
            flash("Give an e-mail address and a role (owner or staff).", "error")
        elif s.scalar(select(User.id).where(User.email == email)):
            flash(f"{email} already has an account.", "error")
        else:
            password = new_secret(12)
            user = User(email=email, password_hash=hash_password(password), role=role)
            s.add(user)
            s.flush()
            _set_stores(s, user, request.form.getlist("stores"))
            s.commit()
            return render_template("user_password.html", user=user, password=password, new=True)
    rows = s.scalars(select(User).order_by(User.role, User.email)).all()
    stores = s.execute(select(Store.id, Store.name).order_by(Store.name)).all()
    scope: dict[int, set[str]] = {}
    for uid, sid in s.execute(select(UserStore.user_id, UserStore.store_id)):
        scope.setdefault(uid, set()).add(sid)
    return render_template("users.html", users=rows, stores=stores, scope=scope, action=ActionForm())


@bp.route("/users/<int:user_id>/role", methods=["POST"])
@owner_required
def user_role(user_id: int):
    """POST /users/<id>/role: ``role`` and, for staff, ``stores``."""
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
    return redirect(url_for("auth.users"))


@bp.route("/users/<int:user_id>/password", methods=["POST"])
@owner_required
def user_password(user_id: int):
    """POST /users/<id>/password: reset the password (after a confirmation) → the new one, shown once; the user's
    open sessions end."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    user = s.get(User, user_id) or abort(404)
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
