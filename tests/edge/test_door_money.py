"""The door shows prices by the one money rule the dashboard uses (:func:`dangol_protocol.money.format_money`):
₩4,500 and $4.50, on the house menu and in a regular's welcome, rendered by the real web app (no browser)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from dangol_edge.screen import Screen
from dangol_edge.web import create_app, format_price
from dangol_protocol import Catalogue
from dangol_protocol.money import format_money

NOW = datetime(2026, 6, 1, 12, 30, tzinfo=timezone.utc)


def _page(door, currency: str, price: float, welcome: bool) -> str:
    config, state, gallery, mina = door
    assert state.put_catalogue(Catalogue(store_id=uuid.uuid4(), version=1, published_at=NOW, currency=currency,
                                         items=[{"id": "americano", "name": "Americano", "category": "Coffee",
                                                 "price": price, "house": True}]))
    screen = Screen()
    if welcome:
        screen.show_welcome("Mina", [{"id": "americano"}], mina, seconds=60, own_picks=True)
    client = create_app(screen=screen, state=state, gallery=gallery, config=config).test_client()
    page = client.get("/", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert page.status_code == 200
    return page.get_data(as_text=True)


@pytest.mark.parametrize("welcome", [False, True], ids=["house", "welcome"])
@pytest.mark.parametrize("currency, price, shown", [("KRW", 4500, "₩4,500"), ("USD", 4.5, "$4.50")])
def test_the_door_shows_prices_by_the_shared_rule(door_with_mina, currency, price, shown, welcome):
    html = _page(door_with_mina, currency, price, welcome)
    assert ("Welcome back" in html) is welcome
    cell = f'<span class="price">{shown}</span>' if welcome else f'<span class="p">{shown}</span>'
    assert cell in html and "4,500.00" not in html


def test_format_price_is_the_shared_rule():
    assert format_price(4500, "KRW") == format_money(4500, "KRW") == "₩4,500"
    assert format_price(4.5, "USD") == format_money(4.5, "USD") == "$4.50"
    assert format_price(None, "KRW") == ""
