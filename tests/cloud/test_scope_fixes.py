"""Review of the cloud service — staff scope and import keys, on real Ta-Feng purchases turned into Dangol CSV:

* a staff user imports sales only into their own stores (dropdown, server-side check, ``store`` column);
* ``POST /api/v1/feedback`` only from a store where the customer is known; a POS sale for a chain customer at
  another store of the chain is legitimate (and makes them known there);
* the Today page shows staff their stores' figures only;
* re-importing an overlapping export never doubles a purchase (content keys), also after the migration that
  re-keys purchases stored with the old line-number keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from html import unescape
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from dangol_cloud.app import create_app
from dangol_cloud.db import Database, migrate
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import (CatalogueItem, Customer, Device, PickOpinion, Purchase, Store, User, UserStore,
                                 Visit)
from dangol_cloud.security import hash_password, hash_token, mosquitto_hash
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD
from .test_cloud_web import wait_for_import
from .test_web_hardening import STAFF_EMAIL, STAFF_PASSWORD, csrf_of, make_sqlite_site, sign_in  # noqa: F401

TOKEN_MAIN, TOKEN_HARBOUR = "pos-token-main-0123456789", "pos-token-harbour-0123456789"
HEADER = "customer,item,quantity,timestamp,amount,product_id"


# --- real data ---------------------------------------------------------------------------------------
def ta_feng_records(data_dir: Path, n: int) -> list[tuple[str, ...]]:
    """The first ``n`` real Ta-Feng lines as Dangol CSV fields ``(customer, item, quantity, timestamp, amount,
    product_id)``: the customer id, PRODUCT_SUBCLASS, AMOUNT, TRANSACTION_DT (ISO), SALES_PRICE, PRODUCT_ID."""
    out = []
    with (data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv").open(encoding="utf-8-sig") as fh:
        next(fh)
        for line in fh:
            dt, customer, _age, _pin, subclass, product, amount, _asset, price = line.rstrip("\r\n").split(",")
            out.append((customer, subclass, amount, datetime.strptime(dt, "%m/%d/%Y").isoformat(), price, product))
            if len(out) == n:
                break
    return out


def write_csv(path: Path, records, stores: list[str] | None = None) -> Path:
    """Dangol CSV of ``records``; with ``stores`` a ``store`` column (one value per record)."""
    lines = [HEADER + (",store" if stores is not None else "")]
    for n, rec in enumerate(records):
        lines.append(",".join(rec) + (f",{stores[n]}" if stores is not None else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def redated(records, when: datetime):
    """The records with their time moved to ``when`` (minutes apart): recent sales for the Today page."""
    return [(c, i, q, (when + timedelta(minutes=n)).replace(tzinfo=None).isoformat(timespec="seconds"), a, p)
            for n, (c, i, q, _ts, a, p) in enumerate(records)]


# --- a chain of two stores ---------------------------------------------------------------------------
def two_stores(db) -> dict[str, str]:
    """Stores "Main Street" (ref ``main``, the staff user's) and "Harbour" (ref ``harbour``), a door device each."""
    with db.transaction() as s:
        main = Store(name="Main Street", ref="main", api_token_hash=hash_token(TOKEN_MAIN))
        harbour = Store(name="Harbour", ref="harbour", api_token_hash=hash_token(TOKEN_HARBOUR))
        s.add_all([main, harbour])
        s.flush()
        devices = [Device(store_id=st.id, name=f"{st.name} door", mqtt_username=f"device-{uuid.uuid4()}",
                          mqtt_password_hash=mosquitto_hash("x")) for st in (main, harbour)]
        staff = User(email=STAFF_EMAIL, password_hash=hash_password(STAFF_PASSWORD), role="staff")
        s.add_all([*devices, staff])
        s.flush()
        s.add(UserStore(user_id=staff.id, store_id=main.id))
        return {"main": main.id, "harbour": harbour.id, "main_device": devices[0].id,
                "harbour_device": devices[1].id}


@pytest.fixture
def chain(make_sqlite_site):  # noqa: F811
    app, db = make_sqlite_site()
    return app, db, two_stores(db)


def store_options(html: str) -> list[str]:
    select_html = re.search(r'<select[^>]*name="store"[^>]*>(.*?)</select>', html, re.S).group(1)
    return re.findall(r'<option[^>]*value="([^"]*)"', select_html)


def upload(client, path: Path, store: str):
    html = client.get("/purchases/").get_data(as_text=True)
    return client.post("/purchases/", content_type="multipart/form-data", data={
        "csrf_token": csrf_of(html), "format": "csv", "store": store,
        "file": (io.BytesIO(path.read_bytes()), path.name)})


def purchases_by_store(db) -> dict[str | None, int]:
    with db.sessions() as s:
        return dict(s.execute(select(Purchase.store_id, func.count()).group_by(Purchase.store_id)).all())


# --- 1. staff import into their own stores only ------------------------------------------------------
def test_staff_import_only_into_their_own_stores(chain, data_dir, tmp_path):
    app, db, ids = chain
    records = ta_feng_records(data_dir, 40)
    staff = app.test_client()
    assert sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    assert store_options(staff.get("/purchases/").get_data(as_text=True)) == [ids["main"]]

    plain = write_csv(tmp_path / "till.csv", records[:10])
    refused = upload(staff, plain, ids["harbour"])  # a forged form naming the other store
    assert refused.status_code == 403 and "not one of your stores" in refused.get_data(as_text=True)
    assert upload(staff, plain, "").status_code == 422  # staff uploads name their store
    assert purchases_by_store(db) == {}

    # the store column: 10 rows name Harbour (row errors), 20 name Main Street, 10 none (the chosen store)
    stores = ["harbour" if n % 4 == 0 else "" if n % 4 == 1 else "main" for n in range(40)]
    mixed = write_csv(tmp_path / "mixed.csv", records, stores)
    response = upload(staff, mixed, ids["main"])
    assert response.status_code == 303
    page = wait_for_import(staff, response.location)
    assert "40 rows read" in page and "<b>30 imported</b>" in page and "<b>10 skipped</b>" in page, page
    errors = re.findall(r'<tr><td class="num">(\d+)</td><td>([^<]*)</td>', page)
    assert [int(line) for line, _ in errors] == [n + 2 for n in range(0, 40, 4)]
    assert all(unescape(msg) == "store 'harbour' is not one of your stores" for _, msg in errors)
    assert purchases_by_store(db) == {ids["main"]: 30}

    owner = app.test_client()
    assert sign_in(owner).status_code == 302
    assert sorted(store_options(owner.get("/purchases/").get_data(as_text=True))) == sorted(
        ["", "history", ids["main"], ids["harbour"]])
    response = upload(owner, write_csv(tmp_path / "owner.csv", records[:8], ["harbour"] * 8), "history")  # no one store: each row's
    assert 'data-state="done"' in wait_for_import(owner, response.location)
    assert purchases_by_store(db)[ids["harbour"]] == 8  # owners keep every store
    # an owner's import report (its rows, customer refs among them) is not for the staff of one store
    assert staff.get(response.location).status_code == 404
    assert owner.get(response.location).status_code == 200


# --- 2. feedback only from a store where the customer is known ----------------------------------------
def _feedback(client, token, customer, item, opinion="dislike"):
    return client.post("/api/v1/feedback", data=json.dumps({"customer": customer, "item": item, "opinion": opinion}),
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def test_feedback_only_from_a_store_where_the_customer_is_known(chain, data_dir, tmp_path):
    app, db, ids = chain
    path = write_csv(tmp_path / "main.csv", ta_feng_records(data_dir, 30))
    with db.transaction() as s:
        import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv", store_id=ids["main"])
    with db.sessions() as s:
        customer, item, item_ref = s.execute(select(Purchase.customer_id, CatalogueItem.id, CatalogueItem.ref)
                                             .join(CatalogueItem).order_by(Purchase.id).limit(1)).one()
    client = app.test_client()

    refused = _feedback(client, TOKEN_HARBOUR, customer, item)  # never seen at Harbour
    assert refused.status_code == 404, refused.json
    assert customer in refused.json["detail"] and "not known at this store" in refused.json["detail"]
    stranger = str(uuid.uuid4())
    missing = _feedback(client, TOKEN_HARBOUR, stranger, item)  # same answer: no probing for ids
    assert missing.status_code == 404 and stranger in missing.json["detail"]
    with db.sessions() as s:
        assert s.scalars(select(PickOpinion)).all() == []

    assert _feedback(client, TOKEN_MAIN, customer, item).status_code == 200  # bought at Main Street

    # a chain regular may buy at Harbour: the sale is recorded for Harbour under the same customer ...
    sale = client.post("/api/v1/purchases", json={"customer": customer, "ts": datetime.now(timezone.utc).isoformat(),
                                                  "lines": [{"item": item_ref}]},
                       headers={"Authorization": f"Bearer {TOKEN_HARBOUR}", "Idempotency-Key": "harbour-0001"})
    assert sale.status_code == 201 and sale.json["customer_id"] == customer
    with db.sessions() as s:
        assert s.get(Purchase, sale.json["purchase_ids"][0]).store_id == ids["harbour"]
    # ... and from then on Harbour knows them
    assert _feedback(client, TOKEN_HARBOUR, customer, item, "like").status_code == 200
    with db.sessions() as s:
        assert s.get(PickOpinion, (customer, item)).by == f"store:{ids['harbour']}"


def test_feedback_after_an_arrival_at_the_store(chain, data_dir, tmp_path):
    app, db, ids = chain
    path = write_csv(tmp_path / "main.csv", ta_feng_records(data_dir, 10))
    with db.transaction() as s:
        import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv", store_id=ids["main"])
        customer, item = s.execute(select(Purchase.customer_id, Purchase.item_id).limit(1)).one()
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=customer, device_id=ids["harbour_device"],
                    store_id=ids["harbour"], ts=datetime.now(timezone.utc), shown_items=[item]))
    assert _feedback(app.test_client(), TOKEN_HARBOUR, customer, item).status_code == 200


