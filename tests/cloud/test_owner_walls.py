"""Walls of a café owner's first hour (UX review), each replayed — in headless Chromium where the page is the point:

A. every time the dashboard shows is in its store's own zone (Purchases, Today, Analytics' data span);
B. "you often have it at breakfast" only for a customer who did have it at breakfast (a tiny history, by hand);
C. a fresh install's sign-in page, and ``dangol-cloud serve``, say how the first account is made;
D. "One menu item per category" and "Take off the menu" over many products ask first; the catalogue's bulk
   actions take every item on the page (or in the list) without ticking each one;
E. everyone chooses their own password (/account/password, linked from their e-mail in the sidebar).
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import event, func, select

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.menu_mapping import on_menu, register_products
from dangol_cloud.models import (CatalogueItem, Customer, ProductMapping, Purchase, Store, StoreSetting, User,
                                 UserStore, Visit)
from dangol_cloud.recommend import RecommenderConfig, train
from dangol_cloud.recommend.dayparts import DayPartProfile
from dangol_cloud.security import hash_password
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, STORE_TOKEN, add_owner, add_store_and_device, serving, sign_in_owner

pytestmark = pytest.mark.slow
TIMEOUT_MS = 20_000
SEOUL = ZoneInfo("Asia/Seoul")
STAFF, STAFF_PW = "barista@cafe.example", "barista pass 1"
GUESSER, GUESSER_PW = "guesser@cafe.example", "guesser pass 1"
HINT = "dangol-cloud create-user you@example.com --role owner"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The dashboard (``TIMEZONE`` left at UTC) with one store on Seoul time and its door device, the owner, a
    barista and a second staff user, a POS menu item ``latte``; served for the browser."""
    tmp = tmp_path_factory.mktemp("walls")
    url = f"sqlite:///{tmp / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    store_id, device_id = add_store_and_device(db)
    with db.transaction() as s:
        s.add(StoreSetting(store_id=store_id, timezone="Asia/Seoul"))
        s.add(CatalogueItem(ref="latte", name="Latte", price=4.5, tags=[]))
        for email, password in ((STAFF, STAFF_PW), (GUESSER, GUESSER_PW)):
            user = User(email=email, password_hash=hash_password(password), role="staff")
            s.add(user)
            s.flush()
            s.add(UserStore(user_id=user.id, store_id=store_id))
    settings = Settings(cloud_home=tmp / "home", database_url=url, secret_key="owner-walls", login_max_failures=3,
                        _env_file=None)
    with serving(create_app(settings, db=db)) as base:
        yield SimpleNamespace(base=base, db=db, store=store_id, device=device_id)
    db.dispose()


def _page(browser, site, email=None, password=None):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    if email is None:
        sign_in_owner(page, site.base)
    else:
        page.goto(site.base + "/login")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(site.base + "/")
    return page


def _flashes(page) -> str:
    return " ".join(page.locator(".flash").all_inner_texts())


