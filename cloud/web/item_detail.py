"""An item's detail page (issue 11): photo, price, category, the POS products sold as it, units sold per week
(its own sales and its products'), how many regulars have it among their current picks, how often door
screens showed it and how often it was bought after being shown, and its POS code (what a till sends as a sale's
``item``). Prices are shown in the stores' currency (:func:`~dangol_cloud.web.catalogue_form.menu_currency`). Route
on the catalogue blueprint.

A staff user's numbers count their own stores only (sales, arrivals, credits and the regulars of their stores), as
Analytics does (:func:`dangol_cloud.analytics.compute`); owners see every store. With ``TIMEZONE`` unset, a note names
the stores without a zone of their own, whose imported sales get no "bought after being shown" credit
(:func:`dangol_cloud.feedback.stores_without_clock`)."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from flask import abort, render_template
from flask_login import login_required
from sqlalchemy import func, select

from dangol_cloud.app import get_session, get_settings
from dangol_cloud.charts import bar_chart
from dangol_cloud.feedback import stores_without_clock
from dangol_cloud.menu_mapping import menu_item_map, translate_picks
from dangol_cloud.models import CatalogueItem, Customer, Menu, PickCredit, ProductMapping, Purchase, Visit
from dangol_cloud.web.catalogue import bp
from dangol_cloud.web.catalogue_form import menu_currency
from dangol_cloud.web.scope import customer_filter, store_filter, store_scope

WEEKS = 26


@bp.route("/<item_id>/about")
@login_required
def detail(item_id: str):
    """GET /catalogue/<id>/about: the item's detail page (a staff user's stores only); 404 if unknown."""
    s = get_session()
    item = s.get(CatalogueItem, item_id) or abort(404)
    products = s.execute(select(CatalogueItem.id, CatalogueItem.name).join(
        ProductMapping, ProductMapping.product_id == CatalogueItem.id)
        .where(ProductMapping.menu_item_id == item.id, CatalogueItem.id != item.id)
        .order_by(CatalogueItem.name)).all()
    ids = [item.id] + [pid for pid, _ in products]
    staff = store_filter(Purchase.store_id) is not None  # a staff user: their stores' rows only
    at_stores = [store_filter(Purchase.store_id)] if staff else []
    sold = [Purchase.item_id.in_(ids), *at_stores]
    arrived = [Visit.customer_id.is_not(None), *([store_filter(Visit.store_id)] if staff else [])]
    last = s.scalar(select(func.max(Purchase.ts)).where(*sold))
    zone = ZoneInfo(get_settings().timezone)
    weeks: list[float] = [0.0] * WEEKS
    labels: list[str] = []
    units = s.scalar(select(func.sum(Purchase.quantity)).where(*sold)) or 0.0
    if last is not None:
        end = last.astimezone(zone).date()
        start = end - timedelta(days=end.weekday()) - timedelta(weeks=WEEKS - 1)
        labels = [(start + timedelta(weeks=i)).strftime("%m-%d") for i in range(WEEKS)]
        for ts, q in s.execute(select(Purchase.ts, Purchase.quantity).where(
                *sold, Purchase.ts >= last - timedelta(weeks=WEEKS + 1))):
            index = (ts.astimezone(zone).date() - start).days // 7
            if 0 <= index < WEEKS:
                weeks[index] += q
    mapping = menu_item_map(s)
    regulars = customer_filter(s)
    menus = select(Menu.picks).join(Customer, Customer.id == Menu.customer_id).where(
        *([] if regulars is None else [regulars]))
    in_picks = sum(1 for picks in s.scalars(menus)
                   if any(p["item_id"] == item.id for p in translate_picks(picks, mapping)))
    shown = sum(1 for items in s.scalars(select(Visit.shown_items).where(*arrived)) if item.id in (items or []))
    bought_after = s.scalar(select(func.count()).select_from(PickCredit)
                            .join(Purchase, Purchase.id == PickCredit.purchase_id)
                            .where(PickCredit.item_id == item.id, *at_stores))
    # TIMEZONE unset: a store without a zone of its own has imported sale times that are not UTC (no credits)
    unclocked = stores_without_clock(s, get_settings().door_timezone is not None, store_scope())
    chart = bar_chart(labels, weeks, label_every=4, title=f"Units sold per week: {item.name}") if labels else None
    currency, _differing = menu_currency(s, get_settings().currency)
    from dangol_cloud.web.catalogue import store_lines

    return render_template("item_detail.html", item=item, products=products, units=units, chart=chart,
                           in_picks=in_picks, shown=shown, bought_after=bought_after, currency=currency,
                           unclocked=unclocked, at_stores=store_lines(s, [item], currency).get(item.id, []))