# --- 3. Today page: staff see their stores' figures ---------------------------------------------------
def _stat(html: str, label: str) -> int:
    return int(re.search(r"<b>([\d,]+)</b><span>" + label, html).group(1).replace(",", ""))


def _customers_line(html: str) -> tuple[int, int]:
    m = re.search(r"<td>Customers</td><td>([\d,]+) \(([\d,]+) purchases\)", html)
    return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))


def test_today_page_shows_staff_their_stores_only(chain, data_dir, tmp_path):
    app, db, ids = chain
    records = redated(ta_feng_records(data_dir, 90), datetime.now(timezone.utc) - timedelta(days=2))
    for name, part in (("main", records[:30]), ("harbour", records[30:])):
        path = write_csv(tmp_path / f"{name}.csv", part)
        with db.transaction() as s:
            import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv", store_id=ids[name])
    now = datetime.now(timezone.utc)
    with db.transaction() as s:
        main_customer = s.scalar(select(Purchase.customer_id).where(Purchase.store_id == ids["main"]).limit(1))
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=main_customer, device_id=ids["main_device"],
                    store_id=ids["main"], ts=now, shown_items=[]))
        s.add(Visit(event_id=str(uuid.uuid4()), device_id=ids["main_device"], store_id=ids["main"], ts=now,
                    shown_items=[]))
        for _ in range(5):
            s.add(Visit(event_id=str(uuid.uuid4()), device_id=ids["harbour_device"], store_id=ids["harbour"],
                        ts=now, shown_items=[]))
    with db.sessions() as s:
        main_customers = s.scalar(select(func.count(func.distinct(Purchase.customer_id)))
                                  .where(Purchase.store_id == ids["main"]))
        all_customers = s.scalar(select(func.count()).select_from(Customer))
    assert main_customers < all_customers

    staff = app.test_client()
    assert sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    html = staff.get("/").get_data(as_text=True)
    assert _stat(html, "arrivals today") == 2 and "(1 recognised)" in html
    assert _stat(html, "purchases in the last 7 days") == 30
    assert _customers_line(html) == (main_customers, 30)

    owner = app.test_client()
    assert sign_in(owner).status_code == 302
    html = owner.get("/").get_data(as_text=True)
    assert _stat(html, "arrivals today") == 7 and _stat(html, "purchases in the last 7 days") == 90
    assert _customers_line(html) == (all_customers, 90)


