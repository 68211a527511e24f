"""The door takes the day-part's hour from the clock the cloud trained the day-parts in: ``catalogue/1`` carries
that IANA zone and the edge reads the hour of *that* zone, whatever the box's own zone is; an older cloud's
catalogue (no zone) leaves the box's local time in charge; an unknown zone is refused when the message arrives
(the protocol's rule for an invalid field), so the cached catalogue and the arrivals go on unchanged.

Also the other half of ``catalogue/1``'s change: it lists every menu item, the house page shows only those marked
``house``, and a customer's pick of any listed item is shown."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest

from dangol_edge.config import MQTTConfig
from dangol_edge.events import EventFactory, Outbox
from dangol_edge.menu_text import choose_picks
from dangol_edge.screen import Screen
from dangol_edge.sync import MQTTSync
from dangol_edge.tracker import Decision
from dangol_edge.web.formatting import house_menu
from dangol_edge.workers import ArrivalWorker, Stats
from dangol_protocol import Catalogue, Menu, catalogue_topic, dump_payload

STORE, DEVICE = uuid.uuid4(), uuid.uuid4()
INSTANT = datetime(2026, 6, 1, 12, 30, tzinfo=timezone.utc)  # 08:30 in New York, 13:30 in London, 21:30 in Seoul
ITEMS = [("croissant", "Croissant", "Bakery", True), ("scone", "Scone", "Bakery", True),
         ("bagel", "Bagel", "Bakery", False), ("soup", "Soup of the day", "Lunch", True),
         ("wine", "Glass of wine", "Evening", True)]
DAYPARTS = {"breakfast": ["bagel", "croissant"], "lunch": ["soup"], "evening": ["wine"]}


def catalogue(zone: str | None, version: int = 1) -> Catalogue:
    return Catalogue(store_id=STORE, version=version, published_at=INSTANT, timezone=zone,
                     items=[{"id": i, "name": n, "category": c, "price": 3.0, "house": h} for i, n, c, h in ITEMS])


def menu(customer_id: str) -> Menu:
    def picks(ids):
        return [{"item_id": i, "score": 1.0 - n / 10} for n, i in enumerate(ids)]
    return Menu(store_id=STORE, customer_id=uuid.UUID(customer_id), display_name="Mina", model_version="m1",
                generated_at=INSTANT, items=picks(["scone"]), dayparts={k: picks(v) for k, v in DAYPARTS.items()})


@pytest.fixture
def box_zone():
    """Set the process's (the box's OS) time zone for the test; the original one is restored afterwards."""
    before = os.environ.get("TZ")

    def set_zone(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_zone
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize("box", ["UTC", "Europe/London", "Asia/Seoul", "America/Los_Angeles", "America/New_York"])
def test_the_catalogues_zone_decides_the_daypart_whatever_the_boxs_zone(box, box_zone):
    box_zone(box)
    cid = str(uuid.uuid4())
    cat = catalogue("America/New_York")
    wall_clock = datetime.fromtimestamp(INSTANT.timestamp())  # what a naive datetime.now() says on this box
    for at in (INSTANT, wall_clock):
        assert [i.id for i in choose_picks(menu(cid), cat, limit=6, at=at)] == ["bagel", "croissant", "scone"]
    assert [i.id for i in choose_picks(menu(cid), catalogue("Asia/Seoul"), limit=6, at=INSTANT)] == ["wine", "scone"]
    # (each day-part's picks topped up from the all-day list, ["scone"])


@pytest.mark.parametrize("box, expected", [("America/New_York", ["bagel", "croissant", "scone"]),
                                           ("UTC", ["soup", "scone"]), ("Europe/London", ["soup", "scone"]),
                                           ("Asia/Seoul", ["wine", "scone"])])
def test_an_older_clouds_catalogue_without_a_zone_leaves_the_boxs_clock_in_charge(box, expected, box_zone):
    box_zone(box)
    got = choose_picks(menu(str(uuid.uuid4())), catalogue(None), limit=6, at=INSTANT)
    assert [i.id for i in got] == expected


@pytest.fixture
def door(door_with_mina):
    config, state, gallery, mina = door_with_mina
    assert state.put_menu(menu(mina))
    return door_with_mina


def _arrive(door, now) -> list[str]:
    config, state, gallery, mina = door
    worker = ArrivalWorker(config, gallery, state, Screen(), EventFactory(DEVICE), Outbox(DEVICE, state),
                           queue.Queue(), Stats(), threading.Event(), now=now)
    worker.handle(Decision(kind="known", track_id=1, ts=1.0, first_ts=1.0, votes=3, frames=3, customer_id=mina,
                           score=0.8, arrival=True))
    event = state.pending()[-1]
    return json.loads(event["payload"])["shown_items"]


def test_the_arrival_worker_greets_with_the_daypart_of_the_catalogues_zone(door, box_zone):
    box_zone("UTC")
    config, state, gallery, mina = door
    assert state.put_catalogue(catalogue("America/New_York"))
    assert _arrive(door, lambda: INSTANT) == ["bagel", "croissant", "scone"]   # 08:30 in New York: breakfast
    assert state.put_catalogue(catalogue("Asia/Seoul", version=2))
    assert _arrive(door, lambda: INSTANT) == ["wine", "scone"]                 # 21:30 in Seoul: evening


def test_the_arrival_workers_own_clock_is_an_instant(door):
    config, state, gallery, mina = door
    worker = ArrivalWorker(config, gallery, state, Screen(), EventFactory(DEVICE), Outbox(DEVICE, state),
                           queue.Queue(), Stats(), threading.Event())
    assert worker.now().utcoffset() is not None   # an aware time: converted to the catalogue's zone


def test_a_catalogue_with_an_unknown_zone_is_dropped_and_the_cache_kept(door, caplog):
    config, state, gallery, mina = door
    assert state.put_catalogue(catalogue("America/New_York"))
    sync = MQTTSync(MQTTConfig(url="mqtt://127.0.0.1:1"), DEVICE, STORE, state)
    hostile = json.loads(dump_payload(catalogue("America/New_York", version=2)))
    for zone in ("Mars/Olympus_Mons", "../../../etc/passwd", "x" * 5000):
        hostile["timezone"] = zone
        with caplog.at_level(logging.WARNING, logger="dangol_edge.sync"):
            assert sync.handle_message(catalogue_topic(STORE), json.dumps(hostile).encode()) == "invalid"
        assert "timezone" in caplog.records[-1].getMessage()
    assert sync.invalid_messages == 3
    cached = state.catalogue()
    assert (cached.version, cached.timezone) == (1, "America/New_York")
    assert _arrive(door, lambda: INSTANT) == ["bagel", "croissant", "scone"]   # arrivals go on with the cached zone


def test_a_zone_the_box_cannot_resolve_falls_back_to_its_own_clock(box_zone, caplog):
    """Defence in depth (a zone is validated on receipt, so this needs a catalogue built without validation,
    e.g. a tz database that lost the zone since): the pick never fails, the box's clock decides, logged."""
    box_zone("UTC")
    broken = Catalogue.model_construct(**{**dict(catalogue(None)), "timezone": "Mars/Olympus_Mons"})
    with caplog.at_level(logging.WARNING, logger="dangol_edge.menu_text"):
        got = choose_picks(menu(str(uuid.uuid4())), broken, limit=6, at=INSTANT)
        assert [i.id for i in got] == ["soup", "scone"]
    assert "Mars/Olympus_Mons" in caplog.text


def test_the_house_page_shows_the_house_items_and_picks_use_every_item():
    cat = catalogue("America/New_York")
    assert [(g["name"], [i["id"] for i in g["items"]]) for g in house_menu(cat)] == [
        ("Bakery", ["croissant", "scone"]), ("Lunch", ["soup"]), ("Evening", ["wine"])]   # not the bagel
    assert [i.id for i in choose_picks(None, cat, limit=2, at=INSTANT)] == ["croissant", "scone"]  # cold start
    assert "bagel" in [i.id for i in choose_picks(menu(str(uuid.uuid4())), cat, limit=6, at=INSTANT)]
