"""Forward compatibility of received payloads: a reader drops the fields it does not know (top level and nested),
keeps every check of the fields it knows, and still refuses an unknown schema version. Objects built in code keep
forbidding unknown keywords (a typo in our own code fails loudly)."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

import dangol_protocol as p
from dangol_protocol import parse as parse_mod

NOW = datetime(2026, 1, 5, 8, 30, tzinfo=timezone.utc)
STORE, DEVICE, CUSTOMER = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)  # fixed: they name parametrised tests


def _catalogue(**top) -> dict:
    data = json.loads(p.dump_payload(p.Catalogue(store_id=STORE, version=7, published_at=NOW, currency="KRW",
                                                  timezone="Asia/Seoul", items=[
        p.CatalogueItem(id="latte", name="Latte", category="Coffee", price=5000, tags=["milk"]),
        p.CatalogueItem(id="scone", name="Scone", price=3500, house=False)])))
    data.update(top)
    return data


def _menu(**top) -> dict:
    data = json.loads(p.dump_payload(p.Menu(
        store_id=STORE, customer_id=CUSTOMER, display_name="Mina", model_version="m2", generated_at=NOW,
        items=[p.MenuPick(item_id="latte", score=0.9, reasons=["bought 4 times"])],
        dayparts={"breakfast": [p.MenuPick(item_id="scone", score=0.7)]})))
    data.update(top)
    return data


def _status(**health) -> dict:
    data = json.loads(p.dump_payload(p.Status(device_id=DEVICE, state="online", ts=NOW, software_version="1.4.0",
                                              health=p.Health(camera="ok", fps=9.5, gallery_size=40,
                                                              queue_depth=2, catalogue="ok"))))
    data["health"].update(health)
    return data


def _raw(data: dict) -> bytes:
    return json.dumps(data).encode()


# --- unknown fields are dropped, known values kept -------------------------------------------------------------
def test_a_catalogue_with_future_fields_parses_and_keeps_its_known_values():
    data = _catalogue(loyalty_programme={"points_per_euro": 2}, schema_note="future")
    data["items"][0]["allergens"] = ["milk"]
    data["items"][1]["calories"] = 320
    cat = p.parse_payload(p.catalogue_topic(STORE), _raw(data))
    assert cat == p.parse_payload(p.catalogue_topic(STORE), _raw(_catalogue()))  # as if they were never sent
    assert (cat.version, cat.currency, cat.timezone) == (7, "KRW", "Asia/Seoul")
    assert [(i.id, i.price, i.house, i.tags) for i in cat.items] == [("latte", 5000, True, ["milk"]),
                                                                   ("scone", 3500, False, [])]
    dumped = json.loads(p.dump_payload(cat))  # nothing of them is kept, stored or echoed
    assert "loyalty_programme" not in dumped and "allergens" not in dumped["items"][0]
    assert "calories" not in dumped["items"][1]


def test_a_menu_with_future_fields_at_every_level_parses():
    data = _menu(seasonal_banner="spring", items=[{"item_id": "latte", "score": 0.9, "reasons": ["bought 4 times"],
                                                   "explanation_id": "x1"}])
    data["dayparts"]["breakfast"][0]["confidence_band"] = "high"
    menu = p.parse_payload(p.menu_topic(STORE, CUSTOMER), _raw(data))
    assert menu == p.parse_payload(p.menu_topic(STORE, CUSTOMER), _raw(_menu()))
    assert [(i.item_id, i.score, i.reasons) for i in menu.items] == [("latte", 0.9, ["bought 4 times"])]
    assert [i.item_id for i in menu.picks_at(8)] == ["scone"] and menu.display_name == "Mina"


def test_a_status_with_a_future_health_field_parses():
    data = _status(temperature_c=61.5, npu="ok")
    data["uptime_s"] = 3600
    status = p.parse_payload(p.status_topic(DEVICE), _raw(data))
    assert status.health.catalogue == "ok" and status.health.queue_depth == 2 and status.software_version == "1.4.0"
    assert "temperature_c" not in p.dump_payload(status).decode()


def test_an_event_with_a_future_field_parses_per_kind():
    event = p.EnrolmentEvent(event_id=uuid.uuid4(), device_id=DEVICE, ts=NOW, customer_id=CUSTOMER,
                             status="active", display_name="Mina",
                             consent=p.Consent(recorded_by="staff:jo", recorded_at=NOW, text_version="2026-01"))
    data = json.loads(p.dump_payload(event))
    data["consent"]["witness"] = "staff:kim"
    data["camera_angle"] = 12
    assert p.parse_payload(p.events_topic(DEVICE), _raw(data)) == event


def test_dropped_names_are_logged_bounded_and_counted(caplog, monkeypatch):
    monkeypatch.setattr(parse_mod, "_unknown_counts", Counter())
    data = _catalogue(**{f"future_{n}": n for n in range(30)}, **{"bad\nname" + "x" * 200: 1})
    data["items"][0]["allergens"] = []
    data["items"][1]["allergens"] = []
    with caplog.at_level(logging.DEBUG, logger="dangol_protocol.parse"):
        p.parse_payload(p.catalogue_topic(STORE), _raw(data))
    messages = [r for r in caplog.records if r.name == "dangol_protocol.parse"]
    assert len(messages) == 1 and messages[0].levelno <= logging.INFO
    text = messages[0].getMessage()
    assert "33 unknown fields" in text and "items[].allergens (2)" in text and "more" in text
    assert "\n" not in text and len(text) < 1000  # a hostile name can neither forge a log line nor flood it
    assert p.unknown_field_counts()["catalogue/1 items[].allergens"] == 2
    with caplog.at_level(logging.DEBUG, logger="dangol_protocol.parse"):  # seen before: debug only
        caplog.clear()
        p.parse_payload(p.catalogue_topic(STORE), _raw(data))
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "dangol_protocol.parse")


def test_the_counter_of_distinct_names_is_bounded(monkeypatch):
    monkeypatch.setattr(parse_mod, "_unknown_counts", Counter())
    for n in range(parse_mod.MAX_COUNTED_NAMES + 50):
        p.parse_payload(p.status_topic(DEVICE), _raw(_status(**{f"random_{uuid.uuid4().hex}_{n}": 1})))
    counts = p.unknown_field_counts()
    assert len(counts) == parse_mod.MAX_COUNTED_NAMES + 1 and counts[parse_mod.OTHER_NAMES] == 50  # one bucket


# --- known fields keep their checks; unknown versions are refused ---------------------------------------------
@pytest.mark.parametrize("topic, data, where", [
    (p.catalogue_topic(STORE), _catalogue(version="seven", extra=1), "version"),
    (p.catalogue_topic(STORE), _catalogue(items=[{"id": "x", "name": "", "allergens": []}]), "items.0.name"),
    (p.catalogue_topic(STORE), _catalogue(timezone="../../etc/passwd", future=1), "timezone"),
    (p.menu_topic(STORE, CUSTOMER), _menu(items=[{"item_id": "x", "score": "high", "why": 1}]), "items.0.score"),
    (p.status_topic(DEVICE), _status(fps=-1, temperature_c=60), "health.fps"),
    (p.status_topic(DEVICE), _status(camera="melted", npu="ok"), "health.camera"),
    (p.menu_topic(STORE, CUSTOMER), _menu(store_id=str(uuid.uuid4()), future=1), "store_id"),
])
def test_a_wrong_value_in_a_known_field_is_still_refused(topic, data, where):
    with pytest.raises(p.PayloadError, match=where.replace(".", r"\.")):
        p.parse_payload(topic, _raw(data))


@pytest.mark.parametrize("topic, data", [
    (p.catalogue_topic(STORE), _catalogue(schema="catalogue/2")),
    (p.menu_topic(STORE, CUSTOMER), _menu(schema="menu/2", future=1)),
    (p.status_topic(DEVICE), {**_status(), "schema": "status/9"}),
    (p.catalogue_topic(STORE), {k: v for k, v in _catalogue().items() if k != "schema"}),
])
def test_an_unknown_schema_version_is_still_refused(topic, data):
    with pytest.raises(p.PayloadError, match="schema"):
        p.parse_payload(topic, _raw(data))


def test_an_unknown_event_kind_is_still_refused():
    data = json.loads(p.dump_payload(p.ArrivalEvent(event_id=uuid.uuid4(), device_id=DEVICE, ts=NOW)))
    data["kind"] = "departure"
    with pytest.raises(p.PayloadError, match="kind|tag"):
        p.parse_payload(p.events_topic(DEVICE), _raw(data))


def test_the_size_cap_applies_before_decoding_even_to_unknown_fields():
    data = _status(padding="x" * parse_mod.MAX_DEVICE_PAYLOAD_BYTES)
    with pytest.raises(p.PayloadError, match="exceeds"):
        p.parse_payload(p.status_topic(DEVICE), _raw(data))
    deep = _raw(_status())[:-1] + b', "future": ' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(p.PayloadError, match="nested"):
        p.parse_payload(p.status_topic(DEVICE), deep)


# --- objects built in code stay strict ------------------------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda: p.CatalogueItem(id="latte", name="Latte", prcie=3.5),
    lambda: p.Catalogue(store_id=STORE, version=1, published_at=NOW, items=[], time_zone="UTC"),
    lambda: p.Menu(store_id=STORE, customer_id=CUSTOMER, model_version="m", generated_at=NOW, items=[], extra=1),
    lambda: p.MenuPick(item_id="latte", score=1.0, reason=["x"]),
    lambda: p.Health(camera="ok", fps=1.0, gallery_size=0, queue_depth=0, temperature=1),
    lambda: p.Status(device_id=DEVICE, state="online", helth=None),
    lambda: p.ArrivalEvent(event_id=uuid.uuid4(), device_id=DEVICE, ts=NOW, shown=["x"]),
    lambda: p.Catalogue.model_validate({**_catalogue(), "future": 1}),  # direct validation stays strict too
])
def test_a_model_built_in_code_with_an_unknown_keyword_still_raises(build):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        build()
