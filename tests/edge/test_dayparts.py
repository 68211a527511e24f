"""The door shows the picks of the current day-part (issue 12 item 3), chosen in one place
(:mod:`dangol_edge.menu_text`) from the protocol's objects the cache keeps; the clock is injected."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from datetime import datetime, timezone

import pytest

from dangol_edge.events import EventFactory, Outbox
from dangol_edge.menu_text import available_items, choose_picks
from dangol_edge.screen import Screen
from dangol_edge.tracker import Decision
from dangol_edge.web import create_app
from dangol_edge.workers import ArrivalWorker, Stats
from dangol_protocol import Catalogue, Menu

STORE, DEVICE = uuid.uuid4(), uuid.uuid4()
ITEMS = [("croissant", "Croissant", "Bakery", 2.5, True), ("porridge", "Porridge", "Breakfast", 4.0, True),
         ("scone", "Scone", "Bakery", 2.9, True), ("iced-tea", "Iced tea", "Tea", 3.5, True),
         ("latte", "Caffè latte", "Coffee", 3.8, True), ("croffle", "Croffle", "Bakery", 4.5, False)]


def catalogue(version: int = 1) -> Catalogue:
    return Catalogue(store_id=STORE, version=version, published_at=datetime(2026, 12, 1, tzinfo=timezone.utc),
                     items=[{"id": i, "name": n, "category": c, "price": p, "available": a}
                            for i, n, c, p, a in ITEMS])


def menu(customer_id: str, dayparts: dict | None) -> Menu:
    def picks(ids):
        return [{"item_id": i, "score": 1.0 - n / 10} for n, i in enumerate(ids)]
    return Menu(store_id=STORE, customer_id=uuid.UUID(customer_id), display_name="Mina", model_version="m1",
                generated_at=datetime(2026, 12, 1, 3, tzinfo=timezone.utc), items=picks(["latte"]),
                dayparts=None if dayparts is None else {k: picks(v) for k, v in dayparts.items()})


MORNING = ["croffle", "croissant", "porridge"]   # croffle is sold out
AFTERNOON = ["scone", "iced-tea"]


@pytest.mark.parametrize("hour, expected", [(8, ["croissant", "porridge", "latte"]),   # topped up from all day
                                            (15, ["scone", "iced-tea", "latte"]),
                                            (12, ["latte"]), (2, ["latte"])])   # no lunch/evening slot: all day
def test_the_current_dayparts_picks_are_chosen(hour, expected):
    m = menu(str(uuid.uuid4()), {"breakfast": MORNING, "afternoon": AFTERNOON})
    got = choose_picks(m, catalogue(), limit=6, at=datetime(2026, 12, 2, hour, 0))
    assert [i.id for i in got] == expected


def test_the_rules_of_the_one_place():
    cid = str(uuid.uuid4())
    cat = catalogue()
    assert [i.id for i in choose_picks(menu(cid, None), cat, limit=6, at=datetime(2026, 12, 2, 8))] == ["latte"]
    assert [i.id for i in choose_picks(None, cat, limit=2, at=datetime(2026, 12, 2, 8))] == ["croissant", "porridge"]
    assert choose_picks(menu(cid, None), None, limit=6, at=datetime(2026, 12, 2, 8)) == []   # no catalogue
    assert [i.id for i in available_items(["scone", "scone", "latte", "croffle", "gone"], cat, 6,
                                          disliked=["latte"])] == ["scone"]
    assert available_items(["scone", "latte"], cat, 1) == [cat.items[2]]


@pytest.fixture
def door(door_with_mina):
    """Gallery with Mina, the cache with catalogue + her menu (with day-parts)."""
    config, state, gallery, mina = door_with_mina
    assert state.put_catalogue(catalogue())
    assert state.put_menu(menu(mina, {"breakfast": MORNING, "afternoon": AFTERNOON}))
    return door_with_mina


@pytest.mark.parametrize("hour, expected", [(8, ["Croissant", "Porridge", "Caffè latte"]),
                                            (15, ["Scone", "Iced tea", "Caffè latte"])])   # the all-day pick last
def test_the_door_screen_shows_the_dayparts_picks(door, hour, expected):
    config, state, gallery, mina = door
    screen = Screen()
    worker = ArrivalWorker(config, gallery, state, screen, EventFactory(DEVICE), Outbox(DEVICE, state),
                           queue.Queue(), Stats(), threading.Event(), now=lambda: datetime(2026, 12, 2, hour, 0))
    worker.handle(Decision(kind="known", track_id=1, ts=1.0, first_ts=1.0, votes=3, frames=3, customer_id=mina,
                           score=0.8, arrival=True))
    (event,) = state.pending()
    ids = [i for i, n, *_ in ITEMS if n in expected]
    assert json.loads(event["payload"])["shown_items"] == ids   # what the cloud is told was shown
    app = create_app(screen=screen, state=state, gallery=gallery, config=config)
    client = app.test_client()
    v = client.get("/api/state").get_json()
    assert v["screen"] == "welcome" and [p["name"] for p in v["picks"]] == expected
    page = client.get("/").get_data(as_text=True)
    found = [page.split("Welcome back")[-1].find(name) for name in expected]   # the welcome's picks, in order
    assert -1 not in found and found == sorted(found)