# --- A. the store's clock --------------------------------------------------------------------------------------
def test_times_are_shown_on_the_stores_own_clock(browser, site):
    body = {"customer": "loyalty-7", "ts": "2026-12-07T08:30:00+09:00", "lines": [{"item": "latte", "quantity": 1}]}
    request = urllib.request.Request(site.base + "/api/v1/purchases", method="POST", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {STORE_TOKEN}", "Idempotency-Key": "walls-1",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201
    start = datetime.now(SEOUL).replace(hour=0, minute=0, second=0, microsecond=0)  # midnight in Seoul, today
    with site.db.transaction() as s:
        latte = s.scalar(select(CatalogueItem.id).where(CatalogueItem.ref == "latte"))
        customer = Customer(display_name="Mina", status="active", source="import")
        s.add(customer)
        s.flush()
        # the first sale of a Ta-Feng-like history: 2000-11-01 00:30 in Seoul is 2000-10-31 15:30 UTC
        s.add(Purchase(customer_id=customer.id, item_id=latte, quantity=1, store_id=site.store, source="csv",
                       ts=datetime(2000, 10, 31, 15, 30, tzinfo=timezone.utc), idempotency_key="walls-old"))
        for ts in (datetime(2026, 11, 30, 23, 45, tzinfo=timezone.utc),  # 2026-12-01 08:45 in Seoul
                   start - timedelta(minutes=1), start + timedelta(minutes=1)):  # Seoul's yesterday, Seoul's today
            s.add(Visit(event_id=str(uuid.uuid4()), customer_id=customer.id, device_id=site.device,
                        store_id=site.store, ts=ts.astimezone(timezone.utc), confidence=0.9))
    page = _page(browser, site)
    page.goto(site.base + "/purchases/")
    latest = page.inner_text("main")
    assert "2026-12-07 08:30" in latest and "2026-12-06 23:30" not in latest

    page.goto(site.base + "/")
    assert page.locator(".card.stat b").first.inner_text() == "1"  # one arrival since midnight in Seoul
    assert "2026-12-01 08:45" in page.inner_text("main")

    page.goto(f"{site.base}/customers/{customer.id}")  # the door arrival and the sale, each on its store's clock
    arrivals, bought = page.inner_text("main").split("Recent purchases")
    assert "2026-12-01 08:45" in arrivals and "2026-11-30 23:45" not in arrivals
    assert "2000-11-01 00:30" in bought and "2000-10-31 15:30" not in bought

    page.goto(site.base + "/analytics/?all=1")
    span = page.inner_text("#range")
    assert span.startswith("2000-11-01 to ") and "your data runs 2000-11-01 to" in span, span
    assert "2000-10-31" not in span
    page.context.close()


def test_the_local_filter_takes_the_store_and_reads_the_zones_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    seoul, _ = add_store_and_device(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="x", timezone="America/New_York",
                        _env_file=None)
    app = create_app(settings, db=db)
    ts = datetime(2026, 12, 6, 23, 30, tzinfo=timezone.utc)
    template = app.jinja_env.from_string("{{ ts|local }} | {{ ts|local(store=s) }} | {{ ts|local('%H:%M', s) }} | "
                                         "{{ ts|local(store=none) }}")

    def render() -> list[str]:
        with app.test_request_context():
            return template.render(ts=ts, s=seoul).split(" | ")

    assert render() == ["2026-12-06 18:30", "2026-12-06 18:30", "18:30", "2026-12-06 18:30"]  # no store zone
    with db.transaction() as s:
        s.add(StoreSetting(store_id=seoul, timezone="Asia/Seoul"))
    # every store on Seoul time: Seoul is the default too; a store-less sale was read in TIMEZONE
    assert render() == ["2026-12-07 08:30", "2026-12-07 08:30", "08:30", "2026-12-06 18:30"]
    with db.transaction() as s:
        berlin = Store(name="Berlin", ref="berlin")
        s.add(berlin)
        s.flush()
        s.add(StoreSetting(store_id=berlin.id, timezone="Europe/Berlin"))
        berlin = berlin.id
    # two zones: the default is TIMEZONE, each store's time its own
    assert render() == ["2026-12-06 18:30", "2026-12-07 08:30", "08:30", "2026-12-06 18:30"]

    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        with app.test_request_context():
            rows = app.jinja_env.from_string("{% for s in stores %}{{ ts|local(store=s) }};{% endfor %}")
            out = rows.render(ts=ts, stores=[seoul, berlin] * 50).split(";")
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert out[:2] == ["2026-12-07 08:30", "2026-12-07 00:30"]
    assert sum("store_settings" in sql for sql in statements) == 1, statements  # once per request, not per row
    db.dispose()


# --- B. day-part reasons -----------------------------------------------------------------------------------------
def _tiny_history() -> pd.DataFrame:
    """Eve shops only in the evening (croissant + tea, 10 evenings); four morning people have croissant + coffee at
    breakfast and soup at lunch on the same 10 days. Baskets (customer-day-day-part): 40 breakfast, 40 lunch,
    10 evening; croissant in 40 breakfast + 10 evening baskets, coffee in 40 breakfast, soup in 40 lunch, tea in
    10 evening."""
    rows = []
    for d in range(1, 11):
        rows += [("eve", "croissant", datetime(2024, 3, d, 19)), ("eve", "tea", datetime(2024, 3, d, 19))]
        for c in ("m1", "m2", "m3", "m4"):
            rows += [(c, "croissant", datetime(2024, 3, d, 8)), (c, "coffee", datetime(2024, 3, d, 8)),
                     (c, "soup", datetime(2024, 3, d, 12))]
    return pd.DataFrame(rows, columns=["customer", "item", "ts"]).assign(quantity=1.0)


def test_you_often_have_it_at_breakfast_only_after_breakfasts_with_it():
    model = train(_tiny_history(), config=RecommenderConfig(no_components=4, epochs=3))
    reasons = {h: {c: {p.item: p.reasons for p in picks} for c, picks in model.recommend(["eve", "m1"], n=4,
                                                                                         hour=h).items()}
               for h in (8, 12, 19)}
    claims = [(h, c, item, r) for h, by in reasons.items() for c, picks in by.items() for item, rs in picks.items()
              for r in rs if r.startswith("you often have it at")]
    # every claim is true: Eve has croissant and tea in the evening; m1 croissant and coffee at breakfast, soup at
    # lunch
    true = {("eve", "croissant", "evening"), ("eve", "tea", "evening"), ("m1", "croissant", "breakfast"),
            ("m1", "coffee", "breakfast"), ("m1", "soup", "lunch")}
    assert {(c, item, r.rsplit(" ", 1)[1]) for _h, c, item, r in claims} <= true, claims
    assert "you often have it at breakfast" in reasons[8]["m1"]["croissant"]
    assert "you often have it at evening" in reasons[19]["eve"]["tea"]
    # Eve never came at breakfast: croissant and coffee sell at breakfast, which is what she is told
    # (q(breakfast | croissant) = 41/54 = 1.74 × q(breakfast) = 41/94; coffee 41/44 = 2.1 ×)
    assert "popular at breakfast" in reasons[8]["eve"]["croissant"]
    assert not any(r.startswith("you often have it") for r in reasons[8]["eve"]["croissant"])
    assert "popular at lunch" in reasons[12]["eve"]["soup"]  # she never had soup
    assert "popular at evening" in reasons[19]["m1"]["tea"]  # nor m1 tea


def test_daypart_reason_by_hand_counts_the_customers_own_baskets():
    # customer 0: items 0 and 1 at breakfast on day 1, item 1 at breakfast on day 2; customer 1: item 1 at breakfast
    # on days 1-4; customer 2: items 0 and 2 in the evening on days 1-8. Baskets: 6 at breakfast, 8 in the evening,
    # so q(breakfast) = (6 + 1) / (14 + 4) = 7/18; q(breakfast | item 1) = (6 + 1) / (6 + 4) = 7/10 = 1.8 × that
    # (popular at breakfast), item 0: 2/13, item 2: 1/12, items 1 and 2 together (one menu item): 7/18 (1.0 ×)
    u = np.array([0, 0, 0] + [1] * 4 + [2] * 16)
    i = np.array([0, 1, 1] + [1] * 4 + [0, 2] * 8)
    day = np.array([1, 1, 2, 1, 2, 3, 4] + [d for d in range(1, 9) for _ in range(2)])
    hour = np.array([8, 8, 9, 8, 8, 8, 8] + [19] * 16)
    profile = DayPartProfile.build(u, i, day, hour, (3, 3))
    rows, cols, group = np.array([0, 0, 0, 2, 2]), np.array([0, 1, 2, 1, 0]), np.array([0, 1, 1])
    lift = np.full(len(rows), 1.0)  # every pick lifted by the day-part: the text depends on the counts only
    assert profile.own_counts(rows, cols, 0).tolist() == [1, 2, 0, 0, 0]
    assert profile.own_counts(rows, cols, 0, item_group=group).tolist() == [1, 2, 2, 0, 0]
    assert profile.reasons(rows, cols, 0, lift) == [
        "you have had it at breakfast", "you often have it at breakfast", None, "popular at breakfast", None]
    assert profile.reasons(rows, cols, 0, lift, item_group=group) == [
        "you have had it at breakfast", "you often have it at breakfast", "you often have it at breakfast", None, None]
    assert profile.reasons(np.array([2]), np.array([0]), 3, np.ones(1)) == ["you often have it at evening"]
    assert profile.reasons(rows, cols, 0, np.full(len(rows), 0.1)) == [None] * len(rows)  # the day-part did not lift


# --- C. the first account ----------------------------------------------------------------------------------------
def test_a_fresh_install_says_how_the_first_account_is_made(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="x", _env_file=None)
    client = create_app(settings, db=db, WTF_CSRF_ENABLED=False).test_client()
    page = client.get("/login").get_data(as_text=True)
    assert "No account yet" in page and HINT in page
    failed = client.post("/login", data={"email": "me@cafe.example", "password": "anything 123"})
    assert failed.status_code == 401 and HINT in failed.get_data(as_text=True)
    assert "Wrong e-mail or password" not in failed.get_data(as_text=True)  # there is no account to be wrong about

    from dangol_cloud.cli import main as cli

    for var in ("DANGOL_MQTT_URL", "DANGOL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DANGOL_DATABASE_URL", url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("waitress.serve", lambda *args, **kwargs: None)  # start, print, and stop at once
    monkeypatch.setattr("dangol_cloud.background.start_background", lambda app: (lambda: None))
    assert cli(["serve", "--port", "8999"]) == 0
    assert HINT in " ".join(capsys.readouterr().out.split())

    add_owner(db)
    assert HINT not in client.get("/login").get_data(as_text=True)
    assert cli(["serve", "--port", "8999"]) == 0
    assert "create-user" not in capsys.readouterr().out
    db.dispose()


# --- D. bulk actions ---------------------------------------------------------------------------------------------
def _count(db, *where) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(CatalogueItem).where(*where))


def _mapped(db, prefix: str) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(ProductMapping)
                        .join(CatalogueItem, CatalogueItem.id == ProductMapping.product_id)
                        .where(CatalogueItem.ref.like(f"{prefix}%"), ProductMapping.menu_item_id.is_not(None)))


