"""The dashboard shows money by the one rule the door uses (:func:`dangol_protocol.money.format_money`), and takes
only real ISO 4217 currencies: the CURRENCY setting and a store's currency on the Stores page.

Before: a KRW price read "4,500.00" on the dashboard and "₩4,500" at the door; "won" and "ZZZ" were saved as
currencies because they were three letters.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from dangol_cloud.models import CatalogueItem, CatalogueVersion, Customer, Purchase, Store, StoreSetting
from dangol_cloud.publishing import catalogue_messages
from dangol_cloud.settings import ConfigError, Settings, load_settings

from .test_cloud_web import csrf_of, sign_in, web  # noqa: F401 - the fixture


def _priced_item(db, currency: str, price: float) -> tuple[str, str]:
    """One store selling in ``currency`` and one item at ``price``; returns (store id, item id)."""
    with db.transaction() as s:
        store = Store(name="Seoul", ref="sel")
        s.add(store)
        s.flush()
        s.add(StoreSetting(store_id=store.id, currency=currency))
        item = CatalogueItem(ref="AMR", name="Americano", category="Coffee", price=price)
        s.add(item)
        s.flush()
        return store.id, item.id


@pytest.mark.parametrize("currency, price, shown, never", [("KRW", 4500, "₩4,500", "4,500.00"),
                                                           ("USD", 4.5, "$4.50", "4.50 USD")])
def test_prices_on_the_catalogue_and_item_pages(web, currency, price, shown, never):  # noqa: F811
    app, db = web
    _store, item = _priced_item(db, currency, price)
    client = app.test_client()
    sign_in(client)
    listing = client.get("/catalogue/").get_data(as_text=True)
    detail = client.get(f"/catalogue/{item}/about").get_data(as_text=True)
    for page in (listing, detail):
        assert shown in page and never not in page


def test_each_sale_is_shown_in_its_stores_currency(web):  # noqa: F811
    """The purchases list and a customer's recent purchases of a chain selling in won and dollars."""
    app, db = web
    seoul, item = _priced_item(db, "KRW", 4500)
    with db.transaction() as s:
        boston = Store(name="Boston", ref="bos")
        customer = Customer(display_name="Mina Park")
        s.add_all([boston, customer])
        s.flush()
        s.add(StoreSetting(store_id=boston.id, currency="USD"))
        at = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)
        s.add_all([Purchase(customer_id=customer.id, item_id=item, quantity=2, amount=9000, ts=at, store_id=seoul,
                            source="csv", idempotency_key="k1"),
                   Purchase(customer_id=customer.id, item_id=item, quantity=1, amount=4.5, ts=at, store_id=boston.id,
                            source="csv", idempotency_key="k2")])
        customer_id = customer.id
    client = app.test_client()
    sign_in(client)
    for page in (client.get("/purchases/").get_data(as_text=True),
                 client.get(f"/customers/{customer_id}").get_data(as_text=True)):
        assert ">₩9,000<" in page and ">$4.50<" in page and "9,000.00" not in page


def _set_currency(client, store_id: str, code: str) -> str:
    token = csrf_of(client.get("/stores/").get_data(as_text=True))
    return client.post(f"/stores/{store_id}/currency", data={"csrf_token": token, "currency": code},
                       follow_redirects=True).get_data(as_text=True)


def test_the_stores_page_takes_only_real_currencies(web):  # noqa: F811
    app, db = web
    store, _item = _priced_item(db, "EUR", 3.5)
    client = app.test_client()
    sign_in(client)
    for bad in ("won", "ZZZ", "XXX"):
        page = _set_currency(client, store, bad)
        assert f"{bad!r}" in page.replace("&#39;", "'") and "ISO 4217" in page
        with db.sessions() as s:
            assert s.get(StoreSetting, store).currency == "EUR"  # unchanged
    page = _set_currency(client, store, "krw")
    assert "amounts are shown in KRW" in page
    with db.sessions() as s:
        assert s.scalar(select(StoreSetting.currency).where(StoreSetting.store_id == store)) == "KRW"
    _set_currency(client, store, "")  # back to the CURRENCY setting
    with db.sessions() as s:
        assert s.get(StoreSetting, store).currency is None


def test_a_currency_saved_before_the_check_is_flagged_not_fatal(web):  # noqa: F811
    """A store's "WON" kept from before the check: its pages still render (the amount with the code as stored),
    the Stores page says to change it, and the catalogue is still built (the wire takes any three letters, so
    one store's old setting never stops the chain's publish)."""
    app, db = web
    store, item = _priced_item(db, "WON", 4500)
    client = app.test_client()
    sign_in(client)
    assert "WON\u00a04,500.00" in client.get(f"/catalogue/{item}/about").get_data(as_text=True)
    page = client.get("/stores/").get_data(as_text=True)
    assert f'id="bad-currency-{store}"' in page and "not an ISO 4217 code in use" in page
    with db.transaction() as s:
        s.add(CatalogueVersion(version=1, published_at=datetime.now(timezone.utc), items=[]))
    with db.sessions() as s:
        messages = list(catalogue_messages(s, [s.get(Store, store)], "EUR"))
    assert len(messages) == 1 and b'"currency":"WON"' in messages[0][1].replace(b" ", b"")


def test_the_currency_setting_must_be_a_real_code(tmp_path, monkeypatch):
    assert Settings(cloud_home=tmp_path, currency="krw", _env_file=None).currency == "KRW"
    monkeypatch.setenv("DANGOL_CURRENCY", "won")
    with pytest.raises(ConfigError) as err:
        load_settings(cloud_home=tmp_path)
    assert "'won'" in str(err.value) and "ISO 4217" in str(err.value)
