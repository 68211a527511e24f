"""Customers: detail (consent, visits, purchases, current picks and why), consent, erase (confirmed by typing
ERASE); the list is :mod:`dangol_cloud.web.customer_list`, linking is :mod:`dangol_cloud.web.customer_link`. Staff
see and act on the customers of their stores only (:mod:`dangol_cloud.web.scope`)."""

from __future__ import annotations

import logging

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import delete, func, select
from sqlalchemy.exc import OperationalError

from dangol_cloud.app import get_db, get_session, get_settings
from dangol_cloud.background import WELCOME_RETRY_SECONDS, welcomer
from dangol_cloud.erasure import audit, erase_customer
from dangol_cloud.feedback import OPINIONS, disliked_items, record_opinions
from dangol_cloud.menu_mapping import menu_item_map, on_menu, ruled_out, translate_picks
from dangol_cloud.models import (CatalogueItem, Customer, CustomerOrigin, Device, Erasure, Menu, MenuDayparts,
                                 PickOpinion, ProductMapping, Purchase, Visit, utcnow)
from dangol_cloud.mqtt import MqttError
from dangol_cloud.publishing import republish_erasures
from dangol_cloud.sale_locks import busy_message
from dangol_cloud.services import record_consent, welcome
from dangol_cloud.store_prices import shared_currency
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.confirm import confirmation_page
from dangol_cloud.web.forms import ActionForm, ConsentForm
from dangol_cloud.web.scope import clauses, customer_visible, store_filter

log = logging.getLogger(__name__)
bp = Blueprint("customers", __name__, url_prefix="/customers")
#: Why consent cannot be recorded again from the dashboard once withdrawn (the 409 page and the consent card).
WITHDRAWN = ("This customer withdrew consent: their name and consent record were deleted and every device is "
             "deleting their face templates, so consent cannot be recorded again here. To be recognised again "
             "they enrol anew at the door, which records a new consent.")


def at_a_door(customer: Customer) -> bool:
    """True if the customer was enrolled at a door (``source == "edge"``: a device holds their face), so consent
    means recognition; a history customer (import, POS, dashboard) with consent recorded on the dashboard has no
    face on any device until they sign up at a door (and that sign-up is linked to them)."""
    return customer.source == "edge"


def origin_stores(s, ids: list[str]) -> dict[str, str]:
    """``{customer id: the store they are registered at}`` of ``ids`` that have one: the store whose door enrolled
    them, or the store an owner assigned (:class:`~dangol_cloud.models_ops.CustomerOrigin`; a removed store leaves
    none). Their consent is read on that store's clock, and their amounts in its currency when they bought nowhere."""
    if not ids:
        return {}
    return dict(s.execute(select(CustomerOrigin.customer_id, CustomerOrigin.store_id)
                          .where(CustomerOrigin.customer_id.in_(ids), CustomerOrigin.store_id.is_not(None))).all())


def _visible_customer(s, customer_id: str) -> Customer:
    """The customer, or 404 if unknown or not of the staff user's stores (the same answer: no probing)."""
    customer = s.get(Customer, customer_id)
    if customer is None or not customer_visible(s, customer.id):
        abort(404)
    return customer


