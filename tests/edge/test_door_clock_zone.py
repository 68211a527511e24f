"""The door's greeting and clock keep the café's time, as its picks do.

``catalogue/1`` may carry ``timezone``, the café's zone (docs/mqtt.md: the door reads the day-part "whatever the
box's own zone"). The picks follow it (:func:`dangol_edge.menu_text.daypart_hour`); so do the greeting of the
welcome ("Good morning") and the house menu's clock, both in the page the server renders and in the page's own
JavaScript clock, which ticks every 10 s in the kiosk's Chromium (the box's zone) and must show the café's time,
across a daylight-saving change too. Without a zone in the catalogue (an older cloud) the box's local time stays
in charge, as before.

A box left on UTC in a Seoul café greeted a customer at 05:33 with "Good evening" and showed 20:33.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

import dangol_edge.web.menu as menu_module
from dangol_edge.screen import Screen
from dangol_edge.web import DisplayServer, create_app
from dangol_protocol import Catalogue
from tests.edge.test_daypart_clock import box_zone  # noqa: F401  (fixture)

SEOUL_DAWN = datetime(2026, 6, 1, 20, 33, 20, tzinfo=timezone.utc)  # 05:33 in Seoul (next day), 21:33 in London
NY_DST = datetime(2026, 3, 8, 6, 58, 20, tzinfo=timezone.utc)      # 01:58 EST; at 07:00 UTC New York is on 03:00 EDT


def catalogue(zone: str | None, version: int = 1) -> Catalogue:
    return Catalogue(store_id="3f1c0a52-0000-4000-8000-000000000001", version=version, published_at=SEOUL_DAWN,
                     timezone=zone, items=[{"id": "latte", "name": "Latte", "category": "Coffee", "price": 4.5,
                                            "house": True}])


@pytest.fixture
def frozen(monkeypatch):
    """Set the instant the web app's clock reads (``dangol_edge.web.menu.utc_now``)."""
    def freeze(at: datetime) -> None:
        monkeypatch.setattr(menu_module, "utc_now", lambda: at)
    return freeze


def _page(door, screen: Screen) -> str:
    config, state, gallery, mina = door
    return create_app(screen=screen, state=state, gallery=gallery, config=config).test_client().get("/").get_data(
        as_text=True)


def _greeting(html: str) -> str:
    return re.search(r'class="kicker">.*?</svg>\s*([^<]+)</p>', html, re.S).group(1).strip()


def _clock(html: str) -> str:
    return re.search(r'<time class="clock">([^<]+)</time>', html).group(1)


@pytest.mark.parametrize("box, zone, at, hello, shown", [
    ("UTC", "Asia/Seoul", SEOUL_DAWN, "Good morning", "05:33"),                      # the review's case
    ("Asia/Seoul", "Europe/London", SEOUL_DAWN - timedelta(hours=12), "Good morning", "09:33"),  # BST
    ("UTC", "America/New_York", NY_DST + timedelta(minutes=3), "Nice to see you", "03:01"),      # just after DST
    ("America/New_York", None, SEOUL_DAWN, "Good afternoon", "16:33"),               # no zone: the box's clock
    ("Asia/Seoul", None, SEOUL_DAWN, "Good morning", "05:33"),
])
def test_greeting_and_clock_follow_the_catalogues_zone(door_with_mina, box_zone, frozen,  # noqa: F811
                                                        box, zone, at, hello, shown):
    box_zone(box)
    frozen(at)
    config, state, gallery, mina = door_with_mina
    assert state.put_catalogue(catalogue(zone))
    screen = Screen()
    screen.show_welcome("Mina", [], mina, 30.0)
    assert _greeting(_page(door_with_mina, screen)) == hello
    screen.show_house()
    assert _clock(_page(door_with_mina, screen)) == shown


# --- the page's own clock, in headless Chromium on the box's zone --------------------------------------------
@pytest.fixture
def kiosk(door_with_mina, browser, box_zone, frozen):  # noqa: F811
    """``open(box zone, catalogue zone, instant)``: the door's web server and a kiosk page on ``/`` (house menu),
    the browser in the box's zone and on a fake clock started at the instant the server reads too."""
    config, state, gallery, mina = door_with_mina
    servers, contexts = [], []

    def open_(box: str, zone: str | None, at: datetime):
        box_zone(box)
        frozen(at)
        assert state.put_catalogue(catalogue(zone))
        screen = Screen()
        server = DisplayServer(create_app(screen=screen, state=state, gallery=gallery, config=config), "127.0.0.1", 0)
        server.start()
        servers.append(server)
        context = browser.new_context(viewport={"width": 1280, "height": 720}, timezone_id=box)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(5_000)
        page.clock.install(time=at)
        page.goto(server.url + "/")
        page.wait_for_function("document.body.dataset.live === '1'")
        return page

    yield open_
    for c in contexts:
        c.close()
    for s in servers:
        s.stop()


def _shown(page) -> str:
    return page.locator(".clock").text_content()


def test_the_page_clock_keeps_seoul_time_on_a_utc_box(kiosk):
    page = kiosk("UTC", "Asia/Seoul", SEOUL_DAWN)
    assert _shown(page) == "05:33"
    page.clock.run_for(60_000)  # the page's own 10 s tick, in the browser's (the box's) zone
    assert _shown(page) == "05:34"


def test_the_page_clock_crosses_daylight_saving_time(kiosk):
    page = kiosk("UTC", "America/New_York", NY_DST)
    assert _shown(page) == "01:58"
    page.clock.run_for(120_000)  # 07:00:20 UTC: clocks in New York went from 01:59:59 EST to 03:00 EDT
    assert _shown(page) == "03:00"


def test_without_a_zone_the_page_shows_the_boxs_time(kiosk):
    page = kiosk("America/New_York", None, SEOUL_DAWN)
    assert _shown(page) == "16:33"
    page.clock.run_for(60_000)
    assert _shown(page) == "16:34"


def test_a_new_zone_in_the_catalogue_reaches_the_page(kiosk, door_with_mina):
    page = kiosk("UTC", "Asia/Seoul", SEOUL_DAWN)
    config, state, gallery, mina = door_with_mina
    assert state.put_catalogue(catalogue("Europe/London", version=2))
    page.wait_for_function("document.querySelector('.clock').textContent === '21:33'")  # the server's render
    page.clock.run_for(60_000)
    assert _shown(page) == "21:34"  # and the page's tick


def test_a_zone_the_browser_does_not_know_falls_back_to_the_offset_the_server_sent(kiosk):
    """Chromium's own time zone data (ICU) may lack a zone the box's Python knows: the page then adds the zone's UTC
    offset the server sent with the screen (exact until the zone's next daylight-saving change)."""
    page = kiosk("UTC", "Asia/Seoul", SEOUL_DAWN)
    page.evaluate("document.getElementById('stage').dataset.zone = 'Mars/Olympus_Mons'")
    page.clock.run_for(60_000)
    assert _shown(page) == "05:34"
