"""dangol_protocol: topic builders/parser and payload validation against the topic."""

import json
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest

import dangol_protocol as p

NOW = datetime(2026, 1, 5, 8, 30, tzinfo=timezone.utc)
STORE, DEVICE, CUSTOMER = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)  # fixed: they name parametrised tests


def test_topic_builders_and_parser_round_trip():
    assert p.catalogue_topic(STORE) == f"dangol/v1/stores/{STORE}/catalogue"
    assert p.menu_topic(STORE, CUSTOMER) == f"dangol/v1/stores/{STORE}/menus/{CUSTOMER}"
    assert p.parse_topic(p.menu_topic(STORE, CUSTOMER)) == p.Topic(p.TopicKind.MENU, store_id=str(STORE),
                                                                   customer_id=str(CUSTOMER))
    assert p.parse_topic(p.status_topic(DEVICE)).retained is True
    assert p.parse_topic(p.events_topic(DEVICE)).retained is False
    assert p.parse_topic(p.erasures_topic(STORE)).kind is p.TopicKind.ERASURES
    assert (p.catalogue_topic(STORE), 1) in p.store_subscriptions(STORE)


@pytest.mark.parametrize("topic", ["dangol/v2/stores/x/catalogue", f"dangol/v1/stores/{STORE}/menus",
                                   "dangol/v1/stores/not-a-uuid/catalogue", f"dangol/v1/devices/{DEVICE}/other",
                                   f"/dangol/v1/devices/{DEVICE}/events"])
def test_parse_topic_refuses_foreign_topics(topic):
    with pytest.raises(p.TopicError, match="topic"):
        p.parse_topic(topic)


def _payloads():
    yield p.catalogue_topic(STORE), p.Catalogue(store_id=STORE, version=3, published_at=NOW, items=[
        p.CatalogueItem(id="latte", name="Caffè latte", category="coffee", price=3.8, tags=["milk"])])
    yield p.menu_topic(STORE, CUSTOMER), p.Menu(store_id=STORE, customer_id=CUSTOMER, model_version="m1",
                                                 generated_at=NOW, items=[p.MenuPick(item_id="latte", score=1.5,
                                                                                     reasons=["bought 4 times"])])
    yield p.erasures_topic(STORE), p.Erasures(store_id=STORE, erasure_id=uuid.uuid4(), requested_at=NOW,
                                              customer_ids=[CUSTOMER])
    yield p.events_topic(DEVICE), p.ArrivalEvent(event_id=p.new_event_id(), device_id=DEVICE, ts=NOW,
                                                 customer_id=CUSTOMER, confidence=0.8, shown_items=["latte"])
    yield p.events_topic(DEVICE), p.EnrolmentEvent(
        event_id=p.new_event_id(), device_id=DEVICE, ts=NOW, customer_id=CUSTOMER, status="active",
        display_name="Mina", consent=p.Consent(recorded_by="staff:jo", recorded_at=NOW, text_version="v1"))
    yield p.events_topic(DEVICE), p.ErasureDoneEvent(event_id=p.new_event_id(), device_id=DEVICE, ts=NOW,
                                                     customer_ids=[CUSTOMER])
    yield p.status_topic(DEVICE), p.Status(device_id=DEVICE, state="online", ts=NOW,
                                           health=p.Health(camera="ok", fps=9.5, gallery_size=40, queue_depth=0))
    yield p.status_topic(DEVICE), p.Status(device_id=DEVICE, state="offline")  # the last will


@pytest.mark.parametrize("topic,model", list(_payloads()), ids=lambda v: v.__class__.__name__)
def test_every_payload_round_trips_with_its_schema(topic, model):
    raw = p.dump_payload(model)
    data = json.loads(raw)
    assert data["schema"].endswith("/1") and data["schema"].split("/")[0] in topic.replace("menus", "menu")
    assert p.parse_payload(topic, raw) == model


def test_event_ids_are_unique_uuids():
    ids = {p.new_event_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(isinstance(i, uuid.UUID) for i in ids)


def _arrival(**changes):
    data = json.loads(p.dump_payload(p.ArrivalEvent(event_id=uuid.uuid4(), device_id=DEVICE, ts=NOW)))
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty payload"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"{not json", "not UTF-8 JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (_arrival(schema="event/2"), "schema is 'event/2'"),
    (_arrival(schema="menu/1"), "expected 'event/1'"),
    (_arrival(kind="departure"), "does not match any of the expected tags"),
    (_arrival(confidence=1.7), "confidence"),
    (_arrival(ts="2026-01-05T08:30:00"), "ts"),          # naive timestamps are refused
    (_arrival(device_id=str(uuid.uuid4())), "does not match the topic"),
    (_arrival(event_id="42"), "event_id"),
])
def test_parse_payload_refuses_bad_payloads_naming_topic_and_reason(raw, reason):
    topic = p.events_topic(DEVICE)
    with pytest.raises(p.PayloadError) as info:
        p.parse_payload(topic, raw)
    assert topic in str(info.value) and reason in str(info.value)
    assert info.value.topic == topic


def test_an_unknown_field_is_dropped_and_the_known_ones_still_checked():
    """Forward compatibility (:mod:`dangol_protocol.lenient`): a newer sender's extra field is dropped, not an
    error; the same payload with a bad known field is still refused."""
    event = p.parse_payload(p.events_topic(DEVICE), _arrival(extra_field=1))
    assert isinstance(event, p.ArrivalEvent) and "extra_field" not in event.model_dump()
    with pytest.raises(p.PayloadError, match="confidence"):
        p.parse_payload(p.events_topic(DEVICE), _arrival(extra_field=1, confidence=1.7))


