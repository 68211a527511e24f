"""Analytics page: any date range of local days (each store's own: "All stores" adds up the stores' days; presets
incl. the whole imported history), trends, top items, hour × weekday heatmap, recognised vs unknown, "shown →
bought" (the training's credits, with a note naming the stores whose imported sales cannot be matched with door
visits: ``TIMEZONE`` unset and no zone of their own), and a CSV export of each table."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import date, datetime, timedelta

from flask import Blueprint, Response, abort, render_template, request
from flask_login import login_required
from sqlalchemy import select

from dangol_cloud import analytics as numbers
from dangol_cloud.app import get_session, get_settings, shown_money, store_clock
from dangol_cloud.charts import bar_chart, hbar_chart, heatmap, split_bar, trend_chart
from dangol_cloud.models import Store, StoreSetting
from dangol_cloud.web.scope import store_scope

bp = Blueprint("analytics", __name__, url_prefix="/analytics")
PRESETS = (7, 30, 90, 365)
TABLES = ("trend", "top-items", "heatmap", "summary")


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _window():
    """(first day, last day, preset, span) from ``?from=YYYY-MM-DD&to=YYYY-MM-DD`` (local days, both included),
    ``?days=N`` (the last N days of the data) or ``?all=1``; default: the last 90 days up to the newest data. A day is
    each store's own (:class:`~dangol_cloud.analytics.LocalDays`: its zone, else ``TIMEZONE``), so "All stores" is the
    sum of the stores' days; ``span`` is the shown stores' data's first and last local day, each on its store's clock
    (None when they have none yet)."""
    s = get_session()
    shown = _shown_stores(_store_arg(s))
    span = numbers.day_range(s, get_settings().timezone, shown)  # the chosen store's (staff: their stores') history
    newest = span[1] if span else datetime.now(store_clock().shared(shown)).date()
    first, last = _day(request.args.get("from")), _day(request.args.get("to"))
    preset = None
    if request.args.get("all") and span:
        first, last, preset = span[0], newest, "all"
    elif first is None or last is None:
        days = min(max(request.args.get("days", 90, type=int), 1), 3650)
        first, last, preset = newest - timedelta(days=days - 1), newest, days
    if first > last:
        first, last = last, first
    first = min(max(first, date(1990, 1, 1)), date(2100, 1, 1))  # what a sale's ts may be, give or take
    last = min(max(last, date(1990, 1, 1)), date(2100, 1, 1))
    return first, last, preset, span


def _tables(a: numbers.Analytics) -> dict[str, tuple[list[str], list[list]]]:
    hours = [f"{h:02d}" for h in range(24)]
    return {
        "trend": (["period_start", "door_arrivals", "recognised", "shop_visits", "revenue"],
                  [[d.isoformat(), n, r, b, "" if rev is None else round(rev, 2)] for d, n, r, b, rev in a.trend]),
        "top-items": (["item", "units"], [[name, q] for name, q in a.top_items]),
        "heatmap": (["weekday", *hours], [[numbers.WEEKDAYS[i], *row] for i, row in enumerate(a.heatmap)]),
        "summary": (["since", "until", "door_arrivals", "recognised_arrivals", "regulars", "unknown",
                     "shown_visits", "shown_visits_bought", "credited_lines", "purchase_lines", "revenue"],
                    [[a.since.isoformat(), a.until.isoformat(), a.recognised + a.unknown, a.recognised, a.regulars,
                      a.unknown, a.shown_visits, a.converted, a.credits, a.lines,
                      "" if a.revenue is None else round(a.revenue, 2)]]),
    }


@bp.route("/")
@login_required
def index():
    """GET /analytics/?from=&to= | ?days=N | ?all=1, with ``&store=ID``: charts and tables over the range, of that
    store (the preset links keep the chosen store)."""
    first, last, preset, span = _window()
    s = get_session()
    store = _store_arg(s)
    shown = _shown_stores(store)
    a = numbers.compute(s, tz=get_settings().timezone, first=first, last=last, store_id=shown,
                        timezone_set=get_settings().door_timezone is not None)
    revenue_currency = _one_currency(s, sorted(a.sale_stores, key=lambda i: i or ""))
    clock = store_clock()
    own_clocks = len({clock.of(i).key for i in (clock.stores if shown is None else shown)}) > 1
    labels = [d.strftime("%Y-%m-%d") for d, *_ in a.trend]
    charts = {
        "hour": bar_chart([f"{h:02d}" for h in range(24)], a.visits_by_hour, label_every=3,
                          title="Door arrivals by hour"),
        "weekday": bar_chart(numbers.WEEKDAYS, a.visits_by_weekday, title="Door arrivals by weekday"),
        "top": hbar_chart(a.top_items, title="Top items"),
        "split": split_bar([("Recognised", a.recognised, "#b5562b"), ("Unknown", a.unknown, "#cbb8a8")]),
        "visits_trend": trend_chart(labels, [("Shop visits (baskets)", [t[3] for t in a.trend], "#b5562b"),
                                             ("Door arrivals", [t[1] for t in a.trend], "#6b8f71"),
                                             ("Recognised", [t[2] for t in a.trend], "#3b2a20")],
                                    title="Visits over time"),
        "revenue_trend": trend_chart(labels, [("Revenue", [t[4] or 0 for t in a.trend], "#b5562b")],
                                     title="Revenue over time", value_label=_money_label(revenue_currency))
        if a.revenue is not None else None,
        "heat": heatmap(numbers.WEEKDAYS, [f"{h:02d}" for h in range(24)], a.heatmap,
                        title="Shop visits by weekday and hour"),
    }
    scope = store_scope()
    stores = s.execute(select(Store.id, Store.name).where(*([Store.id.in_(sorted(scope))] if scope is not None else []))
                       .order_by(Store.name)).all()
    return render_template("analytics.html", a=a, charts=charts, first=first, last=last, preset=preset,
                           presets=PRESETS, span=span, tables=TABLES, revenue_max=numbers.REVENUE_MAX_LINES,
                           stores=stores, store=store, revenue_currency=revenue_currency, own_clocks=own_clocks)


def _store_arg(s) -> str | None:
    """``?store=ID`` if it names a store the user may see (staff: their stores), else None (all)."""
    store = request.args.get("store") or None
    if store is None or s.get(Store, store) is None:
        return None
    scope = store_scope()
    return store if scope is None or store in scope else None


def _shown_stores(store: str | None) -> frozenset[str] | None:
    """The stores whose numbers are shown: the chosen one; else every store for an owner (None) and the user's
    own stores for staff (never another store's sales or arrivals)."""
    return frozenset([store]) if store is not None else store_scope()


def _money_label(currency: str | None) -> Callable[[float], str] | None:
    """An axis label writer for amounts in ``currency`` (``₩13,500``, ``$4.50``, or for a currency stored before the
    checks ``13,500.00 WONS``: :func:`~dangol_cloud.app.shown_money`, as the ``money`` filter), or None (plain numbers)
    when the stores sell in different currencies (the page then shows no revenue chart)."""
    if currency is None:
        return None
    return lambda value: shown_money(value, currency)


def _one_currency(s, store_ids: list[str | None]) -> str | None:
    """The currency all these stores' sales are in, or None when they differ (revenue is then not added up)."""
    default = get_settings().currency
    own = dict(s.execute(select(StoreSetting.store_id, StoreSetting.currency)).all())
    codes = {(own.get(i) or default) if i else default for i in store_ids}
    return codes.pop() if len(codes) == 1 else (default if not codes else None)


@bp.route("/<any(trend, 'top-items', heatmap, summary):table>.csv")
@login_required
def export(table: str):
    """GET /analytics/<table>.csv with the page's range parameters: that table as CSV (UTF-8, header row)."""
    if table not in TABLES:
        abort(404)
    first, last, _preset, _span = _window()
    a = numbers.compute(get_session(), tz=get_settings().timezone, first=first, last=last,
                        store_id=_shown_stores(_store_arg(get_session())),
                        timezone_set=get_settings().door_timezone is not None)
    header, rows = _tables(a)[table]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:  # a cell starting with = + - @ would be a formula in a spreadsheet: quote it (OWASP)
        writer.writerow([f"'{v}" if isinstance(v, str) and v[:1] in "=+-@" else v for v in row])
    name = f"dangol-{table}-{first.isoformat()}-{last.isoformat()}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