@bp.route("/<customer_id>")
@login_required
def show(customer_id: str):
    """GET /customers/<id>: consent record, current picks and why, the menu items they do not want (every menu item
    their dislikes rule out under the current mapping, also through a product the store API named; a dislike takes
    the item off the picks; "Forget" undoes it), visits, purchases. A staff user sees the door arrivals,
    purchases, amounts and shop visits at their own stores only (owners: every store).
    Amounts and prices are in the currency of the stores she bought at when they share one, else — she bought
    nowhere — of the store she is registered at (:func:`origin_stores`), else ``CURRENCY``; her consent and the date
    she was added read on that registered store's clock (none: the chain's)."""
    s = get_session()
    customer = _visible_customer(s, customer_id)
    from dangol_cloud.web.customer_link import daypart_picks

    menu = s.get(Menu, customer.id)
    disliked = disliked_items(s, [customer.id]).get(customer.id, set())
    banned = ruled_out(disliked, menu_item_map(s, disliked))  # never shown at the door (publishing filters them)
    picks, off_menu = _as_shown(s, menu.picks, banned) if menu is not None else ([], 0)
    dayparts = [(name, _as_shown(s, slot, banned)[0]) for name, slot in daypart_picks(s, customer.id)]
    arrived = [Visit.customer_id == customer.id, *clauses(store_filter(Visit.store_id))]  # staff: their stores
    bought = [Purchase.customer_id == customer.id, *clauses(store_filter(Purchase.store_id))]
    visits = s.execute(select(Visit).where(*arrived).order_by(Visit.ts.desc()).limit(20)).scalars().all()
    purchases = s.execute(select(Purchase, CatalogueItem.name).join(CatalogueItem, CatalogueItem.id == Purchase.item_id)
                          .where(*bought).order_by(Purchase.ts.desc()).limit(25)).all()
    amounts = s.scalars(select(Purchase.amount).where(*bought)).all()  # encrypted: sum here
    totals = (len(amounts), sum(a for a in amounts if a is not None) if any(a is not None for a in amounts) else None)
    baskets = s.scalar(select(func.count(func.distinct(Purchase.ts))).where(*bought))
    # the first and last purchase rows: the header dates each on its own store's clock, as the tables do
    first, last = (s.scalars(select(Purchase).where(*bought).order_by(*order).limit(1)).first()
                   for order in ((Purchase.ts, Purchase.id), (Purchase.ts.desc(), Purchase.id.desc())))
    arrivals = s.scalar(select(func.count()).select_from(Visit).where(*arrived))
    home = origin_stores(s, [customer.id]).get(customer.id)  # the store she is registered at, if any
    stores = s.scalars(select(Purchase.store_id).where(*bought).distinct()).all() or ([home] if home else [])
    currency = shared_currency(s, stores, get_settings().currency)  # where she bought, else where she is registered
    at = home if home is not None else (stores[0] if len(stores) == 1 else None)  # the door her picks are shown at
    form = ConsentForm(display_name=customer.display_name, recorded_by=current_user.email,
                       text_version=get_settings().consent_text_version)
    return render_template("customer.html", customer=customer, menu=menu, picks=picks, dayparts=dayparts, visits=visits,
                           purchases=purchases, totals=totals, form=form, action=ActionForm(), currency=currency,
                           pick_prices=_pick_prices(s, [i for i, _ in picks if i is not None], at),
                           at_door=at_a_door(customer), home=home,
                           first_purchase=first, last_purchase=last, baskets=baskets, arrivals=arrivals,
                           off_menu=off_menu, opinions=dict(s.execute(
                               select(PickOpinion.item_id, PickOpinion.opinion)
                               .where(PickOpinion.customer_id == customer.id)).all()),
                           disliked=s.scalars(select(CatalogueItem).where(CatalogueItem.id.in_(banned), on_menu())
                                              .order_by(CatalogueItem.name)).all())  # what the door never shows


def _pick_prices(s, items: list[CatalogueItem], store_id: str | None) -> dict[str, tuple[float, str] | None]:
    """``{item id: (price, currency) or None}``: each pick's price as the door of ``store_id`` shows it (its own price
    there, else the catalogue price when it sells in the catalogue's currency, else none:
    :func:`dangol_cloud.store_prices.price_at_store`); without a store (she is registered nowhere and bought at several
    or none), the catalogue price in the catalogue's currency. Never a number of one currency shown in another."""
    from dangol_cloud.store_prices import price_at_store, prices_by_item, read_catalogue_currency, store_currencies

    default = get_settings().currency
    stores = store_currencies(s, default)
    menu_currency = read_catalogue_currency(s, default)  # a GET: read, never stored here
    currency = next((code for sid, _name, code in stores if sid == store_id), None)
    if store_id is None or currency is None:
        return {i.id: (i.price, menu_currency) if i.price is not None else None for i in items}
    own = prices_by_item(s, [i.id for i in items])
    out: dict[str, tuple[float, str] | None] = {}
    for i in items:
        price = price_at_store(i.price, own.get(i.id, {}).get(store_id), currency, menu_currency)
        out[i.id] = (price, currency) if price is not None else None
    return out


