"""Overview page: today's numbers, devices, latest model and catalogue version."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import login_required
from sqlalchemy import func, select

from dangol_cloud.app import get_db, get_session, get_settings, store_clock
from dangol_cloud.menu_mapping import on_menu
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.forms import ActionForm
from dangol_cloud.web.scope import clauses, customer_filter, store_filter
from dangol_cloud.models import (CatalogueItem, CatalogueVersion, Customer, Device, Erasure, ModelVersion, Purchase,
                                 Visit)

bp = Blueprint("home", __name__)


@bp.route("/")
@login_required
def index():
    """GET /: today's numbers, recent arrivals, devices, model and catalogue state. Staff see their stores'
    arrivals, purchases, customers and devices only (:mod:`dangol_cloud.web.scope`); owners the whole chain.
    "Today" starts at midnight in the zone the (staff user's) stores share, else ``TIMEZONE``; each arrival is
    shown on its store's clock (:class:`~dangol_cloud.app.StoreClock`).
    The menu, model and catalogue are the chain's; "items on the menu" counts the non-retired menu items (as the
    catalogue page lists them), not the POS products that are not on the menu."""
    s = get_session()
    zone = store_clock().default  # the stores' own zone when they (the staff user's stores) share one
    today = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    visits = select(func.count()).select_from(Visit).where(*clauses(store_filter(Visit.store_id)))
    purchases = select(func.count()).select_from(Purchase).where(*clauses(store_filter(Purchase.store_id)))
    customers = select(func.count()).select_from(Customer).where(*clauses(customer_filter(s)))
    stats = {
        "visits_today": s.scalar(visits.where(Visit.ts >= today)),
        "recognised_today": s.scalar(visits.where(Visit.ts >= today, Visit.customer_id.is_not(None))),
        "enrolled": s.scalar(customers.where(Customer.consent_at.is_not(None))),
        "pending": s.scalar(customers.where(Customer.status == "pending")),
        "customers": s.scalar(customers),
        "purchases_7d": s.scalar(purchases.where(Purchase.ts >= today - timedelta(days=7))),
        "purchases": s.scalar(purchases),
        "menu_items": s.scalar(select(func.count()).select_from(CatalogueItem)  # not the imported POS products
                               .where(CatalogueItem.retired.is_(False), on_menu())),
    }
    device_scope = store_filter(Device.store_id)  # staff: their stores' devices and arrivals only
    visit_scope = store_filter(Visit.store_id)
    devices = s.scalars(select(Device).where(*([] if device_scope is None else [device_scope]))
                        .order_by(Device.name)).all()
    model = s.scalar(select(ModelVersion).order_by(ModelVersion.created_at.desc()).limit(1))
    version = s.scalar(select(CatalogueVersion).order_by(CatalogueVersion.version.desc()).limit(1))
    erasures = {
        "unsent": s.scalar(select(func.count()).select_from(Erasure).where(Erasure.completed_at.is_(None))),
        "sent": s.scalar(select(func.count()).select_from(Erasure).where(Erasure.completed_at.is_not(None))),
    }
    recent = s.execute(select(Visit, Customer.display_name).outerjoin(Customer, Customer.id == Visit.customer_id)
                       .where(*([] if visit_scope is None else [visit_scope])).order_by(Visit.ts.desc()).limit(8)).all()
    from dangol_cloud.web.devices import broker_check, device_presence

    return render_template("home.html", stats=stats, devices=devices, model=model, version=version, recent=recent,
                           erasures=erasures, job=current_app.extensions["dangol_training"], action=ActionForm(),
                           presence=device_presence(s, devices), broker=broker_check(get_settings().mqtt_url))


@bp.route("/train", methods=["POST"])
@owner_required
def train_now():
    """POST /train: retrain the recommender in the background (one run at a time), then publish menus."""
    if not ActionForm().validate_on_submit():
        abort(400)
    job = current_app.extensions["dangol_training"]
    if not job.start(get_db(), get_settings()):
        flash("Training is already running.", "warning")
    return redirect(url_for("home.train_job"))


@bp.route("/train/job")
@owner_required
def train_job():
    """GET /train/job: the training run's progress bar (steps, elapsed, ETA from the previous run), then its
    result (model, customers, items, purchases, menus, messages published) or its error. Owners only, as is
    "Retrain now": the figures are the whole chain's (staff see their stores' numbers on Today, 403 here)."""
    return render_template("train_job.html", job=current_app.extensions["dangol_training"])


from dangol_cloud.web import errors as _errors  # noqa: E402,F401 - error pages in this layout (app-wide)