def test_mapping_every_product_by_category_or_off_the_menu_asks_first(browser, site):
    with site.db.transaction() as s:
        items = [CatalogueItem(ref=f"wall-{n}", name=f"Wall product {n}", category=f"WALLCAT {n % 3}", tags=[])
                 for n in range(12)]
        s.add_all(items)
        s.flush()
        register_products(s, [i.id for i in items], source="csv")
    on_the_menu = (on_menu(), CatalogueItem.retired.is_(False))
    before = _count(site.db, *on_the_menu)
    page = _page(browser, site)
    products = site.base + "/catalogue/products?show=unmapped&q=wall"
    page.goto(products)
    page.check("#scope-all")
    page.click("#op-category")
    question = page.inner_text("#confirm")
    assert "12 product(s)" in question and "3 new menu item(s)" in question, question
    assert _count(site.db, *on_the_menu) == before and _mapped(site.db, "wall-") == 0  # nothing done yet
    page.click("#confirm-cancel")
    assert _count(site.db, *on_the_menu) == before
    page.check("#scope-all")
    page.click("#op-category")
    page.click("#confirm-button")
    assert "12 product(s) mapped" in _flashes(page)
    assert _count(site.db, *on_the_menu) == before + 3 and _mapped(site.db, "wall-") == 12

    page.goto(site.base + "/catalogue/products?show=mapped&q=wall")
    page.check("#scope-all")
    page.click("#op-unmap")
    assert "Take 12 product(s) off the menu?" in page.inner_text("#confirm")
    assert _mapped(site.db, "wall-") == 12
    page.click("#confirm-button")
    assert "12 product(s) taken off the menu" in _flashes(page) and _mapped(site.db, "wall-") == 0

    page.goto(products)  # a handful ticked: done at once, as before
    for box in page.locator("#products input[name=ids]").all()[:2]:
        box.check()
    page.click("#op-category")
    assert page.locator("#confirm").count() == 0 and "2 product(s) mapped" in _flashes(page)
    page.context.close()


