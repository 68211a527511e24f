"""Small known defects of 7 December, replayed in headless Chromium (``tests/browser.py``):

3. On the menu catalogue, the bulk actions "Mark sold out" and "Set category" acted at once, while "Retire…" asks
   first: an owner who mis-ticked 30 items marked them all sold out at the doors. Both now ask first, saying how
   many items and which, and only the confirmed post acts (Cancel changes nothing).
4. The revenue chart's axis label was a bare number ("max 13,500"): it is now in the store's currency ("max ₩13,500").
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.models import CatalogueItem, Customer, Purchase, StoreSetting
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, add_owner, add_store_and_device, serving, sign_in_owner

pytestmark = pytest.mark.slow
TIMEOUT_MS = 20_000
#: Three days of sales in won: 9,000, 13,500 and 4,500.
SALES = ((1, 2, 9000.0), (2, 3, 13500.0), (3, 1, 4500.0))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The dashboard with the owner, one store selling in won (KRW) and its device, five menu items ``Conf 1``…
    ``Conf 5`` (category Coffee, available) and three days of a regular's purchases with amounts; served."""
    tmp = tmp_path_factory.mktemp("dec7")
    url = f"sqlite:///{tmp / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    store_id, _device = add_store_and_device(db)
    with db.transaction() as s:
        s.add(StoreSetting(store_id=store_id, currency="KRW"))
        items = [CatalogueItem(ref=f"conf-{n}", name=f"Conf {n}", category="Coffee", price=4500, tags=[])
                 for n in range(1, 6)]
        customer = Customer(display_name="Mina Park")
        s.add_all([*items, customer])
        s.flush()
        start = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
        s.add_all(Purchase(customer_id=customer.id, item_id=items[0].id, quantity=quantity, amount=amount,
                           ts=start + timedelta(days=day), store_id=store_id, source="csv",
                           idempotency_key=f"dec7-{day}")
                  for day, quantity, amount in SALES)
    settings = Settings(cloud_home=tmp / "home", database_url=url, secret_key="dec7", _env_file=None)
    with serving(create_app(settings, db=db)) as base:
        yield SimpleNamespace(base=base, db=db, store=store_id)
    db.dispose()


def _page(browser, site):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    sign_in_owner(page, site.base)
    return page


def _flashes(page) -> str:
    return " ".join(page.locator(".flash").all_inner_texts())


def _count(db, *where) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(CatalogueItem).where(CatalogueItem.ref.like("conf-%"),
                                                                              *where))


def _tick(page, site, *names: str) -> None:
    page.goto(site.base + "/catalogue/?q=conf")
    for name in names:
        page.check(f"input[aria-label='Select {name}']")


def test_mark_sold_out_and_set_category_ask_first_naming_the_items(browser, site):
    page = _page(browser, site)
    sold_out = CatalogueItem.available.is_(False)

    _tick(page, site, "Conf 1", "Conf 3")
    page.click("#bulk-soldout")
    assert page.locator("#confirm").count() == 1, _flashes(page)  # before: "2 item(s) marked sold out" at once
    question = page.inner_text("#confirm")
    assert "Mark 2 item(s) sold out?" in question and "Conf 1, Conf 3" in question and "Conf 2" not in question
    assert _count(site.db, sold_out) == 0                        # nothing done by the first click
    page.click("#confirm-cancel")
    assert _count(site.db, sold_out) == 0 and page.url.startswith(site.base + "/catalogue/")

    _tick(page, site, "Conf 1", "Conf 3")
    page.click("#bulk-soldout")
    page.click("#confirm-button")
    assert "2 item(s) marked sold out" in _flashes(page)
    with site.db.sessions() as s:
        assert sorted(s.scalars(select(CatalogueItem.name).where(sold_out))) == ["Conf 1", "Conf 3"]

    _tick(page, site, "Conf 2", "Conf 4", "Conf 5")
    page.fill("input[name=new_category]", "Pastry")
    page.click("#bulk-category")
    question = page.inner_text("#confirm")
    assert "Move 3 item(s) to “Pastry”?" in question and "Conf 2, Conf 4, Conf 5" in question
    assert _count(site.db, CatalogueItem.category == "Pastry") == 0
    page.click("#confirm-button")
    assert "3 item(s) moved to “Pastry”" in _flashes(page)
    with site.db.sessions() as s:
        assert sorted(s.scalars(select(CatalogueItem.name).where(CatalogueItem.category == "Pastry"))) == [
            "Conf 2", "Conf 4", "Conf 5"]
    assert _count(site.db, CatalogueItem.category == "Coffee") == 2

    page.goto(site.base + "/catalogue/?q=conf")                   # mark available stays one click (nothing lost)
    page.check("#scope-page")
    page.click("#bulk-available")
    assert page.locator("#confirm").count() == 0 and "5 item(s) marked available" in _flashes(page)
    assert _count(site.db, sold_out) == 0
    page.context.close()


def test_the_revenue_chart_axis_is_in_the_store_currency(browser, site):
    page = _page(browser, site)
    page.goto(site.base + "/analytics/?all=1")
    chart = page.locator("svg.trend[aria-label='Revenue over time']")
    assert chart.count() == 1
    axis = chart.locator("text.lbl").first.text_content()
    assert axis == "max ₩13,500", axis
    visits = page.locator("svg.trend[aria-label='Visits over time'] text.lbl").first.text_content()
    assert "₩" not in visits                                       # visits are counts, not money
    page.context.close()
