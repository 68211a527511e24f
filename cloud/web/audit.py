"""Privacy page (owners): the audit log (erasures with each device's confirmation, consent records, key
rotations, retention runs), the erasures still waiting for a device, and the erased loyalty numbers kept out of
imports and the POS API, with the form that allows one again: its sales from then on are recorded, its older ones
stay out (:mod:`dangol_cloud.erased_refs`)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from dangol_cloud.app import get_session, get_settings, store_clock
from dangol_cloud.erased_refs import allowed_again_count, erased_ref_count, find_erased_ref, lift_erased_ref
from dangol_cloud.erasure import pending_erasures, unconfirmed_devices
from dangol_cloud.models import AuditEntry
from dangol_cloud.sale_rules import REF_MAX
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.forms import ActionForm
from dangol_cloud.web.params import page_arg

bp = Blueprint("audit", __name__, url_prefix="/privacy")
PAGE = 100


@bp.route("/")
@owner_required
def index():
    """GET /privacy/?page=N: pending erasures and the audit log, newest first (owners only; 403 for staff)."""
    s = get_session()
    page = page_arg()
    total = s.scalar(select(func.count()).select_from(AuditEntry))
    entries = s.scalars(select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
                        .limit(PAGE).offset((page - 1) * PAGE)).all()
    pending = [(e, unconfirmed_devices(s, e)) for e in pending_erasures(s)]
    return render_template("audit.html", entries=entries, pending=pending, page=page, total=total,
                           pages=max((total + PAGE - 1) // PAGE, 1), retention_days=get_settings().retention_days,
                           erased_refs=erased_ref_count(s), allowed_again=allowed_again_count(s),
                           action=ActionForm())


@bp.post("/erased-refs/lift")
@owner_required
def lift_erased():
    """POST /privacy/erased-refs/lift (owners; 403 for staff): ``ref`` = an erased customer's loyalty number, whose
    sales from now on are imported and recorded (the customer re-joined; as a new customer); its sales from before
    stay out, whatever export is uploaded later. A number allowed again already is left as it is. The number is
    never echoed back (it is not kept in the flash cookie) nor written to the audit log."""
    if not ActionForm().validate_on_submit():
        abort(400)
    ref = (request.form.get("ref") or "").strip()
    if not ref or len(ref) > REF_MAX:
        flash(f"Type the loyalty number to allow again (1 to {REF_MAX} characters); nothing changed.", "error")
        return redirect(url_for("audit.index"))
    s = get_session()
    found = find_erased_ref(s, ref)
    if found is None:
        flash("No erased customer has that loyalty number; nothing changed.", "error")
        return redirect(url_for("audit.index"))
    if found.allowed_from is not None:
        since = found.allowed_from.astimezone(store_clock().default)
        flash(f"That loyalty number was allowed again on {since:%Y-%m-%d %H:%M}: its sales from then on are "
              "recorded, its older ones stay out; nothing changed.", "success")
        return redirect(url_for("audit.index"))
    lift_erased_ref(s, ref, actor=current_user.email)
    s.commit()
    flash("That loyalty number may be imported again: its sales from now on are recorded (as a new customer); its "
          "sales from before stay out.", "success")
    return redirect(url_for("audit.index"))