def test_catalogue_bulk_actions_take_every_item_on_the_page_or_in_the_list(browser, site):
    with site.db.transaction() as s:
        s.add_all(CatalogueItem(ref=f"tick-{n:02d}", name=f"Tick {n:02d}", category="TICKS", tags=[])
                  for n in range(63))
    ticks = CatalogueItem.ref.like("tick-%")
    page = _page(browser, site)
    page.goto(site.base + "/catalogue/?q=tick")
    page.click("#bulk-soldout")  # nothing ticked: nothing done
    assert "Tick some items first" in _flashes(page) and _count(site.db, ticks, CatalogueItem.available.is_(False)) == 0
    page.goto(site.base + "/catalogue/?q=tick")
    assert "all 60 on this page" in page.inner_text("label[for=scope-page]")
    page.check("#scope-page")
    page.click("#bulk-soldout")
    assert "Mark 60 item(s) sold out?" in page.inner_text("#confirm")
    page.click("#confirm-button")
    assert "60 item(s) marked sold out" in _flashes(page)
    assert _count(site.db, ticks, CatalogueItem.available.is_(False)) == 60

    page.goto(site.base + "/catalogue/?q=tick")
    assert "every item in this list (63)" in page.inner_text("label[for=scope-all]")
    page.check("#scope-all")
    page.click("#bulk-retire")
    assert "Retire 63 item(s)?" in page.inner_text("#confirm")
    page.click("#confirm-button")
    assert "63 item(s) retired" in _flashes(page) and _count(site.db, ticks, CatalogueItem.retired.is_(True)) == 63
    assert _count(site.db, CatalogueItem.retired.is_(True)) == 63  # nothing outside the search
    page.context.close()


