"""Dashboard hardening: rate-limited sign-in, owner/staff roles, session cookie flags, the owners' audit page."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.erasure import erase_customer
from dangol_cloud.models import Customer, LoginFailure, Store, User, utcnow
from dangol_cloud.security import hash_password
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, add_owner, add_store_and_device, utc

STAFF_EMAIL, STAFF_PASSWORD = "barista@cafe.example", "steamed milk 7"


@pytest.fixture
def site(tmp_path, sqlite_url):
    def make(**overrides):
        db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
        db.migrate()
        settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k", _env_file=None,
                            **overrides)
        return create_app(settings, db=db, TESTING=True), db

    yield make


@pytest.fixture
def web(site):
    app, db = site()
    add_owner(db)
    with db.transaction() as s:
        s.add(User(email=STAFF_EMAIL, password_hash=hash_password(STAFF_PASSWORD), role="staff"))
    yield app, db
    db.dispose()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)


def sign_in(client, email=OWNER_EMAIL, password=OWNER_PASSWORD, addr="203.0.113.7"):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": addr})


def test_sign_in_is_refused_with_429_after_five_failures_per_email_and_address(web):
    app, db = web
    client = app.test_client()
    for _ in range(5):
        assert sign_in(client, password="wrong").status_code == 401
    blocked = sign_in(client)  # even the right password: the window is closed for this e-mail + address
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in blocked.get_data(as_text=True)
    assert sign_in(app.test_client(), addr="198.51.100.9").status_code == 302  # another address is not blocked
    assert sign_in(app.test_client(), STAFF_EMAIL, STAFF_PASSWORD).status_code == 302  # nor another e-mail
    with db.transaction() as s:  # 15 minutes later
        s.execute(update(LoginFailure).values(at=utcnow() - timedelta(minutes=16)))
    assert sign_in(app.test_client()).status_code == 302
    with db.sessions() as s:  # a successful sign-in clears the counter; e-mails are not stored in clear
        assert s.scalar(select(func.count()).select_from(LoginFailure)) == 0


def test_staff_cannot_erase_manage_stores_train_or_read_the_audit_log(web):
    app, db = web
    store_id, device_id = add_store_and_device(db)
    cid = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(Customer(id=cid, display_name="Mina", status="active", source="edge", consent_by="staff:jo",
                       consent_at=utc(2026, 1, 2), consent_text_version="2026-01"))
    client = app.test_client()
    assert sign_in(client, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    token = csrf_of(client.get("/").get_data(as_text=True))  # (the customer is in no store of theirs: 404)
    assert client.post(f"/customers/{cid}/erase", data={"csrf_token": token}).status_code == 403
    assert client.get("/stores/").status_code == 403
    assert client.post("/stores/", data={"csrf_token": token, "name": "Evil"}).status_code == 403
    assert client.post(f"/stores/{store_id}/token", data={"csrf_token": token}).status_code == 403
    assert client.post(f"/stores/{store_id}/devices", data={"csrf_token": token, "name": "x"}).status_code == 403
    assert client.post(f"/stores/devices/{device_id}/delete", data={"csrf_token": token}).status_code == 403
    assert client.post("/train", data={"csrf_token": token}).status_code == 403
    assert client.get("/privacy/").status_code == 403
    assert "Privacy" not in client.get("/").get_data(as_text=True)
    with db.sessions() as s:
        assert s.get(Customer, cid) is not None and s.scalar(select(func.count()).select_from(Store)) == 1


def test_owner_sees_the_audit_log_without_names(web):
    app, db = web
    add_store_and_device(db)
    cid = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(Customer(id=cid, display_name="Mina Secretname", status="active", source="edge"))
    with db.transaction() as s:
        erase_customer(s, cid, actor=OWNER_EMAIL)
    client = app.test_client()
    sign_in(client)
    page = client.get("/privacy/").get_data(as_text=True)
    assert "erasure-requested" in page and cid in page and "Front door" in page  # waiting for that device
    assert "Secretname" not in page


@pytest.mark.parametrize("overrides,secure", [({}, False), ({"public_url": "https://cafe.example"}, True),
                                              ({"session_cookie_secure": True}, True),
                                              ({"public_url": "https://cafe.example", "session_cookie_secure": False},
                                               False)])
def test_session_cookie_is_httponly_samesite_and_secure_over_https(site, overrides, secure):
    app, db = site(**overrides)
    add_owner(db)
    response = sign_in(app.test_client())
    cookie = next(v for v in response.headers.getlist("Set-Cookie") if v.startswith("session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert ("Secure" in cookie) is secure
    db.dispose()


def test_a_form_field_with_nul_is_a_400_naming_the_field(web):
    app, db = web
    cid = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(Customer(id=cid, status="pending", source="edge"))
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get(f"/customers/{cid}").get_data(as_text=True))
    response = client.post(f"/customers/{cid}/consent", data={"csrf_token": token, "display_name": "Mina",
                                                              "recorded_by": "jo", "text_version": "2026\x00-01"})
    assert response.status_code == 400 and "text_version" in response.get_data(as_text=True)
    with db.sessions() as s:
        assert s.get(Customer, cid).consent_at is None
