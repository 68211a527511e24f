"""Analytics page: visits by hour and weekday, top items, recognised vs unknown, pick conversion."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from flask_login import login_required

from dangol_cloud import analytics as numbers
from dangol_cloud.app import get_session, get_settings
from dangol_cloud.charts import bar_chart, hbar_chart, split_bar

bp = Blueprint("analytics", __name__, url_prefix="/analytics")


@bp.route("/")
@login_required
def index():
    """GET /analytics/?days=N: charts over the last N days (1-3650, default 90)."""
    days = min(max(request.args.get("days", 90, type=int), 1), 3650)
    a = numbers.compute(get_session(), tz=get_settings().timezone, days=days)
    charts = {
        "hour": bar_chart([f"{h:02d}" for h in range(24)], a.visits_by_hour, label_every=3, title="Visits by hour"),
        "weekday": bar_chart(numbers.WEEKDAYS, a.visits_by_weekday, title="Visits by weekday"),
        "top": hbar_chart(a.top_items, title="Top items"),
        "split": split_bar([("Recognised", a.recognised, "#b5562b"), ("Unknown", a.unknown, "#cbb8a8")]),
    }
    return render_template("analytics.html", a=a, charts=charts, days=days)
