"""A chain across zones (owner journey, 7 Dec): a Seoul store (KRW, Asia/Seoul) and a Taipei store (TWD,
Asia/Taipei), ``TIMEZONE`` UTC and ``CURRENCY`` EUR, each with a "Front door".

- "Today" counts each store's arrivals from that store's own midnight (not UTC's, the chain's "default" zone when
  the stores' zones differ); recent arrivals name their store and read on its clock; the devices on Today name
  their store.
- A regular enrolled at the Seoul door, who has bought nothing yet, sees her picks in won and her consent time on
  the Seoul clock (the store she is registered at, ``customer_origins``), on her page and in the customer list.

Events go through :func:`dangol_cloud.device_events.apply_event`, as the MQTT listener applies a device's
messages (the enrolment makes her ``customer_origins`` row).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.device_events import apply_event
from dangol_cloud.models import CatalogueItem, Device, Menu, ModelVersion, Store, StorePrice, StoreSetting
from dangol_cloud.settings import Settings
from tests.cloud.conftest import add_owner
from tests.cloud.test_web_hardening import sign_in

SEOUL, TAIPEI = ZoneInfo("Asia/Seoul"), ZoneInfo("Asia/Taipei")


def _midnight(zone: ZoneInfo, days_back: int = 0) -> datetime:
    """The start of today (``days_back`` = 0) or an earlier day on ``zone``'s clock, in UTC."""
    day = datetime.now(zone).date() - timedelta(days=days_back)
    return datetime.combine(day, time(0), zone).astimezone(timezone.utc)


@pytest.fixture
def chain(db, db_url, tmp_path):
    """``(client signed in as the owner, db, {"seoul"|"taipei": (store id, device id)})``."""
    add_owner(db)
    ids = {}
    with db.transaction() as s:
        for key, name, zone, currency in (("seoul", "Seoul Seongsu", "Asia/Seoul", "KRW"),
                                          ("taipei", "Taipei", "Asia/Taipei", "TWD")):
            store = Store(name=name, ref=key)
            s.add(store)
            s.flush()
            s.add(StoreSetting(store_id=store.id, timezone=zone, currency=currency))
            device = Device(store_id=store.id, name="Front door", mqtt_username=f"device-{uuid.uuid4()}",
                            mqtt_password_hash="x")
            s.add(device)
            s.flush()
            ids[key] = (store.id, device.id)
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k", timezone="UTC",
                        currency="EUR", _env_file=None)
    client = create_app(settings, db=db, TESTING=True).test_client()
    assert sign_in(client).status_code == 302
    return client, db, ids


def _apply(db, device_id: str, event) -> None:
    with db.transaction() as s:
        apply_event(s, s.get(Device, device_id), event, event.ts)


def _enrol(db, device_id: str, name: str, consent_at: datetime) -> str:
    customer = uuid.uuid4()
    _apply(db, device_id, proto.EnrolmentEvent(
        event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=consent_at, customer_id=customer, status="active",
        display_name=name, consent=proto.Consent(recorded_by="staff:jo", recorded_at=consent_at,
                                                 text_version="2026-01")))
    return str(customer)


def _arrive(db, device_id: str, ts: datetime, customer_id: str | None = None) -> None:
    _apply(db, device_id, proto.ArrivalEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=ts,
                                             customer_id=uuid.UUID(customer_id) if customer_id else None,
                                             confidence=0.61 if customer_id else None, shown_items=[]))


def test_today_counts_each_stores_arrivals_from_its_own_midnight(chain):
    client, db, ids = chain
    seoul_device, taipei_device = ids["seoul"][1], ids["taipei"][1]
    mina = _enrol(db, seoul_device, "Mina Park", _midnight(SEOUL, 1) + timedelta(minutes=5))
    minute = timedelta(minutes=1)
    # Seoul: Mina just after Seoul's midnight (today), two guests just before it (yesterday in Seoul)
    _arrive(db, seoul_device, _midnight(SEOUL) + minute, mina)
    for _ in range(2):
        _arrive(db, seoul_device, _midnight(SEOUL) - minute)
    # Taipei: a guest just after Taipei's midnight (today), three just before it (yesterday in Taipei)
    _arrive(db, taipei_device, _midnight(TAIPEI) + minute)
    for _ in range(3):
        _arrive(db, taipei_device, _midnight(TAIPEI) - minute)
    # on UTC's day this would be 0, 3 or 7 arrivals, whatever the hour: never the stores' own 2 (1 recognised)

    html = client.get("/").get_data(as_text=True)
    assert re.search(r"<b>(\d+)</b><span>arrivals today \((\d+) recognised\)", html).groups() == ("2", "1")

    recent = re.search(r"<h2>Recent arrivals</h2>(.*?)</table>", html, re.S).group(1)
    assert re.search(r"<th>Store</th>", recent)
    rows = re.findall(r"<tr>(.*?)</tr>", recent, re.S)[1:]
    assert len(rows) == 7
    mina_row = next(r for r in rows if "Mina Park" in r)
    seoul_today = datetime.now(SEOUL).date().isoformat()
    assert f"{seoul_today} 00:01" in mina_row and "Seoul Seongsu" in mina_row  # on the Seoul clock, named
    taipei_today = datetime.now(TAIPEI).date().isoformat()
    assert sum(f"{taipei_today} 00:01" in r and "Taipei" in r for r in rows) == 1

    system = re.search(r"<h2>System</h2>(.*?)</table>", html, re.S).group(1)
    doors = re.findall(r"<tr><td>(Front door[^<]*(?:<[^>]+>[^<]*)*?)</td>", system)
    named = [re.sub(r"<[^>]+>", "", d) for d in doors]
    assert len(named) == 2 and any("Seoul Seongsu" in d for d in named) and any("Taipei" in d for d in named), named