def _as_shown(s, raw: list[dict], banned: set[str] = frozenset()) -> tuple[list[tuple], int]:
    """Picks as the door shows them: POS products translated to the menu items they are sold as, without the
    menu items in ``banned`` (those the customer's dislikes rule out).
    Returns ``([(CatalogueItem or None, pick), ...], number of picks that are products not on the menu)``."""
    mapping = dict(s.execute(select(ProductMapping.product_id, ProductMapping.menu_item_id).where(
        ProductMapping.product_id.in_([p["item_id"] for p in raw]))).all())
    shown = [p for p in translate_picks(raw, mapping) if p["item_id"] not in banned]
    off_menu = sum(1 for p in raw if p["item_id"] in mapping and mapping[p["item_id"]] is None)
    items = {i.id: i for i in s.scalars(select(CatalogueItem)
                                        .where(CatalogueItem.id.in_([p["item_id"] for p in shown])))}
    return [(items.get(p["item_id"]), p) for p in shown], off_menu


@bp.route("/<customer_id>/opinion", methods=["POST"])
@login_required
def opinion(customer_id: str):
    """POST /customers/<id>/opinion: ``item`` (a menu item) and ``opinion`` (like, dislike, none), recorded for that
    item only (:func:`~dangol_cloud.feedback.record_opinions`: a dislike covers the POS products sold as it now or
    later, through the current mapping; like and none clear every dislike that rules the item out, also one the
    store API recorded on one of its products). A disliked item is taken off the customer's stored menu at
    once and never offered to them again; with a broker the app's republisher
    (:class:`~dangol_cloud.background.MenuRepublisher`) sends the new menu to the stores within moments, after
    the response (a broker that does not answer never holds up the request). A customer whose menu is never
    published (no consent record, or not active: :func:`~dangol_cloud.publishing.menu_messages`) is told the next
    training uses it, and nothing is sent."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    customer = _visible_customer(s, customer_id)
    item = s.get(CatalogueItem, request.form.get("item") or "") or abort(404)
    value = request.form.get("opinion", "")
    if value not in OPINIONS:
        abort(400)
    record_opinions(s, customer.id, [item.id], value, by=current_user.email)
    s.commit()
    said = {"like": "likes", "dislike": "does not want", "none": "has no recorded opinion on"}[value]
    name = customer.display_name or "this customer"
    if value != "dislike":
        flash(f"Noted: {name} {said} {item.name}. The next training uses it.", "success")
        return redirect(url_for("customers.show", customer_id=customer.id))
    if customer.consent_at is None or customer.status != "active":  # no menu of theirs goes to the stores
        why = "" if customer.consent_at is not None else " (no menu is sent to the stores without a consent record)"
        flash(f"Noted: {name} {said} {item.name}. The next training uses it{why}.", "success")
        return redirect(url_for("customers.show", customer_id=customer.id))
    if get_settings().mqtt_url:
        current_app.extensions["dangol_republisher"].submit(customer.id)
        flash(f"Noted: {name} {said} {item.name}. It is off their menu now; the stores get the new menu within "
              "moments.", "success")
    else:
        flash(f"Noted: {name} {said} {item.name}. It is off their menu now; the stores get it with the next "
              "publish.", "success")
    return redirect(url_for("customers.show", customer_id=customer.id))


@bp.route("/<customer_id>/name", methods=["POST"])
@login_required
def rename(customer_id: str):
    """POST /customers/<id>/name: change the name shown at the door (``display_name``, 1–120 characters)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    customer = _visible_customer(s, customer_id)
    name = (request.form.get("display_name") or "").strip()
    if not 1 <= len(name) <= 120:
        flash("The name needs 1 to 120 characters.", "error")
        return redirect(url_for("customers.show", customer_id=customer.id))
    customer.display_name = name
    s.commit()
    flash(f"Name changed to {name}. The door screen shows it from the next publish of the menus.", "success")
    return redirect(url_for("customers.show", customer_id=customer.id))


