"""Purchases: recent list and CSV upload with a row-level validation report."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from flask import Blueprint, render_template, request
from flask_login import login_required
from sqlalchemy import func, select

from dangol_cloud.app import get_db, get_session, get_settings
from dangol_cloud.importers import ImportFormatError, parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, Customer, Purchase
from dangol_cloud.web.forms import UploadForm
from dangol_cloud.web.params import page_arg
from dangol_cloud.web.scope import store_filter

log = logging.getLogger(__name__)
bp = Blueprint("purchases", __name__, url_prefix="/purchases")
PAGE = 25


def _recent(page: int):
    s = get_session()
    scope = store_filter(Purchase.store_id)  # staff: their stores' sales only
    where = [] if scope is None else [scope]
    total = s.scalar(select(func.count()).select_from(Purchase).where(*where))
    rows = s.execute(select(Purchase, CatalogueItem.name, Customer.display_name, Customer.external_ref)
                     .join(CatalogueItem, CatalogueItem.id == Purchase.item_id)
                     .join(Customer, Customer.id == Purchase.customer_id).where(*where)
                     .order_by(Purchase.ts.desc(), Purchase.id.desc()).limit(PAGE).offset((page - 1) * PAGE)).all()
    return rows, total


@bp.route("/", methods=["GET", "POST"])
@login_required
def index():
    """GET /purchases/: recent purchases; POST: CSV upload answered with a row-level report (422 if the
    file cannot be read at all)."""
    form = UploadForm()
    report = None
    error = None
    status = 200
    if form.validate_on_submit():
        upload = form.file.data
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(upload.filename or "upload.csv").name
            upload.save(path)
            try:
                with get_db().transaction() as s:
                    report = import_rows(s, parse_purchases(path, form.format.data), source=form.format.data,
                                         key_prefix=form.format.data, tz=get_settings().timezone,
                                         customer_source="csv")
                    report.source = path.name
            except ImportFormatError as exc:
                error = str(exc).replace(str(path.parent) + "/", "")
                log.warning("CSV upload refused: %s", error)
                status = 422
        if report is not None and report.errors:
            log.info("CSV upload %s: %d bad rows skipped", report.source, len(report.errors))
    elif request.method == "POST":
        status = 400
    page = page_arg()
    rows, total = _recent(page)
    return render_template("purchases.html", form=form, report=report, error=error, rows=rows, total=total,
                           page=page, pages=max((total + PAGE - 1) // PAGE, 1)), status
