"""The customer list and the customer page header read each time on the clock of the store it happened at, as
the page's tables do: a chain of a Taipei store (its own zone) and a Berlin store (``TIMEZONE=Europe/Berlin``).
The list finds each customer's latest visit and its store in one query, however many customers it shows."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import event

from dangol_cloud.app import create_app
from dangol_cloud.models import CatalogueItem, Customer, Purchase, Store, StoreSetting, Visit
from dangol_cloud.settings import Settings
from tests.cloud.conftest import add_owner, utc
from tests.cloud.test_cloud_web import sign_in


@pytest.fixture
def chain(db, db_url, tmp_path):
    """``(client, db, {name: customer id}, (taipei id, berlin id))``: two stores, an owner signed in, Mina and
    Joon (no purchases), nothing visited yet."""
    add_owner(db)
    with db.transaction() as s:
        tpe, ber = Store(name="Taipei", ref="tpe"), Store(name="Berlin", ref="ber")
        s.add_all([tpe, ber])
        s.flush()
        s.add(StoreSetting(store_id=tpe.id, timezone="Asia/Taipei"))
        mina = Customer(display_name="Mina Park", status="active", source="edge")
        joon = Customer(display_name="Joon Lee", status="active", source="edge")
        s.add_all([mina, joon, CatalogueItem(id="latte", name="Latte", ref="latte")])
        s.flush()
        ids, stores = {"Mina": mina.id, "Joon": joon.id}, (tpe.id, ber.id)
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k", timezone="Europe/Berlin",
                        _env_file=None)
    client = create_app(settings, db=db, TESTING=True).test_client()
    assert sign_in(client).status_code == 302
    return client, db, ids, stores


def _visit(s, customer_id: str, store_id: str, ts) -> None:
    s.add(Visit(event_id=str(uuid.uuid4()), customer_id=customer_id, store_id=store_id, ts=ts))


def _row(listing: str, name: str) -> tuple[str, list[str]]:
    """(visits count, [last visit]) of ``name``'s row on the customer list."""
    row = re.search(re.escape(name) + r".*?</tr>", listing, re.S).group(0)
    return (re.findall(r'<td class="num">(\d+)</td>', row)[0],
            re.findall(r"<td>(\d{4}-\d\d-\d\d \d\d:\d\d)</td>", row))


def test_the_list_shows_the_latest_visit_on_its_stores_clock(chain):
    client, db, ids, (tpe, ber) = chain
    with db.transaction() as s:
        _visit(s, ids["Mina"], tpe, utc(2026, 3, 1, 0, 30))  # Taipei 08:30, Berlin 01:30
        _visit(s, ids["Joon"], tpe, utc(2026, 3, 1, 0, 30))  # older, at Taipei ...
        _visit(s, ids["Joon"], ber, utc(2026, 3, 2, 9, 0))  # ... the latest at Berlin: 10:00 there, 17:00 in Taipei
        _visit(s, ids["Joon"], tpe, utc(2026, 2, 20, 9, 0))
    listing = client.get("/customers/").get_data(as_text=True)
    page = client.get(f"/customers/{ids['Mina']}").get_data(as_text=True)
    assert "<td>2026-03-01 08:30</td>" in page  # the customer page's table: the Taipei clock
    assert _row(listing, "Mina Park") == ("1", ["2026-03-01 08:30"])  # the list: the same clock
    assert _row(listing, "Joon Lee") == ("3", ["2026-03-02 10:00"])  # the newest visit's store, not the first's


def test_the_page_header_dates_the_first_and_last_purchase_at_their_stores(chain):
    client, db, ids, (tpe, ber) = chain
    with db.transaction() as s:
        for n, (store, ts) in enumerate([(tpe, utc(2026, 2, 28, 17, 30)),  # Taipei 03-01 01:30 (Berlin: 02-28)
                                         (ber, utc(2026, 3, 3, 12, 0)),
                                         (ber, utc(2026, 3, 5, 20, 0))]):  # Berlin 03-05 21:00 (Taipei: 03-06)
            s.add(Purchase(customer_id=ids["Mina"], item_id="latte", quantity=1, amount=4.5, ts=ts, store_id=store,
                           source="pos", idempotency_key=f"k{n}"))
    page = client.get(f"/customers/{ids['Mina']}").get_data(as_text=True)
    assert re.search(r"first purchase [\d-]+, last [\d-]+", page).group(0) == "first purchase 2026-03-01, last 2026-03-05"
    assert "3 purchase lines in 3 shop visits" in page
    joon = client.get(f"/customers/{ids['Joon']}").get_data(as_text=True)
    assert "first purchase" not in joon and " · added " in joon  # none bought: the date added, as before


def test_the_list_reads_the_visits_of_a_page_in_one_query(chain):
    client, db, ids, (tpe, ber) = chain

    def visit_queries() -> list[str]:
        seen: list[str] = []
        listen = lambda conn, cursor, sql, *a: seen.append(sql) if "visits" in sql.lower() else None  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listen)
        try:
            assert client.get("/customers/?show=all").status_code == 200
        finally:
            event.remove(db.engine, "before_cursor_execute", listen)
        return seen

    with db.transaction() as s:
        for cid in ids.values():
            _visit(s, cid, tpe, utc(2026, 3, 1, 0, 30))
    few = visit_queries()
    with db.transaction() as s:
        for n in range(30):
            c = Customer(display_name=f"Guest {n}", status="active", source="edge")
            s.add(c)
            s.flush()
            for day in (1, 2):
                _visit(s, c.id, tpe if n % 2 else ber, utc(2026, 3, day, 9, n))
    many = visit_queries()
    assert len(few) == len(many) == 1, many  # one query for the counts, last visits and their stores
    listing = client.get("/customers/?show=all").get_data(as_text=True)
    assert _row(listing, "Guest 7") == ("2", ["2026-03-02 17:07"])  # Taipei
    assert _row(listing, "Guest 8") == ("2", ["2026-03-02 10:08"])  # Berlin
