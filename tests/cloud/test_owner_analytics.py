"""Issue 11, finding 8 — analytics over the imported range (date-range picker, presets ending at the newest
data, "All history"), trends, top items, hour × weekday heatmap, CSV export, distinct regulars, and
"shown → bought" credited once per purchase to the visit it followed. Real Ta-Feng rows for the range."""

from __future__ import annotations

import csv
import io
import uuid

from dangol_cloud import analytics
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import CatalogueItem, Customer, Purchase, Visit

from .conftest import utc
from .test_cloud_web import sign_in, web  # noqa: F401 - the fixture


def test_one_purchase_gives_one_credit_to_the_visit_it_followed(db):
    with db.transaction() as s:
        latte = CatalogueItem(ref="latte", name="Latte", tags=[])
        ann = Customer(display_name="Ann")
        s.add_all([latte, ann])
        s.flush()
        for hour in (8, 9, 9):  # three arrivals of one person within 3 h, each showing the latte
            s.add(Visit(event_id=str(uuid.uuid4()), customer_id=ann.id, ts=utc(2026, 1, 5, hour, 10 * hour % 7),
                        shown_items=[latte.id]))
        s.add(Purchase(customer_id=ann.id, item_id=latte.id, quantity=1, ts=utc(2026, 1, 5, 9, 30), source="t",
                       idempotency_key="a"))
    with db.sessions() as s:
        a = analytics.compute(s, tz="UTC", since=utc(2026, 1, 1), until=utc(2026, 1, 10))
    assert a.shown_visits == 3 and a.converted == 1 and a.credits == 1  # before: 3 of 3 (every visit in 3 h)
    assert (a.recognised, a.regulars) == (3, 1)  # before: "3 recognised regulars" for one person


def test_imported_history_shows_by_default_with_trend_heatmap_and_csv(web, ta_feng_slice):  # noqa: F811
    app, db = web
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    client = app.test_client()
    sign_in(client)
    page = client.get("/analytics/").get_data(as_text=True)
    assert "No data yet" not in page  # before: the last 90 days before today, empty for imported history
    assert page.count("<svg") >= 5 and 'class="chart heat"' in page and "dates only" in page
    page = client.get("/analytics/?all=1").get_data(as_text=True)
    assert f"<b>{report.inserted:,}</b><span>purchase lines" in page
    page = client.get("/analytics/?from=2000-11-01&to=2000-11-01").get_data(as_text=True)
    assert "2000-11-01 to 2000-11-01" in page
    r = client.get("/analytics/top-items.csv?all=1")
    assert r.status_code == 200 and r.mimetype == "text/csv" and "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert rows[0] == ["item", "units"] and len(rows) == 11 and float(rows[1][1]) >= float(rows[2][1]) > 0
    trend = list(csv.reader(io.StringIO(client.get("/analytics/trend.csv?all=1").get_data(as_text=True))))
    assert trend[0][:4] == ["period_start", "door_arrivals", "recognised", "shop_visits"]
    assert sum(int(r[3]) for r in trend[1:]) > 0 and all(r[4] for r in trend[1:])  # revenue per period
    assert client.get("/analytics/nothing.csv").status_code == 404
