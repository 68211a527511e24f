"""Two defects of the door display found by the review of 7 December.

1. A same-version catalogue correction (the cloud re-publishes the newest version with a store's new currency, zone or
   store prices: ``cloud/publishing.py``) is stored by :meth:`~dangol_edge.state.StateStore.put_catalogue` but used to
   reach the door's page only with the next version number: the page and its event stream keyed on the version.
   They now key on the cached catalogue's content revision (:meth:`StateStore.catalogue_with_revision`).
2. A day-part list whose picks are all sold out used to show no picks (and a partly sold-out one stayed short): the
   day-part list is now filtered first and topped up from the all-day list (:func:`dangol_edge.menu_text.choose_picks`).

The page in headless Chromium (Playwright), a real StateStore, Screen and Gallery in tmp_path.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone

import pytest

from dangol_edge.config import DisplayConfig, EdgeConfig
from dangol_edge.gallery import Gallery
from dangol_edge.menu_text import choose_picks
from dangol_edge.screen import Screen
from dangol_edge.state import StateStore
from dangol_edge.web import DisplayServer, create_app
from dangol_protocol import Catalogue, Menu
from tests.browser import chromium_missing

STORE = str(uuid.uuid4())
ITEMS = [("Coffee", "Espresso", 2.80), ("Coffee", "Flat white", 3.60), ("Bakery", "Butter croissant", 3.10)]
ID = {name: str(uuid.uuid5(uuid.NAMESPACE_URL, name)) for _, name, _ in ITEMS}


def catalogue(version: int, currency: str = "EUR", zone: str | None = None, published: str = "08:00") -> dict:
    """A ``catalogue/1`` payload of this store (every item on the house menu)."""
    return {"schema": "catalogue/1", "store_id": STORE, "version": version, "currency": currency, "timezone": zone,
            "published_at": f"2026-12-07T{published}:00+00:00",
            "items": [{"id": ID[name], "name": name, "category": cat, "price": price if currency == "EUR" else
                       round(price * 1400, -2), "description": "", "tags": [], "photo_url": None, "available": True,
                       "house": True} for cat, name, price in ITEMS]}


# --- 1. the catalogue's content revision ------------------------------------------------------------------------
def test_the_store_gives_a_content_revision_that_a_same_version_correction_changes(tmp_path):
    state = StateStore(tmp_path / "state.sqlite").open()
    try:
        assert state.catalogue_with_revision() == (None, None)
        assert state.put_catalogue(catalogue(3))
        cat, first = state.catalogue_with_revision()
        assert cat.version == 3 and cat.currency == "EUR" and isinstance(first, str) and first
        assert not state.put_catalogue(catalogue(3, published="09:00"))   # a re-publication: same content
        assert state.catalogue_with_revision()[1] == first
        assert state.put_catalogue(catalogue(3, currency="KRW"))        # a correction: same version
        cat, second = state.catalogue_with_revision()
        assert cat.currency == "KRW" and second != first
        assert state.put_catalogue(catalogue(3, currency="KRW", zone="Asia/Seoul"))
        third = state.catalogue_with_revision()[1]
        assert third not in (first, second)
        state.close()
        reopened = StateStore(tmp_path / "state.sqlite").open()   # the revision is the stored content's
        try:
            assert reopened.catalogue_with_revision()[1] == third
        finally:
            reopened.close()
    finally:
        state.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if (msg := chromium_missing()):
        pytest.fail(msg, pytrace=False)
    tmp = tmp_path_factory.mktemp("door")
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("DANGOL_") and k != "DANGOL_GALLERY_KEY"]:
            mp.delenv(k)
        config = EdgeConfig(home=tmp / "home", display=DisplayConfig(welcome_s=30.0, picks=6))
    state = StateStore(config.state_path).open()
    gallery = Gallery(config.gallery_path, "0" * 64).open()
    screen = Screen()
    server = DisplayServer(create_app(screen=screen, state=state, gallery=gallery, config=config), "127.0.0.1", 0)
    server.start()
    yield {"state": state, "screen": screen, "server": server}
    server.stop()
    gallery.close()
    state.close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    p = context.new_page()
    p.set_default_timeout(5_000)
    yield p
    context.close()


@pytest.mark.slow
def test_a_same_version_correction_reaches_the_open_page(site, page):
    """The house menu's prices and the clock's zone follow a correction of the same version within seconds."""
    state, screen = site["state"], site["screen"]
    screen.show_house()
    assert state.put_catalogue(catalogue(3))
    page.goto(site["server"].url + "/")
    page.wait_for_function("document.body.dataset.live === '1'")
    assert "€2.80" in page.inner_text("#stage") and page.eval_on_selector("#stage", "s => s.dataset.zone") == ""

    assert state.put_catalogue(catalogue(3, currency="KRW"))   # the cloud's re-publish: the store now sells in won
    page.wait_for_function("document.getElementById('stage').innerText.includes('₩')", timeout=4000)
    assert "₩3,900" in page.inner_text("#stage") and "€" not in page.inner_text("#stage")

    assert state.put_catalogue(catalogue(3, currency="KRW", zone="Asia/Seoul"))   # and its zone was set
    page.wait_for_function("document.getElementById('stage').dataset.zone === 'Asia/Seoul'", timeout=4000)


@pytest.mark.slow
def test_a_same_version_correction_reprices_the_welcome_on_show(site, page):
    state, screen = site["state"], site["screen"]
    assert state.put_catalogue(catalogue(4))
    page.goto(site["server"].url + "/")
    page.wait_for_function("document.body.dataset.live === '1'")
    screen.show_welcome("Mina", [{"id": ID["Flat white"], "name": "Flat white", "price": 3.6}], str(uuid.uuid4()),
                        30.0)
    page.wait_for_function("document.getElementById('stage').innerText.includes('Welcome back, Mina')")
    assert "€3.60" in page.inner_text("#stage")
    assert state.put_catalogue(catalogue(4, currency="KRW"))
    page.wait_for_function("document.getElementById('stage').innerText.includes('₩5,000')", timeout=4000)
    assert "Welcome back, Mina" in page.inner_text("#stage")
    screen.show_house()


# --- 2. a day-part list topped up from the all-day list ---------------------------------------------------------
BREAKFAST = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)   # 08:00 on the catalogue's clock (UTC): breakfast


def tiny_catalogue(sold_out: tuple[str, ...] = ()) -> Catalogue:
    """Items A–E, all priced, on a UTC clock; ``sold_out`` marked unavailable."""
    return Catalogue(store_id=STORE, version=1, currency="EUR", timezone="UTC", published_at=BREAKFAST,
                     items=[{"id": i, "name": i, "category": "c", "price": 3.0, "available": i not in sold_out}
                            for i in "ABCDE"])


def tiny_menu(all_day: str, breakfast: str | None, personal: bool = True) -> Menu:
    """A menu whose picks give their list as reason (``"all-day"`` / ``"breakfast"``), so where each came from shows."""
    def picks(ids, why):
        return [{"item_id": i, "score": 1.0 - n / 10, "reasons": [f"{why} {i}"]} for n, i in enumerate(ids)]
    return Menu(store_id=STORE, customer_id=uuid.uuid4(), model_version="m", generated_at=BREAKFAST,
                items=picks(all_day, "all-day"), personal=personal,
                dayparts=None if breakfast is None else {"breakfast": picks(breakfast, "breakfast")})


def ids(picks) -> list[str]:
    return [i.id for i in picks]


def test_a_sold_out_daypart_list_falls_back_to_the_all_day_picks():
    got = choose_picks(tiny_menu("ABCD", "A"), tiny_catalogue(sold_out=("A",)), limit=3, at=BREAKFAST)
    assert ids(got) == ["B", "C", "D"] and got.own            # before the fix: []
    assert got.reasons == {"B": ["all-day B"], "C": ["all-day C"], "D": ["all-day D"]}


def test_a_partly_sold_out_daypart_list_is_topped_up_without_duplicates():
    # breakfast: A sold out, X not in the catalogue, E kept; then the all-day picks B, E (already there), C
    got = choose_picks(tiny_menu("BEC", "AXE"), tiny_catalogue(sold_out=("A",)), limit=3, at=BREAKFAST)
    assert ids(got) == ["E", "B", "C"]
    assert got.reasons == {"E": ["breakfast E"], "B": ["all-day B"], "C": ["all-day C"]}   # each from its own list


def test_the_top_up_never_offers_a_disliked_or_sold_out_item_and_stops_at_the_limit():
    cat = tiny_catalogue(sold_out=("A", "D"))
    assert ids(choose_picks(tiny_menu("BCDE", "A"), cat, limit=6, at=BREAKFAST, disliked={"C"})) == ["B", "E"]
    assert ids(choose_picks(tiny_menu("ABCDE", "EB"), cat, limit=2, at=BREAKFAST)) == ["E", "B"]   # full: no top-up
    assert ids(choose_picks(tiny_menu("ABCDE", "E"), cat, limit=1, at=BREAKFAST)) == ["E"]
    assert ids(choose_picks(tiny_menu("ABCDE", "A"), cat, limit=0, at=BREAKFAST)) == []
    assert choose_picks(tiny_menu("BC", "A"), None, limit=3, at=BREAKFAST) == []   # no catalogue: nothing


def test_other_hours_menus_without_dayparts_and_whose_picks_they_are():
    cat = tiny_catalogue(sold_out=("A",))
    noon = BREAKFAST.replace(hour=12)   # lunch: no lunch list, the all-day picks
    assert ids(choose_picks(tiny_menu("ABCD", "E"), cat, limit=3, at=noon)) == ["B", "C", "D"]
    assert ids(choose_picks(tiny_menu("DCB", None), cat, limit=6, at=BREAKFAST)) == ["D", "C", "B"]
    cold = choose_picks(tiny_menu("BC", "A", personal=False), cat, limit=3, at=BREAKFAST)
    assert ids(cold) == ["B", "C"] and not cold.own                  # the cloud's cold-start list: not "your usual"
    house = choose_picks(None, cat, limit=2, at=BREAKFAST)
    assert ids(house) == ["B", "C"] and not house.own                # no menu: the house items (cold start)