# --- 4. import keys: content, not line numbers --------------------------------------------------------
def _import(db, path: Path):
    with db.transaction() as s:
        return import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv")


def _exports(data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A till's January export (real line 1 twice: two identical lines of one sale, 101 lines) and its
    February export, newest first: 50 new lines, then the whole January export again at other line numbers."""
    records = ta_feng_records(data_dir, 150)
    january = [records[0], *records[:100]]
    return (write_csv(tmp_path / "january.csv", january),
            write_csv(tmp_path / "january_february.csv", records[100:] + january))


def _count(db) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(Purchase))


def test_reimporting_an_overlapping_export_adds_only_the_new_sales(make_sqlite_site, data_dir, tmp_path):  # noqa: F811
    _app, db = make_sqlite_site()
    january, both = _exports(data_dir, tmp_path)
    first = _import(db, january)
    assert (first.inserted, first.duplicates) == (101, 0)  # the repeated line stays two purchases
    again = _import(db, january)
    assert (again.inserted, again.duplicates) == (0, 101)
    later = _import(db, both)
    assert (later.rows, later.inserted, later.duplicates) == (151, 50, 101)
    assert _count(db) == 151


def _old_key(row) -> str:
    """The key imports stored before revision 0008: the line number hashed with the row."""
    text = "|".join(str(v) for v in (row.line, row.customer_ref, row.item_ref, row.product_id, row.ts.isoformat(),
                                      row.quantity, row.amount))
    return f"csv:{hashlib.sha1(text.encode('utf-8')).hexdigest()}"


def test_purchases_stored_with_old_keys_are_rekeyed_by_the_migration(db_url, data_dir, tmp_path, monkeypatch):
    database = Database(db_url, data_key=DEV_KEY_BYTES)
    try:
        migrate(database.engine, "0007")
        january, both = _exports(data_dir, tmp_path)
        with monkeypatch.context() as m:  # revision 0007 has no store time zones (0009): today's import asks for them
            m.setattr("dangol_cloud.store_zones.store_zones", lambda session: {})
            _import(database, january)
        with database.transaction() as s:  # as an import before this fix stored them
            ids = s.scalars(select(Purchase.id).order_by(Purchase.id)).all()
            for pid, row in zip(ids, parse_purchases(january, "csv"), strict=True):
                s.execute(update(Purchase).where(Purchase.id == pid).values(idempotency_key=_old_key(row)))
        database.migrate()
        assert _import(database, january).inserted == 0
        later = _import(database, both)
        assert (later.inserted, later.duplicates) == (50, 101)
        assert _count(database) == 151
        database.migrate()  # a second upgrade is a no-op
        assert _import(database, both).inserted == 0
    finally:
        database.dispose()


def test_staff_customer_list_counts_their_stores_only(chain, data_dir, tmp_path):
    """Security review 2026-12-07: the customer list's Visits / Last visit / Purchases columns counted a shared
    customer's activity at every store, while the customer page keeps other stores' out."""
    app, db, ids = chain
    records = ta_feng_records(data_dir, 400)
    regular = max({r[0] for r in records}, key=lambda c: sum(r[0] == c for r in records))
    theirs = [r for r in records if r[0] == regular]
    assert len(theirs) >= 4
    for name, part in (("main", theirs[:1]), ("harbour", theirs[1:])):
        with db.transaction() as s:
            import_rows(s, parse_purchases(write_csv(tmp_path / f"{name}.csv", part), "csv"), source="csv",
                        key_prefix="csv", store_id=ids[name])
    with db.transaction() as s:
        customer = s.scalar(select(Purchase.customer_id).where(Purchase.store_id == ids["main"]))
        for store, n in (("main", 1), ("harbour", 3)):
            for day in range(n):
                s.add(Visit(event_id=str(uuid.uuid4()), customer_id=customer, device_id=ids[f"{store}_device"],
                            store_id=ids[store], ts=datetime(2001, 1, 1 + day + (10 if store == "harbour" else 0),
                                                             9, 30, tzinfo=timezone.utc), shown_items=[]))
    staff = app.test_client()
    assert sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    html = staff.get(f"/customers/?show=all&q={regular}").get_data(as_text=True)
    row = re.search(r"<tr>\s*<td><a href=\"/customers/[^\"]+\">.*?</tr>", html, re.S).group(0)
    visits, last, bought = [unescape(re.sub(r"<[^>]+>", "", c)).strip()
                            for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[-3:]]
    assert (visits, last, bought) == ("1", "2001-01-01 09:30", "1"), row
