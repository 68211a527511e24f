"""Fixes from an owner's journey through the dashboard (reviewed in a real browser): on real Ta-Feng and Complete
Journey rows, SQLite (the dashboard's tests) and both databases where rows are stored by the importers.

1. An upload stores no sale line the POS API refuses: an amount above 10,000,000 or below 0, a quantity of 0 or less
   or above its maximum are row errors naming the line and the column (one definition, :mod:`dangol_cloud.sale_rules`,
   shared with the POS API), while every row of the shipped data sets still imports (Complete Journey's quantity-0
   coupon lines and its fuel lines counted in thousandths of a gallon).
2. Analytics counts a day on each store's own clock: "All stores" for a day is the sum of each store's own day, for
   the counts, revenue, trend, heatmap and top items and "your data runs …".
3. "Not for them" on a customer whose menu is never sent (no consent record) says the next training uses it, not
   that the stores get a new menu.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.importers import PurchaseRow, RowError, parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.menu_mapping import map_products
from dangol_cloud.models import CatalogueItem, Customer, ProductMapping, Purchase, Store
from dangol_cloud.models_ops import StoreSetting
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, add_owner
from .test_cloud_web import csrf_of, sign_in, wait_for_import, web  # noqa: F401 - the fixture

CSV_HEADER = "customer,item,quantity,timestamp,amount,product_id"


def _ta_feng_lines(path: Path, n: int) -> tuple[str, list[list[str]]]:
    """The header and the first ``n`` data lines of a Ta-Feng file, split into fields."""
    header, *lines = path.read_text(encoding="utf-8").splitlines()[: n + 1]
    return header, [line.split(",") for line in lines]


def _as_till_csv(fields: list[str]) -> list[str]:
    """A real Ta-Feng row as a plain CSV row of a till export: customer, item (its subclass), quantity, ISO date,
    amount, product id."""
    month, day, year = fields[0].split("/")
    return [fields[1], fields[4], fields[6], f"{year}-{int(month):02d}-{int(day):02d}T09:00:00", fields[8], fields[5]]


# --- 1. import bounds ----------------------------------------------------------------------------------------------

def test_the_line_bounds_are_one_definition_shared_with_the_pos_api():
    from dangol_cloud import sale_rules
    from dangol_cloud.web import api

    assert api.MAX_LINE_AMOUNT is sale_rules.MAX_LINE_AMOUNT == 10_000_000
    schema = api.PurchaseLine.model_json_schema()["properties"]
    assert schema["quantity"]["maximum"] == sale_rules.MAX_LINE_QUANTITY
    assert schema["quantity"]["exclusiveMinimum"] == 0
    amount = next(s for s in schema["amount"]["anyOf"] if s.get("type") == "number")
    assert (amount["minimum"], amount["maximum"]) == (0, sale_rules.MAX_LINE_AMOUNT)


@pytest.mark.parametrize("column,value,why", [
    ("amount", "1e30", "more than 10,000,000"),                 # the reviewer's row: revenue and a price of 1e30
    ("amount", "-13500", "less than 0"),                        # a refund lowered revenue
    ("quantity", "-3", "0 or more"),                            # ... and "units sold"
    ("quantity", "20000", "more than 10,000"),
])
def test_a_till_csv_row_the_pos_api_would_refuse_is_a_row_error(ta_feng_slice, tmp_path, column, value, why):
    _header, rows = _ta_feng_lines(ta_feng_slice, 40)
    lines = [_as_till_csv(f) for f in rows]
    lines[20][{"quantity": 2, "amount": 4}[column]] = value
    path = tmp_path / "till.csv"
    path.write_text("\n".join([CSV_HEADER, *(",".join(line) for line in lines)]) + "\n", encoding="utf-8")
    out = list(parse_purchases(path, "csv"))
    errors = [r for r in out if isinstance(r, RowError)]
    assert [(e.line, e.message.startswith(f"{column} {value!r}"), why in e.message) for e in errors] \
        == [(22, True, True)], [e.message for e in errors]
    assert sum(isinstance(r, PurchaseRow) for r in out) == 39


@pytest.mark.parametrize("column,index,value,why", [
    ("SALES_PRICE", 8, "1e30", "more than 10,000,000"),
    ("SALES_PRICE", 8, "-68", "less than 0"),
    ("AMOUNT", 6, "-3", "more than 0"),
    ("AMOUNT", 6, "0", "more than 0"),                          # Ta-Feng sells at least 1 of a line
])
def test_a_ta_feng_row_out_of_the_line_bounds_is_a_row_error_and_stores_nothing(db, ta_feng_slice, tmp_path, column,
                                                                                 index, value, why):
    header, rows = _ta_feng_lines(ta_feng_slice, 300)
    rows[150][index] = value
    path = tmp_path / "ta_feng_edited.csv"
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    assert [(e.line, e.message.startswith(f"{column} {value!r}"), why in e.message) for e in report.errors] \
        == [(152, True, True)], [e.message for e in report.errors]
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == report.inserted == 299
        assert min(s.scalars(select(Purchase.quantity))) > 0
        assert 0 <= min(a for a in s.scalars(select(Purchase.amount))) <= max(s.scalars(select(Purchase.amount))) \
            <= 10_000_000


def test_a_new_items_price_is_never_beyond_what_the_item_form_takes(db, ta_feng_slice, tmp_path):
    """A real line of 0.001 units (at a thousand times its total) gives a unit price beyond 10,000,000: the item is
    created without a price (the owner sets one) rather than at one the Edit form refuses."""
    _header, rows = _ta_feng_lines(ta_feng_slice, 1)
    line = _as_till_csv(rows[0])
    line[2], line[4] = "0.001", str(float(line[4]) * 1000)     # 0.001 units at a thousand times the line's total
    assert float(line[4]) / 0.001 > 10_000_000
    path = tmp_path / "till.csv"
    path.write_text("\n".join([CSV_HEADER, ",".join(line)]) + "\n", encoding="utf-8")
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv")
    assert report.inserted == 1 and report.items_created == 1
    with db.sessions() as s:
        assert s.scalar(select(CatalogueItem.price)) is None


def _cj_rows(data_dir: Path) -> tuple[list[str], list[list[str]]]:
    """The real Complete Journey header and rows: 30 ordinary lines, 10 coupon lines (quantity 0), 10 fuel lines
    (quantity in thousandths of a gallon, above the POS API's 10,000), all of products in products.csv."""
    folder = data_dir / "purchases" / "completejourney"
    with (folder / "products.csv").open(encoding="utf-8") as fh:
        known = {r["product_id"] for r in csv.DictReader(fh) if r["product_category"].strip()}
    picked: dict[str, list[list[str]]] = {"plain": [], "zero": [], "fuel": []}
    with (folder / "transactions.csv").open(encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        for row in reader:
            if row[3] not in known:
                continue
            kind = "zero" if float(row[4]) == 0 else "fuel" if float(row[4]) > 10_000 else "plain"
            if len(picked[kind]) < {"plain": 30, "zero": 10, "fuel": 10}[kind]:
                picked[kind].append(row)
            if all(len(v) == {"plain": 30, "zero": 10, "fuel": 10}[k] for k, v in picked.items()):
                break
    return header, picked["plain"] + picked["zero"] + picked["fuel"]


def test_complete_journey_keeps_its_coupon_and_fuel_lines_and_refuses_what_no_export_holds(db, data_dir, tmp_path):
    header, rows = _cj_rows(data_dir)
    refused = [list(rows[5]), list(rows[6]), list(rows[7])]
    refused[0][5] = "-2.5"                      # sales_value below 0
    refused[1][5] = "1e30"                      # sales_value far above any line
    refused[2][4] = "-1"                        # a negative quantity
    folder = tmp_path / "cj"
    folder.mkdir()
    (folder / "transactions.csv").write_text(
        "\n".join(",".join(r) for r in [header, *rows, *refused]) + "\n", encoding="utf-8")
    (folder / "products.csv").symlink_to(data_dir / "purchases" / "completejourney" / "products.csv")
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(folder / "transactions.csv", "completejourney"),
                             source="completejourney", key_prefix="completejourney")
    assert [(e.line, e.message.split(" ")[0]) for e in report.errors] \
        == [(52, "sales_value"), (53, "sales_value"), (54, "quantity")], [e.message for e in report.errors]
    assert report.inserted == len(rows) == 50
    with db.sessions() as s:
        quantities = sorted(s.scalars(select(Purchase.quantity)))
    assert quantities.count(0) == 10 and sum(q > 10_000 for q in quantities) == 10


def test_an_uploaded_amount_of_1e30_never_reaches_revenue_or_a_price(web, ta_feng_slice):  # noqa: F811
    app, db = web
    _header, rows = _ta_feng_lines(ta_feng_slice, 3000)
    lines = [_as_till_csv(f) for f in rows[:12]]
    sold = {line[1] for line in lines}
    lines[3] = _as_till_csv(next(f for f in rows[12:] if f[4] not in sold))   # a product sold only in this line
    lines[3][4] = "1e30"                                                      # the reviewer's amount
    lines[7][2], lines[7][4] = "-3", "-13500"                                 # a refund line
    body = "\n".join([CSV_HEADER, *(",".join(line) for line in lines)]) + "\n"
    client = app.test_client()
    sign_in(client)
    response = client.post("/purchases/", content_type="multipart/form-data", data={
        "csrf_token": csrf_of(client.get("/purchases/").get_data(as_text=True)), "format": "csv",
        "file": (io.BytesIO(body.encode()), "till.csv")})
    page = wait_for_import(client, response.location)
    assert "10 imported" in page and "2 skipped" in page
    assert re.search(r'<td class="num">5</td><td>amount [^<]*10,000,000', page)
    assert re.search(r'<td class="num">9</td><td>quantity [^<]*0 or more', page)
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 10
        assert s.scalar(select(CatalogueItem).where(CatalogueItem.ref == lines[3][1])) is None   # no 1e30 price
        assert max(s.scalars(select(Purchase.amount))) <= 10_000_000
    summary = _table(client, "summary", "all=1")[0]
    assert float(summary["revenue"]) == pytest.approx(sum(float(line[4]) for n, line in enumerate(lines)
                                                          if n not in (3, 7)))


# --- 2. analytics on each store's clock -----------------------------------------------------------------------------

def _gangnam_and_taipei(db) -> tuple[str, str]:
    """Two stores: Gangnam on its own zone (Asia/Seoul), Taipei on ``TIMEZONE``; their ids."""
    with db.transaction() as s:
        gangnam, taipei = Store(name="Gangnam", ref="gangnam"), Store(name="Taipei", ref="taipei")
        s.add_all([gangnam, taipei])
        s.flush()
        s.add(StoreSetting(store_id=gangnam.id, timezone="Asia/Seoul"))
        return gangnam.id, taipei.id


@pytest.fixture
def two_zone_chain(web, ta_feng_slice, tmp_path):  # noqa: F811
    """The real Ta-Feng slice (dates 2000-11-01 and 11-02) split by line between Gangnam (its own zone Asia/Seoul)
    and Taipei (no zone of its own: ``TIMEZONE``, UTC); ``(app, db, {store: [its PurchaseRows]}, ids)``."""
    app, db = web
    header, rows = _ta_feng_lines(ta_feng_slice, 3000)
    ids = dict(zip(("gangnam", "taipei"), _gangnam_and_taipei(db)))
    parsed = {}
    for n, name in enumerate(("gangnam", "taipei")):
        path = tmp_path / f"{name}.csv"
        path.write_text("\n".join([header, *(",".join(r) for r in rows[n::2])]) + "\n", encoding="utf-8")
        parsed[name] = [r for r in parse_purchases(path, "ta-feng") if isinstance(r, PurchaseRow)]
        with db.transaction() as s:
            report = import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                                 store_id=ids[name])
        assert report.inserted == len(parsed[name]) == 1500
    return app, db, parsed, ids


