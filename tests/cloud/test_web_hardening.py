"""Issue 9, dashboard rows, through Flask's test client on SQLite and PostgreSQL (the browser half is in
``test_web_hardening_browser.py``): safe ``next`` redirects, server-side sessions (sign-out, absolute
lifetime), security headers, sign-in timing and progressive back-off per account / address, trusted
proxies, bounded ``page``, POS ``amount`` and ``ts``, extreme stored times, confirmations, staff scope.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, select, update

from dangol_cloud.app import create_app
from dangol_cloud.cli import main as cli
from dangol_cloud.db import Database
from dangol_cloud.models import (CatalogueItem, Customer, Device, DeviceEvent, LoginFailure, Purchase, Store, User,
                                 Visit, utcnow)
from dangol_cloud.security import hash_password, hash_token, mosquitto_hash
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, STORE_TOKEN, add_owner, add_store_and_device, utc

STAFF_EMAIL, STAFF_PASSWORD = "barista@cafe.example", "steamed milk 7"
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


def _site_factory(tmp_path, url):
    made = []

    def make(**overrides):
        db = Database(url, data_key=DEV_KEY_BYTES)
        db.migrate()
        with db.sessions() as s:
            fresh = s.scalar(select(func.count()).select_from(User)) == 0
        if fresh:
            add_owner(db)
        settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="k", _env_file=None,
                            **overrides)
        made.append(db)
        return create_app(settings, db=db, TESTING=True), db

    return make, made


@pytest.fixture
def make_site(tmp_path, db_url):
    """``make_site(**settings)`` → (app, db): a migrated database (SQLite and PostgreSQL) with the owner, and
    the app."""
    make, made = _site_factory(tmp_path, db_url)
    yield make
    for db in made:
        db.dispose()


@pytest.fixture
def make_sqlite_site(tmp_path, sqlite_url):
    """:func:`make_site` on SQLite only (for rows that do not depend on the database)."""
    make, made = _site_factory(tmp_path, sqlite_url)
    yield make
    for db in made:
        db.dispose()


@pytest.fixture
def web(make_site):
    return make_site()


@pytest.fixture
def sqlite_web(make_sqlite_site):
    return make_sqlite_site()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)


def sign_in(client, email=OWNER_EMAIL, password=OWNER_PASSWORD, addr="203.0.113.7", next_=None, headers=None):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    url = "/login" if next_ is None else f"/login?next={next_}"
    return client.post(url, data={"email": email, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": addr}, headers=headers or {})


def age_failures(db, seconds: float) -> None:
    """Move every recorded sign-in failure ``seconds`` into the past (as if that time had passed)."""
    with db.transaction() as s:
        for failure in s.scalars(select(LoginFailure)):
            failure.at -= timedelta(seconds=seconds)


# --- next ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["/%09/evil.host/", "/%0a/evil.host/", "//evil.host/", "/%5Cevil.host/",
                                    "%2F%2Fevil.host", "https://evil.host/", "javascript:alert(1)",
                                    "/%5C%5Cevil.host", "https:evil.host"])
def test_next_never_leaves_the_site(sqlite_web, target):
    app, _ = sqlite_web
    response = sign_in(app.test_client(), next_=target)
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_next_keeps_a_path_on_the_site(sqlite_web):
    app, _ = sqlite_web
    response = sign_in(app.test_client(), next_="/customers/%3Fshow%3Dall")
    assert response.headers["Location"] == "/customers/?show=all"
    from dangol_cloud.security import local_redirect_target

    assert local_redirect_target("/catalogue/?q=flat white") == "/catalogue/?q=flat white"
    assert local_redirect_target("/\t/evil.host/") is None and local_redirect_target("/\\evil.host") is None


# --- sessions ----------------------------------------------------------------------------------------------
def _session_cookie(client) -> str:
    return client.get_cookie("session").value


def test_a_copied_session_cookie_stops_working_after_sign_out(web):
    from dangol_cloud.models import WebSession

    app, db = web
    client = app.test_client()
    assert sign_in(client).status_code == 302
    stolen = _session_cookie(client)
    thief = app.test_client()
    thief.set_cookie("session", stolen)
    assert thief.get("/").status_code == 200  # the copy works while the owner is signed in
    token = csrf_of(client.get("/").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert thief.get("/").status_code == 302  # and not after sign-out
    assert thief.get("/customers/").headers["Location"].startswith("/login")
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(WebSession)) == 0


def test_a_session_ends_at_its_absolute_lifetime(make_site):
    from dangol_cloud.models import WebSession

    app, db = make_site(session_lifetime_hours=2)
    client = app.test_client()
    before = utcnow()
    assert sign_in(client).status_code == 302
    with db.sessions() as s:
        row = s.scalar(select(WebSession))
        assert timedelta(hours=2) <= row.expires_at - before <= timedelta(hours=2, minutes=1)
    for _ in range(3):  # activity does not extend it
        assert client.get("/").status_code == 200
    with db.transaction() as s:
        s.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get("/").status_code == 302
    cookie = next(v for v in sign_in(app.test_client()).headers.getlist("Set-Cookie") if v.startswith("session="))
    assert "Expires=" in cookie  # the browser drops it at the lifetime too


# --- headers -----------------------------------------------------------------------------------------------
def test_every_response_carries_the_security_headers(make_sqlite_site):
    for overrides, hsts in (({}, False), ({"public_url": "https://cafe.example"}, True)):
        app, db = make_sqlite_site(**overrides)
        client = app.test_client()
        sign_in(client)
        for path in ("/login", "/", "/customers/", "/no-such-page", "/api/v1/openapi.json", "/static/style.css"):
            headers = client.get(path).headers
            csp = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
            assert csp["frame-ancestors"] == "'none'" and csp["script-src"] == "'self'", path
            assert "unsafe-inline" not in csp["default-src"] and csp["object-src"] == "'none'"
            assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "same-origin"
            assert ("Strict-Transport-Security" in headers) is hsts, path
        if hsts:
            assert int(re.search(r"max-age=(\d+)", headers["Strict-Transport-Security"]).group(1)) >= 31536000


def test_templates_have_no_inline_script():
    from pathlib import Path

    import dangol_cloud

    folder = Path(dangol_cloud.__file__).parent / "templates"
    for path in folder.glob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path.name
        assert not re.search(r"\son[a-z]+\s*=", text), path.name
        assert "javascript:" not in text, path.name


# --- sign-in -----------------------------------------------------------------------------------------------
def test_sign_in_time_does_not_reveal_which_emails_exist(make_sqlite_site):
    app, _ = make_sqlite_site()
    client = app.test_client()
    known, unknown = [], []  # each try from its own address; the owner's 5 failures stay below the allowance of 10
    sign_in(client, email="warm-up@cafe.example", password="x", addr="198.51.100.1")
    for n in range(5):
        for email, times in ((OWNER_EMAIL, known), (f"nobody{n}@cafe.example", unknown)):
            token = csrf_of(client.get("/login").get_data(as_text=True))
            start = time.perf_counter()
            response = client.post("/login", data={"email": email, "password": "wrong guess", "csrf_token": token},
                                   environ_base={"REMOTE_ADDR": f"198.51.100.{10 + n}"})
            times.append(time.perf_counter() - start)
            assert response.status_code == 401
    a, b = statistics.median(known), statistics.median(unknown)
    assert max(a, b) / min(a, b) < 3, (known, unknown)


def test_after_failures_the_right_password_works_once_the_back_off_has_passed(web):
    app, db = web
    client = app.test_client()
    for _ in range(5):
        assert sign_in(client, password="wrong").status_code == 401
    held = sign_in(client)
    assert held.status_code == 429 and 1 <= int(held.headers["Retry-After"]) <= 30
    assert "Too many failed sign-ins" in held.get_data(as_text=True)
    age_failures(db, 31)  # 31 seconds later: the back-off is over, not a 15-minute lock
    assert sign_in(client).status_code == 302


def test_back_off_grows_with_each_further_failure(web):
    app, db = web
    client = app.test_client()
    waits = []
    for _ in range(4):
        for _ in range(5 if not waits else 1):
            assert sign_in(client, password="wrong").status_code == 401
        waits.append(int(sign_in(client, password="wrong").headers["Retry-After"]))
        age_failures(db, waits[-1] + 1)  # let the wait pass
    assert waits == [30, 60, 120, 240]


def test_one_password_sprayed_over_many_emails_is_limited_per_address(web):
    app, _ = web
    statuses = [sign_in(app.test_client(), email=f"guess{n}@cafe.example", password="Summer2026!").status_code
                for n in range(25)]
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    assert sign_in(app.test_client(), addr="198.51.100.9").status_code == 302  # other addresses unaffected


def test_guessing_from_many_addresses_cannot_lock_the_owner_out(web):
    app, _ = web
    owner = app.test_client()
    assert sign_in(owner, addr="192.0.2.10").status_code == 302  # the owner's browser, signed in before
    owner.post("/logout", data={"csrf_token": csrf_of(owner.get("/").get_data(as_text=True))})
    for n in range(10):  # one wrong guess from each of 10 addresses
        assert sign_in(app.test_client(), password=f"guess {n}", addr=f"203.0.113.{100 + n}").status_code == 401
    stranger = sign_in(app.test_client(), addr="198.51.100.77")  # the account limit holds for new browsers
    assert stranger.status_code == 429
    assert sign_in(owner, addr="192.0.2.10").status_code == 302  # but not for the owner's own browser
    forged = app.test_client()
    forged.set_cookie("dangol_device", "forged.value")
    assert sign_in(forged, addr="192.0.2.10").status_code == 429


def test_proxy_headers_count_only_with_trusted_proxies(make_sqlite_site):
    app, db = make_sqlite_site()  # default: X-Forwarded-For is not believed: one address however it is spoofed
    for n in range(5):
        assert sign_in(app.test_client(), password="wrong", headers={"X-Forwarded-For": f"10.0.0.{n}"},
                       addr="192.0.2.1").status_code == 401
    assert sign_in(app.test_client(), headers={"X-Forwarded-For": "10.0.0.99"}, addr="192.0.2.1").status_code == 429
    with db.transaction() as s:
        s.execute(delete(LoginFailure))
    app, _ = make_sqlite_site(trusted_proxies=1)  # behind one proxy: the client address is the forwarded one
    for _ in range(5):
        assert sign_in(app.test_client(), password="wrong", headers={"X-Forwarded-For": "10.0.1.1"},
                       addr="192.0.2.2").status_code == 401
    assert sign_in(app.test_client(), headers={"X-Forwarded-For": "10.0.1.1"}, addr="192.0.2.2").status_code == 429
    assert sign_in(app.test_client(), headers={"X-Forwarded-For": "10.0.1.2"}, addr="192.0.2.2").status_code == 302
    with pytest.raises(Exception, match="trusted_proxies"):
        from dangol_cloud.settings import load_settings

        load_settings(trusted_proxies=-1)


# --- bounded input -----------------------------------------------------------------------------------------
def test_a_twenty_digit_page_is_not_a_server_error(web):
    app, db = web
    add_store_and_device(db)
    with db.transaction() as s:
        item = CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[])
        customer = Customer(display_name="Mina", status="active", source="pos")
        s.add_all([item, customer])
        s.flush()
        s.add(Purchase(customer_id=customer.id, item_id=item.id, quantity=1, ts=utc(2026, 1, 5), source="pos",
                       idempotency_key="p1"))
    client = app.test_client()
    sign_in(client)
    for path in ("/customers/", "/purchases/", "/catalogue/", "/privacy/"):
        for page in ("99999999999999999999", "-5", "1e9", "abc"):
            assert client.get(f"{path}?page={page}").status_code == 200, (path, page)


def _pos(client, body, key):
    return client.post("/api/v1/purchases", data=json.dumps(body), headers={
        "Content-Type": "application/json", "Idempotency-Key": key, "Authorization": f"Bearer {STORE_TOKEN}"})


def test_pos_amount_and_time_are_bounded(web):
    app, db = web
    add_store_and_device(db)
    with db.transaction() as s:
        s.add(CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[]))
    client = app.test_client()
    now = datetime.now(timezone.utc).isoformat()
    refused = [({"amount": 1e308}, now, "lines.0.amount"), ({"amount": 1e7 + 1}, now, "lines.0.amount"),
               ({"amount": 4.5}, "9999-12-31T23:59:59Z", "ts"), ({"amount": 4.5}, "0001-01-01T00:00:00+14:00", "ts"),
               ({"amount": 4.5}, (datetime.now(timezone.utc) + timedelta(days=2)).isoformat(), "ts")]
    for n, (line, ts, field) in enumerate(refused):
        body = {"customer": "loyalty-1", "ts": ts, "lines": [{"item": "flat-white", **line}]}
        response = _pos(client, body, f"k{n}")
        assert response.status_code == 422, (line, ts)
        assert field in {e["loc"] for e in response.get_json()["errors"]}
    raw = '{"customer": "loyalty-1", "ts": "%s", "lines": [{"item": "flat-white", "amount": 1e999}]}' % now
    assert client.post("/api/v1/purchases", data=raw, headers={
        "Content-Type": "application/json", "Idempotency-Key": "inf", "Authorization": f"Bearer {STORE_TOKEN}"}
    ).status_code == 422
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 0
    assert _pos(client, {"customer": "loyalty-1", "ts": now, "lines": [{"item": "flat-white", "amount": 4.5}]},
                "ok").status_code == 201


def test_pages_never_fail_on_an_extreme_stored_time(make_site):
    app, db = make_site(timezone="Asia/Seoul")  # east of UTC: 9999-12-31T23:59:59Z is year 10000 there
    store_id, device_id = add_store_and_device(db)
    with db.transaction() as s:
        item = CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[])
        customer = Customer(display_name="Mina Park", status="active", source="pos", consent_by="jo",
                            consent_at=FAR_FUTURE, consent_text_version="2026-01")
        s.add_all([item, customer])
        s.flush()
        s.add(Purchase(customer_id=customer.id, item_id=item.id, quantity=1, amount=4.5, ts=FAR_FUTURE,
                       store_id=store_id, source="pos", idempotency_key="far"))
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=customer.id, device_id=device_id, store_id=store_id,
                    ts=FAR_FUTURE, confidence=0.9))
        s.get(Device, device_id).status_at, s.get(Device, device_id).state = FAR_FUTURE, "online"
        cid = customer.id
    client = app.test_client()
    sign_in(client)
    for path in ("/", "/customers/?show=all", f"/customers/{cid}", "/purchases/", "/analytics/", "/stores/"):
        response = client.get(path)
        assert response.status_code == 200, path
    assert "9999-12-31 23:59 UTC" in client.get("/purchases/").get_data(as_text=True)


# --- confirmation of destructive actions -------------------------------------------------------------------
def test_erase_retire_and_remove_device_need_a_confirmation(web):
    app, db = web
    _, device_id = add_store_and_device(db)
    with db.transaction() as s:
        customer = Customer(display_name="Erin", status="active", source="dashboard")
        item = CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[])
        s.add_all([customer, item])
        s.flush()
        cid, item_id = customer.id, item.id
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get(f"/customers/{cid}").get_data(as_text=True))
    first = client.post(f"/customers/{cid}/erase", data={"csrf_token": token})
    assert first.status_code == 200 and "Type ERASE to confirm" in first.get_data(as_text=True)
    wrong = client.post(f"/customers/{cid}/erase", data={"csrf_token": token, "confirm": "yes"})
    assert wrong.status_code == 422
    first = client.post(f"/catalogue/{item_id}/retire", data={"csrf_token": token})
    assert first.status_code == 200 and "Retire item" in first.get_data(as_text=True)
    first = client.post(f"/stores/devices/{device_id}/delete", data={"csrf_token": token})
    assert first.status_code == 200 and "Remove device" in first.get_data(as_text=True)
    with db.sessions() as s:  # nothing happened yet
        assert s.get(Customer, cid) is not None and not s.get(CatalogueItem, item_id).retired
        assert s.get(Device, device_id) is not None
    assert client.post(f"/customers/{cid}/erase", data={"csrf_token": token, "confirm": "erase"}).status_code == 302
    assert client.post(f"/catalogue/{item_id}/retire", data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    assert client.post(f"/stores/devices/{device_id}/delete",
                       data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    assert client.post(f"/catalogue/{item_id}/retire", data={"csrf_token": token}).status_code == 302  # restore
    with db.sessions() as s:
        assert s.get(Customer, cid) is None and s.get(Device, device_id) is None
        assert not s.get(CatalogueItem, item_id).retired


# --- staff scope -------------------------------------------------------------------------------------------
def _two_stores(db):
    """Store A (staff's) and store B, a device each; customers: visited A, bought at B, enrolled at A's device."""
    from dangol_cloud.models import UserStore

    with db.transaction() as s:
        a, b = Store(name="Main Street", ref="a"), Store(name="Harbour", ref="b", api_token_hash=hash_token("t"))
        s.add_all([a, b])
        s.flush()
        da = Device(store_id=a.id, name="Main door", mqtt_username="device-a", mqtt_password_hash=mosquitto_hash("x"))
        db_ = Device(store_id=b.id, name="Harbour door", mqtt_username="device-b",
                     mqtt_password_hash=mosquitto_hash("x"))
        item = CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[])
        visited = Customer(display_name="Alma Visited", status="active", source="edge")
        bought = Customer(display_name="Bora Harbour", status="active", source="pos")
        enrolled = Customer(display_name="Cleo Enrolled", status="pending", source="edge")
        s.add_all([da, db_, item, visited, bought, enrolled])
        s.flush()
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=visited.id, device_id=da.id, store_id=a.id,
                    ts=utc(2026, 1, 5, 9)))
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=bought.id, device_id=db_.id, store_id=b.id,
                    ts=utc(2026, 1, 5, 10)))
        s.add(Purchase(customer_id=bought.id, item_id=item.id, quantity=1, amount=3.6, ts=utc(2026, 1, 5, 10),
                       store_id=b.id, source="pos", idempotency_key="b1"))
        event_id = str(uuid.uuid4())
        s.add(DeviceEvent(event_id=event_id, device_id=da.id, kind="enrolment", ts=utc(2026, 1, 5, 11),
                          payload={"kind": "enrolment", "event_id": event_id, "customer_id": enrolled.id,
                                   "status": "pending"}))
        staff = User(email=STAFF_EMAIL, password_hash=hash_password(STAFF_PASSWORD), role="staff")
        s.add(staff)
        s.flush()
        s.add(UserStore(user_id=staff.id, store_id=a.id))
        return {"a": a.id, "b": b.id, "visited": visited.id, "bought": bought.id, "enrolled": enrolled.id}


def test_staff_see_and_act_only_on_their_stores_customers_and_devices(web):
    app, db = web
    ids = _two_stores(db)
    staff = app.test_client()
    assert sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    listing = staff.get("/customers/?show=all").get_data(as_text=True)
    assert "Alma Visited" in listing and "Cleo Enrolled" in listing and "Bora Harbour" not in listing
    assert staff.get(f"/customers/{ids['visited']}").status_code == 200
    assert staff.get(f"/customers/{ids['bought']}").status_code == 404
    token = csrf_of(staff.get(f"/customers/{ids['enrolled']}").get_data(as_text=True))
    consent = {"csrf_token": token, "display_name": "Bora", "recorded_by": "jo", "text_version": "2026-01"}
    assert staff.post(f"/customers/{ids['bought']}/consent", data=consent).status_code == 404
    home = staff.get("/").get_data(as_text=True)
    assert "Main door" in home and "Harbour door" not in home and "Bora" not in home
    assert "Bora Harbour" not in staff.get("/purchases/").get_data(as_text=True)
    with db.sessions() as s:
        assert s.get(Customer, ids["bought"]).consent_at is None
    owner = app.test_client()
    sign_in(owner)
    listing = owner.get("/customers/?show=all").get_data(as_text=True)
    assert all(name in listing for name in ("Alma Visited", "Cleo Enrolled", "Bora Harbour"))
    assert "Harbour door" in owner.get("/").get_data(as_text=True)


def test_create_user_gives_a_staff_user_their_stores(tmp_path, sqlite_url, monkeypatch):
    from dangol_cloud.models import UserStore

    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    store_id, _ = add_store_and_device(db)
    monkeypatch.setenv("DANGOL_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("steamed milk 7\n"))
    assert cli(["create-user", STAFF_EMAIL, "--role", "staff", "--store", store_id, "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("steamed milk 7\n"))
    assert cli(["create-user", "x@cafe.example", "--role", "staff", "--store", "nope", "--password-stdin"]) == 2
    with db.sessions() as s:
        assert s.scalars(select(UserStore.store_id)).all() == [store_id]
        assert s.scalar(select(User).where(User.email == "x@cafe.example")) is None
    db.dispose()
