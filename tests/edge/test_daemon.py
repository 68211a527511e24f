"""The appliance daemon end to end on the real Hamilton clip, real model, real Mosquitto."""

from __future__ import annotations

import json
import urllib.request
import uuid
from datetime import datetime, timezone

import pytest

from dangol_edge.config import EdgeConfig
from dangol_edge.daemon import Appliance
from dangol_edge.enrol import sample_from_photo
from dangol_edge.gallery import Gallery
from dangol_edge.state import StateStore
from dangol_protocol import Consent
from dangol_protocol.topics import catalogue_topic, menu_topic
from tests.broker import MosquittoBroker, free_port
from tests.edge.test_sync import Cloud, wait_for

STORE = uuid.uuid4()
DEVICE = uuid.uuid4()
LIN = str(uuid.uuid4())


def catalogue_payload(version=1) -> dict:
    return {"schema": "catalogue/1", "store_id": str(STORE), "version": version,
            "published_at": datetime.now(timezone.utc).isoformat(), "currency": "KRW",
            "items": [{"id": "flat-white", "name": "Flat white", "category": "Coffee", "price": 5500},
                      {"id": "yuja-tea", "name": "Yuja tea", "category": "Tea", "price": 5000},
                      {"id": "croffle", "name": "Croffle", "category": "Bakery", "price": 4500, "available": False},
                      {"id": "scone", "name": "Scone", "category": "Bakery", "price": 3800}]}


def menu_payload(items, generated_at=None) -> dict:
    return {"schema": "menu/1", "store_id": str(STORE), "customer_id": LIN, "display_name": "Lin-Manuel Miranda",
            "model_version": "test", "generated_at": (generated_at or datetime.now(timezone.utc)).isoformat(),
            "items": [{"item_id": i, "score": 1.0 - n / 10, "reasons": []} for n, i in enumerate(items)]}


@pytest.fixture
def home(tmp_path, model_path, pipeline, clips):
    """A home with Lin-Manuel Miranda enrolled (one photo) under a fixed customer id."""
    h = tmp_path / "home"
    from dangol_edge.embed import file_sha256

    with Gallery(h / "gallery.sqlite", file_sha256(model_path)) as g:
        s = sample_from_photo(clips / "lin-manuel-miranda.png", pipeline)
        g.enroll("Lin-Manuel Miranda", s.embedding[None], customer_id=LIN,
                 consent=Consent(recorded_by="test", recorded_at=datetime.now(timezone.utc), text_version="1"))
    return h


