"""Privacy page (owners): the audit log (erasures with each device's confirmation, consent records, key
rotations, retention runs) and the erasures still waiting for a device."""

from __future__ import annotations

from flask import Blueprint, render_template
from sqlalchemy import func, select

from dangol_cloud.app import get_session, get_settings
from dangol_cloud.erasure import pending_erasures, unconfirmed_devices
from dangol_cloud.models import AuditEntry
from dangol_cloud.web.auth import owner_required
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
                           pages=max((total + PAGE - 1) // PAGE, 1), retention_days=get_settings().retention_days)