def _table(client, name: str, query: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(client.get(f"/analytics/{name}.csv?{query}").get_data(as_text=True))))


def _stat(page: str, label: str) -> str:
    return re.search(r"<b>([^<]*)</b><span>" + label, page).group(1)


def test_all_stores_counts_each_stores_own_day(two_zone_chain):
    app, _db, parsed, ids = two_zone_chain
    client = app.test_client()
    sign_in(client)
    day = [r for rows in parsed.values() for r in rows if r.ts.day == 1]        # 2000-11-01 in either store
    assert {r.ts.date().isoformat() for r in day} == {"2000-11-01"} and len(day) == 496
    baskets = sum(len({r.customer_ref for r in rows if r.ts.day == 1}) for rows in parsed.values())
    query = "from=2000-11-01&to=2000-11-01"
    page = client.get(f"/analytics/?{query}").get_data(as_text=True)
    assert _stat(page, "purchase lines") == f"{len(day):,}"                  # before: 1,500 (Gangnam's 11-02)
    assert "your data runs 2000-11-01 to 2000-11-02" in page                 # before: 2000-10-31, a day of no sales
    assert "each store's days on its own clock" in page
    trend = _table(client, "trend", query)
    assert [(t["period_start"], int(t["shop_visits"])) for t in trend] == [("2000-11-01", baskets)]
    assert float(trend[0]["revenue"]) == pytest.approx(sum(r.amount for r in day))
    heat = _table(client, "heatmap", query)
    assert sum(int(v) for row in heat for k, v in row.items() if k != "weekday") == baskets
    units = Counter()
    for r in day:
        units[r.item_ref] += r.quantity
    top = sorted(units.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [(t["item"], float(t["units"])) for t in _table(client, "top-items", query)] == top
    summary = _table(client, "summary", query)[0]
    assert int(summary["purchase_lines"]) == len(day)
    # each store alone: its own day, and together they make "All stores"
    for name in ("gangnam", "taipei"):
        alone = client.get(f"/analytics/?{query}&store={ids[name]}").get_data(as_text=True)
        assert _stat(alone, "purchase lines") == f"{sum(r.ts.day == 1 for r in parsed[name]):,}"
    # the presets end at the newest local day: the last 7 days hold every sale
    assert _stat(client.get("/analytics/?days=7").get_data(as_text=True), "purchase lines") == "3,000"


def test_local_days_on_both_databases(db, ta_feng_slice, tmp_path):
    from datetime import date

    from dangol_cloud.analytics import compute, day_range

    header, rows = _ta_feng_lines(ta_feng_slice, 3000)
    ids = list(_gangnam_and_taipei(db))
    for n, store in enumerate(ids):
        path = tmp_path / f"store{n}.csv"
        path.write_text("\n".join([header, *(",".join(r) for r in rows[n::2])]) + "\n", encoding="utf-8")
        with db.transaction() as s:
            import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng", store_id=store)
    day_one = [sum(r[0] == "11/1/2000" for r in rows[n::2]) for n in range(2)]
    with db.sessions() as s:
        assert day_range(s, "UTC") == (date(2000, 11, 1), date(2000, 11, 2))
        assert day_range(s, "UTC", [ids[0]]) == (date(2000, 11, 1), date(2000, 11, 2))
        every = compute(s, tz="UTC", first=date(2000, 11, 1), last=date(2000, 11, 1))
        each = [compute(s, tz="UTC", first=date(2000, 11, 1), last=date(2000, 11, 1), store_id=i) for i in ids]
        none = compute(s, tz="UTC", first=date(2000, 11, 1), last=date(2000, 11, 1), store_id=[])
    assert [a.lines for a in each] == day_one and every.lines == sum(day_one) == 496
    assert [d for d, *_ in every.trend] == [date(2000, 11, 1)] and every.sale_stores == set(ids)
    assert none.lines == 0 and none.trend == []


# --- 3. "Not for them" on a customer whose menu is never sent ------------------------------------------------------

@pytest.fixture
def web_with_broker(tmp_path, sqlite_url, mosquitto):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k",
                        mqtt_url=mosquitto.url, _env_file=None)
    app = create_app(settings, db=db, TESTING=True)
    yield app, db
    app.extensions["dangol_republisher"].stop()
    db.dispose()


def test_not_for_them_on_a_history_only_customer_promises_no_menu(web_with_broker, ta_feng_slice):
    app, db = web_with_broker
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
        product = s.scalars(select(ProductMapping.product_id).order_by(ProductMapping.product_id)).first()
        map_products(s, [product], "self", by="owner")                        # on the menu as itself
        customer = s.scalars(select(Customer.id).order_by(Customer.id)).first()
        assert s.get(Customer, customer).consent_at is None
    client = app.test_client()
    sign_in(client)
    page = client.get(f"/customers/{customer}").get_data(as_text=True)
    response = client.post(f"/customers/{customer}/opinion", data={"csrf_token": csrf_of(page), "item": product,
                                                                   "opinion": "dislike"})
    shown = client.get(response.headers["Location"]).get_data(as_text=True)
    flash = re.search(r'class="flash success" role="status">(.*?)</div>', shown, re.S).group(1)
    assert "does not want" in flash and "The next training uses it" in flash, flash
    assert "within moments" not in flash and "next publish" not in flash, flash
    republisher = app.extensions["dangol_republisher"]
    assert republisher.pending() == 0 and republisher.published == 0          # nothing was (or will be) sent