def config(home, model_path, clips, mqtt_url=None, **extra) -> EdgeConfig:
    """A test config; ``extra`` sections are merged into the defaults (``camera={"loop": True}``)."""
    sections = {
        "embedder": {"model_path": model_path}, "device": {"id": DEVICE, "store_id": STORE},
        "mqtt": {"url": mqtt_url, "keepalive_s": 5, "reconnect_min_s": 1, "reconnect_max_s": 2, "status_interval_s": 1},
        "camera": {"source": str(clips / "short_hamilton_clip.mp4"), "realtime": False, "queue_size": 4},
        "display": {"port": free_port(), "welcome_s": 30}, "gpio": {"enabled": False},
    }
    for name, values in extra.items():
        sections[name] = {**sections.get(name, {}), **values}
    return EdgeConfig(home=home, **sections)


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_arrival_shows_the_cloud_menu_and_reaches_the_cloud(tmp_path, home, model_path, clips):
    with MosquittoBroker(tmp_path / "broker") as broker:
        cloud = Cloud(broker)
        cloud.publish(catalogue_topic(STORE), json.dumps(catalogue_payload()).encode(), retain=True)
        cloud.publish(menu_topic(STORE, LIN), json.dumps(menu_payload(["croffle", "yuja-tea", "gone-item", "scone"])).encode(),
                      retain=True)
        app = Appliance(config(home, model_path, clips, f"mqtt://{broker.host}:{broker.port}"))
        app.start()
        try:
            assert wait_for(lambda: app.stats.arrivals >= 1, timeout=120)
            snap = app.screen.snapshot()
            assert snap["screen"] == "welcome" and snap["first_name"] == "Lin-Manuel"
            # sold-out (croffle) and unknown (gone-item) items are never shown; the menu's order is kept
            assert [p["id"] for p in snap["picks"]] == ["yuja-tea", "scone"]
            assert "image" not in json.dumps(snap)  # no face image on screen
            page = get_json(app.web.url.rstrip("/") + "/api/state")
            assert page["screen"] == "welcome"
            assert wait_for(lambda: any(e.get("customer_id") == LIN for e in cloud.events()), timeout=15)
            ev = [e for e in cloud.events() if e.get("customer_id") == LIN][0]
            assert ev["kind"] == "arrival" and ev["shown_items"] == ["yuja-tea", "scone"]
            assert ev["device_id"] == str(DEVICE)
            # a menu update from the cloud reaches the box while it runs
            cloud.publish(menu_topic(STORE, LIN), json.dumps(menu_payload(["flat-white"])).encode(), retain=True)
            assert wait_for(lambda: [p.id for p in app.picks_for(LIN)] == ["flat-white"])
            # health on the retained status topic
            assert wait_for(lambda: any(t.endswith("/status") and json.loads(p)["state"] == "online"
                                        and json.loads(p)["health"]["gallery_size"] == 1
                                        for t, p, _ in list(cloud.messages)))
            app.stop()
            # a clean stop publishes offline (the last will covers a crash)
            assert wait_for(lambda: any(t.endswith("/status") and json.loads(p)["state"] == "offline"
                                        for t, p, _ in list(cloud.messages)))
        finally:
            app.stop()
            cloud.close()


def test_broker_down_keeps_cached_menu_and_loses_no_event(tmp_path, home, model_path, clips):
    # the cache was filled by an earlier sync; now the broker is down when the customer walks in
    st = StateStore(home / "state.sqlite").open()
    st.put_catalogue(catalogue_payload())
    st.put_menu(menu_payload(["scone", "flat-white"]))
    st.close()
    # a production-like broker (persistence on) that already knows the cloud's session, then goes down
    broker = MosquittoBroker(tmp_path / "broker", persistence=True).start()
    port = broker.port
    cloud = Cloud(broker)
    assert wait_for(lambda: cloud.c.is_connected())
    broker.stop()
    app = Appliance(config(home, model_path, clips, f"mqtt://127.0.0.1:{port}"))
    app.start()
    try:
        assert wait_for(lambda: app.stats.arrivals >= 1, timeout=120)
        snap = app.screen.snapshot()
        assert [p["id"] for p in snap["picks"]] == ["scone", "flat-white"]
        assert wait_for(lambda: app.frames.empty() and app.stats.frames_processed > 200, timeout=60)
        depth = app.state.outbox_depth()
        assert depth >= 1  # the arrival (and unknown faces) wait in the outbox
        queued = {e["event_id"] for e in app.state.pending()}
        broker.start(port=port)
        assert wait_for(lambda: app.state.outbox_depth() == 0, timeout=30)
        assert wait_for(lambda: queued <= {e["event_id"] for e in cloud.events()}, timeout=15)
    finally:
        app.stop()
        cloud.close()
        broker.stop()


def test_bad_broker_url_and_missing_device_ids_are_refused(home, model_path, clips):
    from dangol_edge.config import ConfigError

    cfg = config(home, model_path, clips, "mqtt://127.0.0.1:1883")
    cfg = cfg.model_copy(update={"device": cfg.device.model_copy(update={"id": None})})
    with pytest.raises(ConfigError, match="device.id"):
        Appliance(cfg).start()
    with pytest.raises(ValueError, match="broker URL"):
        Appliance(config(home, model_path, clips, "http://nope")).start()