def test_menu_for_another_customer_is_refused():
    raw = p.dump_payload(p.Menu(store_id=STORE, customer_id=uuid.uuid4(), model_version="m", generated_at=NOW,
                                items=[]))
    with pytest.raises(p.PayloadError, match="customer_id"):
        p.parse_payload(p.menu_topic(STORE, CUSTOMER), raw)


def test_retained_clear_is_recognised():
    assert p.is_retained_clear(b"") and not p.is_retained_clear(b"{}")


def test_protocol_imports_only_pydantic():
    code = ("import sys, dangol_protocol; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'flask','sqlalchemy','paho','numpy','pandas','dangol_cloud','dangol_edge'}); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_last_will_is_a_valid_offline_status():
    topic, payload = p.last_will(DEVICE)
    status = p.parse_payload(topic, payload)
    assert topic == p.status_topic(DEVICE) and status.state == "offline" and status.health is None


from hypothesis import given, settings, strategies as st  # noqa: E402

_text = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and s)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300) | st.from_regex(rb'\{"schema": ?"event/1".{0,200}\}', fullmatch=True))
def test_parse_payload_only_ever_raises_payload_error(raw):
    try:
        p.parse_payload(p.events_topic(DEVICE), raw)
    except p.PayloadError as exc:
        assert exc.topic == p.events_topic(DEVICE) and exc.reason


@settings(max_examples=100, deadline=None)
@given(picks=st.lists(st.builds(p.MenuPick, item_id=_text, score=st.floats(-1e6, 1e6),
                                reasons=st.lists(_text, max_size=3)), max_size=12),
       version=_text, name=st.none() | _text)
def test_any_menu_round_trips(picks, version, name):
    menu = p.Menu(store_id=STORE, customer_id=CUSTOMER, model_version=version, generated_at=NOW, items=picks,
                  display_name=name)
    assert p.parse_payload(p.menu_topic(STORE, CUSTOMER), p.dump_payload(menu)) == menu


# --- catalogue/1: every menu item with its house-menu marker, and the zone of the day-parts ---------------
def _catalogue_json(**changes) -> bytes:
    data = json.loads(p.dump_payload(p.Catalogue(store_id=STORE, version=3, published_at=NOW, items=[
        p.CatalogueItem(id="latte", name="Caffè latte", category="Coffee", price=3.8)])))
    data.update(changes)
    return json.dumps(data).encode()


def test_a_catalogue_carries_the_house_marker_and_the_zone_of_its_dayparts():
    cat = p.Catalogue(store_id=STORE, version=4, published_at=NOW, timezone="America/New_York", items=[
        p.CatalogueItem(id="latte", name="Caffè latte", category="Coffee"),
        p.CatalogueItem(id="mocha", name="Mocha", category="Coffee", house=False)])
    raw = p.dump_payload(cat)
    data = json.loads(raw)
    assert data["timezone"] == "America/New_York" and [i["house"] for i in data["items"]] == [True, False]
    assert p.parse_payload(p.catalogue_topic(STORE), raw) == cat


def test_an_older_clouds_catalogue_without_the_new_fields_still_parses():
    """What a cloud before the house marker and the zone published: every item is a house item (that cloud
    sent only those) and there is no zone (the box's own local time picks the day-part)."""
    old = {"schema": "catalogue/1", "store_id": str(STORE), "version": 2, "published_at": NOW.isoformat(),
           "currency": "EUR", "items": [{"id": "latte", "name": "Latte", "category": "Coffee", "price": 3.8,
                                          "description": "", "tags": [], "photo_url": None, "available": True}]}
    cat = p.parse_payload(p.catalogue_topic(STORE), json.dumps(old).encode())
    assert cat.timezone is None and [i.house for i in cat.items] == [True]


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/usr/share/zoneinfo/UTC", "", "   ",
                                  "America/New_York\x00", "Europe/" + "A" * 300, 5, ["UTC"]])
def test_a_catalogue_with_an_unknown_zone_is_refused_naming_the_field(zone):
    assert p.parse_payload(p.catalogue_topic(STORE), _catalogue_json(timezone="Asia/Seoul")).timezone == "Asia/Seoul"
    with pytest.raises(p.PayloadError, match="timezone"):
        p.parse_payload(p.catalogue_topic(STORE), _catalogue_json(timezone=zone))
    with pytest.raises(ValueError, match="timezone"):  # and the cloud cannot build one
        p.Catalogue(store_id=STORE, version=1, published_at=NOW, items=[], timezone=zone)


def test_a_catalogue_holds_at_most_max_catalogue_items():
    items = [{"id": f"i{n}", "name": f"Item {n}"} for n in range(p.MAX_CATALOGUE_ITEMS + 1)]
    with pytest.raises(p.PayloadError, match="items"):
        p.parse_payload(p.catalogue_topic(STORE), _catalogue_json(items=items))
    assert len(p.parse_payload(p.catalogue_topic(STORE), _catalogue_json(items=items[:-1])).items) == len(items) - 1


@pytest.mark.parametrize("zone, hour", [("America/New_York", 8), ("Europe/London", 13), ("Asia/Seoul", 21),
                                        ("UTC", 12)])
def test_the_local_time_of_a_catalogue_is_the_wall_clock_of_its_zone(zone, hour):
    instant = datetime(2026, 6, 1, 12, 30, tzinfo=timezone.utc)
    cat = p.Catalogue(store_id=STORE, version=1, published_at=NOW, items=[], timezone=zone)
    assert cat.local_time(instant).hour == hour and cat.local_time(instant).utcoffset() is not None
