"""Settings sources, Mosquitto-compatible hashes, analytics numbers, consent and roles."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest

from dangol_cloud import analytics
from dangol_cloud.app import create_app
from dangol_cloud.models import CatalogueItem, Customer, Purchase, User, Visit
from dangol_cloud.security import hash_password, mosquitto_hash, mosquitto_verify
from dangol_cloud.settings import ConfigError, load_settings

from .conftest import add_store_and_device, utc


def test_settings_from_file_and_environment(tmp_path, monkeypatch):
    conf = tmp_path / "cloud.toml"
    conf.write_text('database_url = "sqlite:///from-file.sqlite"\nmenu_size = 6\ntimezone = "Asia/Seoul"\n')
    monkeypatch.setenv("DANGOL_CONFIG", str(conf))
    monkeypatch.setenv("DANGOL_MQTT_URL", "mqtt://cloud:pw@broker:1883")
    monkeypatch.setenv("DANGOL_MENU_SIZE", "8")               # environment beats the file
    settings = load_settings()
    assert settings.database_url == "sqlite:///from-file.sqlite" and settings.menu_size == 8
    assert settings.mqtt_url == "mqtt://cloud:pw@broker:1883" and settings.timezone == "Asia/Seoul"
    monkeypatch.setenv("DANGOL_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match="DANGOL_TIMEZONE"):
        load_settings()


def test_default_database_is_a_sqlite_file_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("DANGOL_DATABASE_URL", raising=False)
    monkeypatch.delenv("DANGOL_CONFIG", raising=False)
    settings = load_settings(cloud_home=tmp_path / "h")
    assert settings.effective_database_url == f"sqlite:///{(tmp_path / 'h' / 'dangol.sqlite').resolve()}"


def test_mqtt_hashes_interoperate_with_mosquitto_passwd(tmp_path):
    ours = mosquitto_hash("s3cret")
    assert mosquitto_verify(ours, "s3cret") and not mosquitto_verify(ours, "s3cre7")
    passwd = tmp_path / "passwd"
    passwd.write_text("edge:s3cret\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$") and mosquitto_verify(theirs, "s3cret") and not mosquitto_verify(theirs, "x")


def test_analytics_counts_visits_and_shown_pick_conversion(db):
    with db.transaction() as s:
        latte, scone = CatalogueItem(ref="latte", name="Latte", tags=[]), CatalogueItem(ref="scone", name="Scone", tags=[])
        ann, bob = Customer(display_name="Ann"), Customer(display_name="Bob")
        s.add_all([latte, scone, ann, bob])
        s.flush()
        # Ann is shown latte at 08:00 and buys it at 08:05 (converted); Bob is shown scone and buys a latte
        s.add_all([
            Visit(event_id=str(uuid.uuid4()), customer_id=ann.id, ts=utc(2026, 1, 5, 8), shown_items=[latte.id]),
            Visit(event_id=str(uuid.uuid4()), customer_id=bob.id, ts=utc(2026, 1, 6, 9), shown_items=[scone.id]),
            Visit(event_id=str(uuid.uuid4()), customer_id=None, ts=utc(2026, 1, 6, 9, 30)),
            Purchase(customer_id=ann.id, item_id=latte.id, quantity=2, ts=utc(2026, 1, 5, 8, 5), source="t",
                     idempotency_key="a"),
            Purchase(customer_id=bob.id, item_id=latte.id, quantity=1, ts=utc(2026, 1, 6, 9, 10), source="t",
                     idempotency_key="b"),
            Purchase(customer_id=bob.id, item_id=scone.id, quantity=1, ts=utc(2026, 1, 6, 15), source="t",
                     idempotency_key="c"),   # scone bought, but 6 h later: outside the window
        ])
    with db.sessions() as s:
        a = analytics.compute(s, tz="UTC", days=30, now=utc(2026, 1, 10))
    assert (a.recognised, a.unknown) == (2, 1)
    assert a.visits_by_hour[8] == 1 and a.visits_by_hour[9] == 2
    assert a.visits_by_weekday[0] == 1 and a.visits_by_weekday[1] == 2   # 2026-01-05 is a Monday
    assert a.top_items == [("Latte", 3.0), ("Scone", 1.0)]
    assert (a.shown_visits, a.converted) == (2, 1) and a.pick_rate == 0.5


def _client(db, settings, email, role):
    with db.transaction() as s:
        s.add(User(email=email, password_hash=hash_password("pw-12345678"), role=role))
    client = create_app(settings, db=db, TESTING=True).test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"email": email, "password": "pw-12345678", "csrf_token": token}).status_code == 302
    page = client.get("/").get_data(as_text=True)  # signing in starts a fresh session with a new CSRF token
    return client, re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)


def test_staff_records_consent_but_cannot_manage_stores_or_erase(db, settings):
    with db.transaction() as s:
        pending = Customer(status="pending", source="edge")
        s.add(pending)
        s.flush()
        cid = pending.id
    client, token = _client(db, settings, "staff@cafe.example", "staff")
    from sqlalchemy import select

    from dangol_cloud.models import UserStore

    store_id, device_id = add_store_and_device(db)  # staff work at this store, where the customer came in
    with db.transaction() as s:
        s.add(UserStore(user_id=s.scalar(select(User.id).where(User.email == "staff@cafe.example")), store_id=store_id))
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=cid, device_id=device_id, store_id=store_id,
                    ts=utc(2026, 1, 5, 9)))
    assert client.get("/stores/").status_code == 403
    assert client.post(f"/customers/{cid}/erase", data={"csrf_token": token}).status_code == 403
    response = client.post(f"/customers/{cid}/consent", data={"csrf_token": token, "display_name": "Mina",
                                                               "recorded_by": "staff:jo", "text_version": "2026-01"})
    assert response.status_code == 302
    with db.sessions() as s:
        mina = s.get(Customer, cid)
    assert mina.status == "active" and mina.display_name == "Mina" and mina.consent_at is not None


def test_owner_creates_store_and_device_with_one_time_credentials(db, settings):
    client, token = _client(db, settings, "boss@cafe.example", "owner")
    page = client.post("/stores/", data={"csrf_token": token, "name": "Harbour", "ref": "h1"}).get_data(as_text=True)
    api_token = re.search(r'<div class="secret" id="token">([^<]+)</div>', page).group(1)
    store_id = re.search(r"Store id: <code>([0-9a-f-]{36})</code>", page).group(1)
    page = client.post(f"/stores/{store_id}/devices", data={"csrf_token": token, "name": "Door"}).get_data(as_text=True)
    password = re.search(r'id="mqtt-password">([^<]+)<', page).group(1)
    username = re.search(r'id="mqtt-username">([^<]+)<', page).group(1)
    from sqlalchemy import select

    from dangol_cloud.models import Device, Store
    from dangol_cloud.security import hash_token

    with db.sessions() as s:
        device = s.scalar(select(Device).where(Device.mqtt_username == username))
        store = s.get(Store, store_id)
    assert mosquitto_verify(device.mqtt_password_hash, password) and password not in device.mqtt_password_hash
    assert store.api_token_hash == hash_token(api_token)
    assert password not in client.get("/stores/").get_data(as_text=True)   # shown once only
    page = client.post(f"/stores/devices/{device.id}/password",
                       data={"csrf_token": token, "confirm": "yes"}).get_data(as_text=True)
    new_password = re.search(r'id="mqtt-password">([^<]+)<', page).group(1)
    with db.sessions() as s:
        changed = s.get(Device, device.id)
    assert mosquitto_verify(changed.mqtt_password_hash, new_password)
    assert not mosquitto_verify(changed.mqtt_password_hash, password)
    assert client.post(f"/stores/devices/{device.id}/delete",
                       data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    with db.sessions() as s:
        assert s.get(Device, device.id) is None


def test_health_warnings_name_what_the_owner_should_act_on():
    import dangol_protocol as proto
    from dangol_cloud.web.devices import health_warnings

    def report(**kw):  # a health report as the listener stores it: validated by the protocol model first
        return proto.Health(**{"camera": "ok", "fps": 8.0, "gallery_size": 3, "queue_depth": 0, **kw}
                            ).model_dump(mode="json")

    assert health_warnings(None) == [] and health_warnings(report()) == []
    assert health_warnings({"camera": "ok", "fps": 8.0, "gallery_size": 3, "queue_depth": 0}) == []  # older device
    assert health_warnings(report(camera="missing", storage="full", recognition="failing")) == [
        ("bad", "camera missing"), ("bad", "storage full — events are held on the device"),
        ("bad", "recognition failing")]
    assert health_warnings(report(catalogue="unreadable")) == [
        ("warn", "cached menu unreadable — publish the menu again")]
    # a slow recogniser is flagged once the device has been running; dropped frames alone are normal (the capture
    # keeps the newest frame); a failing recogniser is reported as such, not as slow
    assert health_warnings(report(fps=1.5, frames_captured=100, frames_dropped=90)) == [
        ("warn", "recognises only 1.5 frames/s — faces may be missed")]
    assert health_warnings(report(fps=9.0, frames_captured=1000, frames_dropped=700)) == []
    assert health_warnings(report(fps=0.0, frames_captured=40)) == []
    assert health_warnings(report(fps=0.0, frames_captured=500, recognition="failing")) == [
        ("bad", "recognition failing")]
    assert health_warnings(report(queue_depth=101)) == [("warn", "101 events waiting to be sent")]
    assert health_warnings(report(queue_depth=100)) == []