def test_staff_today_counts_their_store_from_its_own_midnight(chain):
    """A staff user of the Taipei store sees Taipei's day (the zone they share), unchanged by the fix."""
    client, db, ids = chain
    from dangol_cloud.models import User, UserStore
    from dangol_cloud.security import hash_password

    with db.transaction() as s:
        user = User(email="lin@cafe.example", password_hash=hash_password("staff-password-1"), role="staff")
        s.add(user)
        s.flush()
        s.add(UserStore(user_id=user.id, store_id=ids["taipei"][0]))
    minute = timedelta(minutes=1)
    _arrive(db, ids["taipei"][1], _midnight(TAIPEI) + minute)
    _arrive(db, ids["taipei"][1], _midnight(TAIPEI) - minute)
    _arrive(db, ids["seoul"][1], _midnight(SEOUL) + minute)
    staff = client.application.test_client()
    assert sign_in(staff, "lin@cafe.example", "staff-password-1").status_code == 302
    html = staff.get("/").get_data(as_text=True)
    assert re.search(r"<b>(\d+)</b><span>arrivals today", html).group(1) == "1"
    assert "Seoul Seongsu" not in html


def test_a_door_enrolled_regular_reads_in_her_stores_currency_and_clock(chain):
    client, db, ids = chain
    consent_at = _midnight(SEOUL, 1) + timedelta(minutes=25)  # 00:25 in Seoul, the day before in UTC
    mina = _enrol(db, ids["seoul"][1], "Mina Park", consent_at)
    with db.transaction() as s:
        # the catalogue price is in EUR (the stores' currencies differ: CURRENCY); the latte has its own Seoul price
        s.add_all([ModelVersion(version="m-chain", path="nowhere"),
                   CatalogueItem(id="latte", name="Caffè latte", ref="latte", price=4.5),
                   CatalogueItem(id="scone", name="Scone", ref="scone", price=3.2)])
        s.flush()
        s.add(StorePrice(item_id="latte", store_id=ids["seoul"][0], price=5000, currency="KRW"))
        s.add(Menu(customer_id=mina, model_version="m-chain",
                   picks=[{"item_id": "latte", "score": 0.03, "reasons": ["popular with our customers"]},
                          {"item_id": "scone", "score": 0.02, "reasons": ["popular with our customers"]}]))

    page = client.get(f"/customers/{mina}").get_data(as_text=True)
    picks = re.search(r'<ol class="picks" id="picks">(.*?)</ol>', page, re.S).group(1)
    # as her Seoul door shows them: the latte's Seoul price in won; the scone has no Seoul price and the catalogue's
    # is in euros, which Seoul does not take: no price (never "₩3" or "€3.20")
    assert "₩5,000" in picks and "€" not in picks and "₩3" not in picks, picks
    scone = re.search(r"<b>Scone</b>(.*?)</div>", picks, re.S).group(1)
    assert "·" not in scone, scone
    card = re.search(r'id="consent-card">(.*?)</table>', page, re.S).group(1)
    seoul = consent_at.astimezone(SEOUL)
    assert f"<td>When</td><td>{seoul:%Y-%m-%d %H:%M}</td>" in card, card

    listing = client.get("/customers/").get_data(as_text=True)
    row = re.search(r"Mina Park.*?</tr>", listing, re.S).group(0)
    assert f"<td>{seoul:%Y-%m-%d}</td>" in row, row  # the Consent column, on the Seoul clock
    assert f"<td>{consent_at:%Y-%m-%d}</td>" not in row