# --- E. one's own password -----------------------------------------------------------------------------------------
def _change(page, current: str, new: str, repeat: str | None = None) -> None:
    page.fill("input[name=current_password]", current)
    page.fill("input[name=new_password]", new)
    page.fill("input[name=repeat_password]", new if repeat is None else repeat)
    page.click("#change-password")


def _errors(page) -> str:
    return " ".join(page.locator(".err, .flash.error").all_inner_texts())


def test_everyone_chooses_their_own_password_and_their_other_sessions_end(browser, site):
    other = _page(browser, site, STAFF, STAFF_PW)  # the barista signed in on the till too
    page = _page(browser, site, STAFF, STAFF_PW)
    page.click("#account-link")  # their e-mail in the sidebar
    assert page.url == site.base + "/account/password"
    _change(page, "not my password", "a brand new pass")
    assert "current password is wrong" in _errors(page)
    _change(page, STAFF_PW, "short")
    assert "at least 8 characters" in _errors(page)
    _change(page, STAFF_PW, "a brand new pass", "a brand new pas")
    assert "do not match" in _errors(page)
    with site.db.sessions() as s:
        unchanged = s.scalar(select(User.password_hash).where(User.email == STAFF))
    _change(page, STAFF_PW, "a brand new pass")
    assert "Password changed" in _flashes(page)
    with site.db.sessions() as s:
        assert s.scalar(select(User.password_hash).where(User.email == STAFF)) != unchanged
    page.goto(site.base + "/purchases/")
    assert page.url == site.base + "/purchases/"  # this browser stays signed in
    other.goto(site.base + "/purchases/")
    assert "/login" in other.url  # the till's session ended
    again = _page(browser, site, STAFF, "a brand new pass")
    assert again.url == site.base + "/"
    for p in (other, page, again):
        p.context.close()

    owner = _page(browser, site)
    owner.goto(site.base + "/users/")
    own = owner.locator("#users tr", has_text="owner@cafe.example")
    assert own.locator("a#own-password").get_attribute("href") == "/account/password"
    assert own.locator("form[action$='/password']").count() == 0  # no reset of one's own password
    assert owner.locator("#users tr", has_text=STAFF).locator("form[action$='/password']").count() == 1
    owner.context.close()


def test_guessing_the_current_password_is_as_slow_as_guessing_at_sign_in(browser, site):
    page = _page(browser, site, GUESSER, GUESSER_PW)
    page.goto(site.base + "/account/password")
    for guess in ("guess one 1", "guess two 2", "guess three 3"):  # login_max_failures = 3
        _change(page, guess, "a brand new pass")
        assert "current password is wrong" in _errors(page)
    _change(page, GUESSER_PW, "a brand new pass")  # the back-off has started: not even the right one is checked
    assert "Too many" in _errors(page)
    with site.db.sessions() as s:
        hashed = s.scalar(select(User.password_hash).where(User.email == GUESSER))
    from dangol_cloud.security import check_password

    assert check_password(hashed, GUESSER_PW)
    page.context.close()