@bp.route("/<customer_id>/withdraw", methods=["POST"])
@login_required
def withdraw(customer_id: str):
    """POST /customers/<id>/withdraw: the customer withdraws consent (after a confirmation page). Recognition
    stops: the consent record, name and picks are deleted and every device is told, like an erasure, to delete
    the face templates (re-sent until each confirms). Purchase history stays, without a name."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    customer = _visible_customer(s, customer_id)
    if not customer.has_consent:
        abort(409)
    label = customer.display_name or customer.id[:8]
    page = confirmation_page(title=f"Withdraw {label}'s consent?", button="Withdraw consent",
                             detail="Recognition stops: the name, consent record and picks are deleted now, and every "
                                    "store's device is told to delete the face templates. Purchase history stays, "
                                    "without a name. To be recognised again they enrol anew at the door.",
                             cancel_url=url_for("customers.show", customer_id=customer.id))
    if page is not None:
        return page
    try:
        withdraw_consent(s, customer, actor=current_user.email)
    except LookupError:  # withdrawn (or erased) by another request meanwhile
        abort(409)
    s.commit()
    settings = get_settings()
    if settings.mqtt_url:
        try:
            republish_erasures(get_db(), settings)
        except MqttError as exc:
            log.error("template deletion for %s not yet sent: %s", customer_id, exc)
            flash(f"Consent withdrawn; the stores will be told as soon as the broker answers ({exc}).", "warning")
            return redirect(url_for("customers.show", customer_id=customer_id))
    flash("Consent withdrawn. Every device is told to delete the face templates; each confirms (Privacy page).",
          "success")
    return redirect(url_for("customers.show", customer_id=customer_id))


def withdraw_consent(s, customer: Customer, *, actor: str) -> Erasure:
    """End a customer's consent: clear name and consent record, delete the menu and its day-part picks, and queue
    a template deletion for every device through the erasure machinery (:class:`Erasure`,
    :func:`republish_erasures`); audited. The caller commits.

    The customer row is first locked ``FOR UPDATE`` (until the commit) and read again, as
    :func:`~dangol_cloud.erasure.erase_customer` does: an arrival reading it ``FOR SHARE``
    (:mod:`dangol_cloud.device_events`) either committed before (a visit of the consenting customer) or waits for
    this commit and finds the erasure (stored scrubbed, a visit of nobody). SQLite ignores the clause.

    Returns:
        The new :class:`Erasure` (flushed).

    Raises:
        LookupError: the customer no longer exists or, read again, has no consent record (withdrawn meanwhile).
    """
    customer_id = customer.id
    customer = s.get(Customer, customer_id, with_for_update=True, populate_existing=True)
    if customer is None or not customer.has_consent:
        raise LookupError(f"customer {customer_id}: no consent to withdraw (erased or withdrawn meanwhile)")
    targets = list(s.scalars(select(Device.id).order_by(Device.id)))
    now = utcnow()
    erasure = Erasure(customer_id=customer.id, requested_by=actor[:254], requested_at=now, targets=targets,
                      confirmed_by=[], completed_at=None if targets else now)
    s.add(erasure)
    s.flush()
    audit(s, actor, "consent-withdrawn", customer_id=customer.id, erasure_id=erasure.id,
          detail=f"consent of {customer.consent_at:%Y-%m-%d}, text version {customer.consent_text_version}; "
                 f"templates to delete on {len(targets)} device(s)")
    s.execute(delete(MenuDayparts).where(MenuDayparts.customer_id == customer.id))  # the picks per time of day
    s.execute(delete(Menu).where(Menu.customer_id == customer.id))
    customer.display_name = customer.consent_by = customer.consent_at = customer.consent_text_version = None
    customer.status = "withdrawn"  # neither active at the door nor pending: a device cannot re-activate it
    return erasure


@bp.route("/<customer_id>/consent", methods=["POST"])
@login_required
def consent(customer_id: str):
    """POST /customers/<id>/consent: record consent and a name, activate, send the first menu — through
    :func:`~dangol_cloud.services.record_consent` then :func:`~dangol_cloud.services.welcome`, as the MQTT
    listener does for a device's enrolment event (the signed-in user is the audit's actor). If that first menu
    cannot be written or sent now (broker down, model unreadable, database busy, any error: the consent is
    committed by then, so the page says so and names the cause without broker addresses) the app's welcomer
    (:func:`~dangol_cloud.background.welcomer`) retries it until it reaches the stores, and the flash says so.
    409 for a customer who withdrew consent: their templates are being deleted, so only a new enrolment at the
    door (a new customer) can make them recognised again, as devices are refused in
    :mod:`dangol_cloud.device_trust`. For a customer not enrolled at any door (:func:`at_a_door`) the page says so
    instead of "recognised": consent alone puts no face on a device."""
    s = get_session()
    customer = _visible_customer(s, customer_id)
    if customer.status == "withdrawn":
        return render_template("error.html", code=409, title="Consent was withdrawn", detail=WITHDRAWN), 409
    form = ConsentForm()
    if not form.validate_on_submit():
        flash("Consent needs a name, who recorded it and the text version.", "error")
        return redirect(url_for("customers.show", customer_id=customer.id))
    record_consent(s, customer, display_name=" ".join(form.display_name.data.split()),
                   recorded_by=form.recorded_by.data.strip(), text_version=form.text_version.data.strip(),
                   recorded_at=utcnow(), actor=current_user.email)
    s.commit()
    if at_a_door(customer):
        flash(f"Consent recorded; {customer.display_name} is now active.", "success")
    else:
        flash(f"Consent recorded for {customer.display_name}, who is not enrolled at any door yet: the door "
              "recognises them once they sign up there. Then link that sign-up to this history (Link… on the new "
              "customer's page); it keeps the door's consent and face.", "success")
    try:
        if welcome(get_db(), get_settings(), [customer.id]):
            flash(f"{customer.display_name}'s picks were sent to the stores.", "success")
    except Exception as exc:  # consent is committed: whatever failed, the welcomer retries the first menu
        if isinstance(exc, MqttError):
            why = "the stores could not be reached"
        elif busy_message(exc) is not None:
            why = "the database was busy"
        elif isinstance(exc, (OSError, ValueError)):
            why = "the newest model could not be loaded"
        else:
            why = "writing them failed"
        log.error("menu for newly active customer %s not published: %s; retrying every %.0f s", customer.id, exc,
                  WELCOME_RETRY_SECONDS, exc_info=not isinstance(exc, (MqttError, OSError, ValueError,
                                                                         OperationalError)))
        welcomer(current_app).submit(customer.id)  # written and sent by the app's welcomer once it succeeds
        flash(f"{customer.display_name}'s picks are not sent yet ({why}). They are tried again every "
              f"{WELCOME_RETRY_SECONDS:.0f} s until they reach the stores (the owner's home page shows them while "
              "they wait).", "warning")
    return redirect(url_for("customers.show", customer_id=customer.id))


@bp.route("/<customer_id>/erase", methods=["POST"])
@owner_required
def erase(customer_id: str):
    """POST /customers/<id>/erase: without ``confirm=ERASE`` the confirmation page; with it, delete the
    customer's personal data, purchases and menu now (visits stay, anonymous), audit it, and tell every
    device (re-sent until each confirms)."""
    settings = get_settings()
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    customer = s.get(Customer, customer_id) or abort(404)
    label = customer.display_name or customer.external_ref or customer.id[:8]
    page = confirmation_page(title=f"Erase {label}?", button="Erase for good",
                             detail="Their name, consent record, purchases and picks are deleted now and cannot be "
                                    "restored; visits stay as anonymous counts, and every store's device is told to "
                                    "delete the face templates.",
                             cancel_url=url_for("customers.show", customer_id=customer.id), phrase="ERASE")
    if page is not None:
        return page
    s.close()  # end this read (and its SQLite lock) before the erasure's own transaction writes
    with get_db().transaction() as s:
        customer = s.get(Customer, customer_id) or abort(404)
        name = customer.display_name or customer.external_ref or customer.id[:8]
        erase_customer(s, customer_id, actor=current_user.email)
    if settings.mqtt_url:
        try:
            republish_erasures(get_db(), settings)
            flash(f"Erased {name}. The stores were told to delete their templates; each device confirms.", "success")
        except MqttError as exc:
            log.error("erasure of %s not yet sent to the stores: %s", customer_id, exc)
            flash(f"Erased {name} here; the stores will be told as soon as the broker answers ({exc}).", "warning")
    else:
        flash(f"Erased {name}. No broker configured: the stores will be told on the next publish.", "warning")
    return redirect(url_for("customers.index"))


from dangol_cloud.web import customer_link as _link  # noqa: E402,F401 - link door enrolment ↔ loyalty, on this bp
from dangol_cloud.web import customer_list as _list  # noqa: E402,F401 - the list (GET /customers/), on this bp
