"""End to end over a real Mosquitto: an edge applies a retained catalogue and menu from a newer cloud that carry
fields this version does not know (forward compatibility: the door still shows its menu)."""

from __future__ import annotations

import json
import uuid

import pytest

from dangol_edge.config import MQTTConfig
from dangol_edge.state import StateStore
from dangol_edge.sync import MQTTSync
from dangol_protocol.topics import catalogue_topic, menu_topic
from tests.broker import MosquittoBroker
from tests.edge.test_sync import Cloud, broker, catalogue, menu, state, wait_for  # noqa: F401 (fixtures)

STORE = uuid.uuid4()
DEVICE = uuid.uuid4()


def _future(raw: bytes, **top) -> bytes:
    """``raw`` (a payload of tests/edge/test_sync.py) for this store, with a per-item (per-pick) field
    ``future_rating`` and the top-level fields ``top``, as a newer cloud might send."""
    data = json.loads(raw)
    data["store_id"] = str(STORE)
    for item in data["items"]:
        item["future_rating"] = {"stars": 4}
    data.update(top)
    return json.dumps(data).encode()


def test_the_edge_applies_a_catalogue_and_a_menu_carrying_future_fields(broker, state):
    cloud = Cloud(broker)
    cust = uuid.uuid4()
    cloud.publish(catalogue_topic(STORE), _future(catalogue(5), loyalty={"points": 2}, timezone="Asia/Seoul"),
                  retain=True)
    cloud.publish(menu_topic(STORE, cust), _future(menu(cust, ["scone", "latte"]), banner="spring"), retain=True)
    changes: list[str] = []
    sync = MQTTSync(MQTTConfig(url=f"mqtt://{broker.host}:{broker.port}", keepalive_s=5, reconnect_min_s=1,
                               reconnect_max_s=2), DEVICE, STORE, state, on_change=changes.append)
    sync.start()
    try:
        assert wait_for(lambda: state.catalogue() is not None and state.menu(str(cust)) is not None)
        applied = state.catalogue()
        assert (applied.version, applied.currency, applied.timezone) == (5, "KRW", "Asia/Seoul")
        assert [(i.id, i.price) for i in applied.items] == [("latte", 5000), ("scone", 3500)]
        assert [p.item_id for p in state.menu(str(cust)).items] == ["scone", "latte"]
        assert sync.invalid_messages == 0 and "catalogue" in changes and "menu" in changes
        cached = state.db.execute("SELECT payload FROM catalogue WHERE id = 1").fetchone()[0]
        assert "future_rating" not in cached and "loyalty" not in cached  # nothing unknown is stored
    finally:
        sync.stop()
        cloud.close()
