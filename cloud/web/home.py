"""Overview page: today's numbers (each store's own day), recent arrivals and devices (named with their store),
latest model and catalogue version; for owners, warnings about background work that is failing (retention sweep,
scheduled training, retried publishes: :func:`background_warnings`)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from sqlalchemy import and_, false, func, or_, select
from sqlalchemy.orm import contains_eager
from sqlalchemy.sql.elements import ColumnElement

from dangol_cloud.analytics import LocalDays
from dangol_cloud.app import get_db, get_session, get_settings, store_clock
from dangol_cloud.menu_mapping import on_menu
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.forms import ActionForm
from dangol_cloud.web.scope import clauses, customer_filter, store_filter, store_scope
from dangol_cloud.models import (AuditEntry, CatalogueItem, CatalogueVersion, Customer, Device, Erasure, ModelVersion,
                                 Purchase, Store, Visit)

bp = Blueprint("home", __name__)
#: The retention sweep runs every 24 h; its last success older than this is a warning (an hour's slack for the run).
RETENTION_LATE = timedelta(hours=25)


@bp.route("/")
@login_required
def index():
    """GET /: today's numbers, recent arrivals (with their store), devices (with their store), model and
    catalogue state. Staff see their stores' arrivals, purchases, customers and devices only
    (:mod:`dangol_cloud.web.scope`); owners the whole chain.
    "Today" is each store's own: its arrivals count from midnight on its clock, and "the last 7 days" are its last
    7 local days before today and today (:func:`_today`); each arrival is shown on its store's clock
    (:class:`~dangol_cloud.app.StoreClock`), newest first (by the instant, whatever the store's zone).
    The menu, model and catalogue are the chain's; "items on the menu" counts the non-retired menu items (as the
    catalogue page lists them), not the POS products that are not on the menu."""
    s = get_session()
    visits = select(func.count()).select_from(Visit).where(*clauses(store_filter(Visit.store_id)))
    purchases = select(func.count()).select_from(Purchase).where(*clauses(store_filter(Purchase.store_id)))
    customers = select(func.count()).select_from(Customer).where(*clauses(customer_filter(s)))
    stats = {
        "visits_today": s.scalar(visits.where(_today(Visit.ts, Visit.store_id))),
        "recognised_today": s.scalar(visits.where(_today(Visit.ts, Visit.store_id), Visit.customer_id.is_not(None))),
        "enrolled": s.scalar(customers.where(Customer.consent_at.is_not(None))),
        "pending": s.scalar(customers.where(Customer.status == "pending")),
        "customers": s.scalar(customers),
        "purchases_7d": s.scalar(purchases.where(_today(Purchase.ts, Purchase.store_id, days_back=7))),
        "purchases": s.scalar(purchases),
        "menu_items": s.scalar(select(func.count()).select_from(CatalogueItem)  # not the imported POS products
                               .where(CatalogueItem.retired.is_(False), on_menu())),
    }
    device_scope = store_filter(Device.store_id)  # staff: their stores' devices and arrivals only
    visit_scope = store_filter(Visit.store_id)
    devices = s.scalars(select(Device).join(Store, Store.id == Device.store_id)
                        .options(contains_eager(Device.store))  # named with their store
                        .where(*([] if device_scope is None else [device_scope]))
                        .order_by(Device.name, Store.name, Device.id)).all()
    model = s.scalar(select(ModelVersion).order_by(ModelVersion.created_at.desc()).limit(1))
    version = s.scalar(select(CatalogueVersion).order_by(CatalogueVersion.version.desc()).limit(1))
    erasures = {
        "unsent": s.scalar(select(func.count()).select_from(Erasure).where(Erasure.completed_at.is_(None))),
        "sent": s.scalar(select(func.count()).select_from(Erasure).where(Erasure.completed_at.is_not(None))),
    }
    recent = s.execute(select(Visit, Customer.display_name, Store.name)
                       .outerjoin(Customer, Customer.id == Visit.customer_id)
                       .outerjoin(Store, Store.id == Visit.store_id)  # the store column
                       .where(*([] if visit_scope is None else [visit_scope]))
                       .order_by(Visit.ts.desc(), Visit.id.desc()).limit(8)).all()
    from dangol_cloud.web.devices import broker_check, device_presence

    return render_template("home.html", stats=stats, devices=devices, model=model, version=version, recent=recent,
                           erasures=erasures, job=current_app.extensions["dangol_training"], action=ActionForm(),
                           presence=device_presence(s, devices), broker=broker_check(get_settings().mqtt_url),
                           background=background_warnings(s) if current_user.is_owner else [])


def _last(s, action: str) -> AuditEntry | None:
    """The newest audit entry of ``action`` (one probe of the ``(action, at)`` index, migration 0017)."""
    return s.scalar(select(AuditEntry).where(AuditEntry.action == action)
                    .order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(1))


def background_warnings(s, now: datetime | None = None) -> list[dict]:
    """What the owner must know about background work, as ``[{"key", "title", "ok_at", "failed_at", "error",
    "text"}]`` (empty when all is well; ``ok_at``/``failed_at`` aware UTC or None):

    - ``retention``: the last retention sweep failed (an audit ``retention-failed`` newer than the last
      ``retention-run``), or its last success is older than :data:`RETENTION_LATE` (the daily sweep stopped);
    - ``training``: the last scheduled training failed (``training-failed``) and no training succeeded since,
      scheduled (``training-scheduled``) or by hand (``training-run``: Retrain now, ``dangol-cloud train``);
    - ``counters``: failure and drop counters of this process's background workers (the daily sweep's
      device-event pruning; the listener's welcomes, the menu republisher and the welcomer while customers still
      wait or some were dropped; erasure re-sends while erasures are unconfirmed), each with the customers still
      waiting.

    The runs are recorded by :mod:`dangol_cloud.background` (:func:`~dangol_cloud.background.record_run`)."""
    now = now or datetime.now(timezone.utc)
    out: list[dict] = []
    ok, failed = _last(s, "retention-run"), _last(s, "retention-failed")
    if (failed is not None and (ok is None or failed.at >= ok.at)) or (ok is not None and now - ok.at > RETENTION_LATE):
        late = failed is None or (ok is not None and ok.at > failed.at)
        out.append({"key": "retention", "title": "Retention sweep", "ok_at": ok and ok.at,
                    "failed_at": None if late else failed.at, "error": None if late else failed.detail,
                    "text": "has not run for more than a day: customers past the retention period are not erased"
                    if late else "failed: customers past the retention period are not being erased"})
    failed = _last(s, "training-failed")
    if failed is not None:  # the newest success of any kind: scheduled, Retrain now or the CLI
        ok = max(filter(None, (_last(s, "training-scheduled"), _last(s, "training-run"))), default=None,
                 key=lambda e: (e.at, e.id))
        if ok is None or failed.at >= ok.at:
            out.append({"key": "training", "title": "Scheduled training", "ok_at": ok and ok.at,
                        "failed_at": failed.at, "error": failed.detail,
                        "text": "failed, and no training (scheduled, Retrain now or dangol-cloud train) succeeded "
                                "since: new picks did not reach the stores"})
    counters = _counters(current_app.extensions, unconfirmed_erasures=s.scalar(
        select(func.count()).select_from(Erasure).where(Erasure.completed_at.is_(None))))
    if counters:
        out.append({"key": "counters", "title": "Background work since the service started:", "ok_at": None,
                    "failed_at": None, "error": None, "text": "; ".join(counters)})
    return out


def _counters(ext: dict, unconfirmed_erasures: int) -> list[str]:
    """Lines about the background workers in ``app.extensions`` that still matter (:func:`background_warnings`):
    a retrying worker (republisher, welcomer, the listener's follow-ups) only while customers still wait for it or
    some were dropped — failures it has since recovered from are not a warning; the erasure re-sender's failures
    only while ``unconfirmed_erasures`` (erasures not yet confirmed by every device) is not zero."""
    lines = []
    sweep = ext.get("dangol_sweep_failures") or {}
    if sweep.get("device-events"):
        lines.append(f"pruning old device events failed {sweep['device-events']} time(s)")
    listener = ext.get("dangol_listener")
    follow_ups = getattr(listener, "follow_ups", None)
    for label, worker, first in (("menu re-publishes after a change", ext.get("dangol_republisher"), 0),
                                 ("first menus of new regulars (dashboard)", ext.get("dangol_welcomer"), 0),
                                 ("first menus of new regulars (door)", follow_ups,
                                  getattr(listener, "follow_up_failures", 0))):
        if worker is not None and (worker.waiting() or worker.dropped):  # failed, then succeeded: all is well
            lines.append(f"{label}: {first + worker.failures} failed attempt(s), {worker.waiting()} customer(s) "
                         f"still waiting" + (f", {worker.dropped} dropped" if worker.dropped else ""))
    resender = getattr(listener, "resender", None)
    if resender is not None and resender.failures and unconfirmed_erasures:  # all confirmed since: all is well
        lines.append(f"erasure re-sends to a device coming online failed {resender.failures} time(s) (re-sent on "
                     "the schedule)")
    return lines


def _today(ts: ColumnElement, store: ColumnElement, days_back: int = 0) -> ColumnElement[bool]:
    """SQL condition: the row's time ``ts`` falls on today — or on the ``days_back`` days before it — on the clock
    of its ``store``: each store's own zone, else ``TIMEZONE`` (:class:`~dangol_cloud.app.StoreClock`), so a chain
    across zones counts Seoul's arrivals from Seoul's midnight and Taipei's from Taipei's.

    The stores the user sees (staff: theirs; owners: every store, and store-less history on ``TIMEZONE``) are
    grouped by the date it is now on their clocks, and each group's days are matched as the analytics page matches
    local days (:meth:`dangol_cloud.analytics.LocalDays.where`), the groups combined with OR. No store: nothing."""
    clock = store_clock()
    scope = store_scope()
    by_day: dict[date, list[str]] = {}
    for store_id in sorted(clock.stores if scope is None else scope):
        by_day.setdefault(datetime.now(clock.of(store_id)).date(), []).append(store_id)
    terms = [and_(*LocalDays(day - timedelta(days=days_back), day, clock.fallback, clock.zones)
                  .where(ts, store, ids), store.in_(ids)) for day, ids in sorted(by_day.items())]
    if scope is None:  # an owner: the store-less (imported history) rows too, on TIMEZONE's day
        day = datetime.now(clock.fallback).date()
        terms.append(and_(*LocalDays(day - timedelta(days=days_back), day, clock.fallback, clock.zones)
                          .where(ts, store, []), store.is_(None)))
    return or_(*terms) if terms else false()


@bp.route("/train", methods=["POST"])
@owner_required
def train_now():
    """POST /train: retrain the recommender in the background (one run at a time), then publish menus."""
    if not ActionForm().validate_on_submit():
        abort(400)
    job = current_app.extensions["dangol_training"]
    if not job.start(get_db(), get_settings(), started_by=current_user.email):
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
