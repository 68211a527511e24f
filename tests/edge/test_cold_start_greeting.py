"""A new regular with no purchases is not told the cloud's cold-start list is "Your usual".

On activation the cloud writes and publishes a menu at once (``welcome_regulars`` → ``refresh_menus``); for a
customer the model has no interactions of it is the cold-start list (what sells), so the ``menu/1`` says
``personal: false`` and the door heads it "Today's favourites". A regular with purchases still hears "Your usual".
Both go through the real path: cloud training/refresh → ``menu_messages`` → the box's cache → the arrival worker
→ the menu page.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

import dangol_protocol as proto
from dangol_edge.events import EventFactory, Outbox
from dangol_edge.screen import Screen
from dangol_edge.tracker import Decision
from dangol_edge.web import create_app
from dangol_edge.workers import ArrivalWorker, Stats
from tests.cloud.conftest import DEV_DATA_KEY, _database, add_store_and_device, ta_feng_slice  # noqa: F401

DEVICE = "22222222-2222-2222-2222-222222222222"


@pytest.fixture
def cloud(tmp_path, ta_feng_slice, monkeypatch):  # noqa: F811
    """A cloud with the Ta-Feng slice imported, every product on the menu, a published catalogue:
    ``(db, settings, store id)``."""
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows
    from dangol_cloud.menu_mapping import map_products
    from dangol_cloud.models import CatalogueItem
    from dangol_cloud.publishing import publish_catalogue_version
    from dangol_cloud.settings import Settings

    monkeypatch.setenv("DANGOL_DATA_KEY", DEV_DATA_KEY)
    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = _database(url)
    store_id, _ = add_store_and_device(db)
    settings = Settings(cloud_home=tmp_path / "cloud-home", database_url=url, secret_key="x", _env_file=None)
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                    store_id=store_id)
    with db.transaction() as s:
        map_products(s, list(s.scalars(select(CatalogueItem.id))), "self", by="owner")
        publish_catalogue_version(s, published_by="owner")
    yield db, settings, store_id
    db.dispose()


def _add_regular(db, customer_id: str, *, purchases: int = 0) -> None:
    """Mina, active with consent, with ``purchases`` lines of the best-selling items (0: a brand-new regular)."""
    from sqlalchemy import func

    from dangol_cloud.models import Customer, Purchase

    with db.transaction() as s:
        s.add(Customer(id=customer_id, display_name="Mina Park", status="active", source="edge", consent_by="Jo",
                       consent_at=datetime.now(timezone.utc), consent_text_version="1"))
        top = list(s.scalars(select(Purchase.item_id).group_by(Purchase.item_id)
                             .order_by(func.count().desc()).limit(purchases)))
        now = datetime.now(timezone.utc)
        for n in range(purchases):
            s.add(Purchase(customer_id=customer_id, item_id=top[n % len(top)], quantity=1, amount=3.0,
                           ts=now - timedelta(days=n + 1), source="pos", idempotency_key=f"mina-{n}"))


def _door_sees(db, door_with_mina) -> tuple[proto.Menu, dict, str]:
    """Mina's published menu through the box's cache, the arrival worker and the menu page:
    ``(menu as the box parsed it, screen snapshot, page headline)``."""
    from dangol_cloud.models import Store
    from dangol_cloud.publishing import catalogue_messages, menu_messages

    config, state, gallery, mina = door_with_mina
    with db.sessions() as s:
        stores = list(s.scalars(select(Store)))
        _, cat_payload, _ = next(catalogue_messages(s, stores, "KRW"))
        topic, menu_payload, _ = next(menu_messages(s, stores, customer_ids=[mina]))
    assert state.put_catalogue(proto.parse_payload(proto.catalogue_topic(stores[0].id), cat_payload))
    menu = proto.parse_payload(topic, menu_payload)
    assert state.put_menu(menu)
    screen = Screen()
    worker = ArrivalWorker(config, gallery, state, screen, EventFactory(DEVICE), Outbox(DEVICE, state),
                           queue.Queue(), Stats(), threading.Event(), now=lambda: datetime.now(timezone.utc))
    worker.handle(Decision(kind="known", track_id=1, ts=1.0, first_ts=1.0, votes=3, frames=3, customer_id=mina,
                           score=0.8, arrival=True))
    html = create_app(screen=screen, state=state, gallery=gallery, config=config).test_client().get(
        "/", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_data(as_text=True)
    lead = re.search(r'<p class="lead">([^<]*)</p>', html)
    return menu, screen.snapshot(), lead.group(1) if lead else ""


def test_a_new_regulars_cold_start_menu_is_todays_favourites_not_your_usual(cloud, door_with_mina):
    from dangol_cloud.models import Menu
    from dangol_cloud.training import refresh_menus, train_from_database

    db, settings, _ = cloud
    mina = door_with_mina[3]
    train_from_database(db, settings)
    _add_regular(db, mina)  # activated at the door after the training: no purchases, no interactions
    assert refresh_menus(db, settings, [mina]) == 1  # what welcome_regulars does right after activation
    with db.sessions() as s:
        assert all(p["reasons"] == ["popular with our customers"] for p in s.get(Menu, mina).picks)
    menu, snap, lead = _door_sees(db, door_with_mina)
    assert lead == "Today's favourites"
    assert snap["screen"] == "welcome" and len(snap["picks"]) > 1  # the cloud's popular picks are shown
    assert snap["own_picks"] is False and menu.personal is False


def test_a_new_regular_of_a_fresh_training_gets_a_non_personal_menu_too(cloud, door_with_mina):
    from dangol_cloud.training import train_from_database

    db, settings, _ = cloud
    _add_regular(db, door_with_mina[3])  # enrolled before the training: the cold-start list from training
    train_from_database(db, settings)
    menu, snap, lead = _door_sees(db, door_with_mina)
    assert lead == "Today's favourites" and snap["own_picks"] is False and menu.personal is False


def test_a_regular_with_purchases_still_hears_your_usual(cloud, door_with_mina):
    from dangol_cloud.training import refresh_menus, train_from_database

    db, settings, _ = cloud
    mina = door_with_mina[3]
    _add_regular(db, mina, purchases=6)
    train_from_database(db, settings)
    assert refresh_menus(db, settings, [mina]) == 1  # the refresh of a known customer stays personal
    menu, snap, lead = _door_sees(db, door_with_mina)
    assert lead == "Your usual, and a few ideas for today"
    assert snap["own_picks"] is True and menu.personal is True


# --- the field on the wire ----------------------------------------------------------------------------------
def _menu(**extra) -> proto.Menu:
    return proto.Menu(store_id=uuid.uuid4(), customer_id=uuid.uuid4(), display_name="Mina", model_version="m1",
                      generated_at=datetime(2026, 1, 5, 8, 30, tzinfo=timezone.utc),
                      items=[proto.MenuPick(item_id="latte", score=0.9)], **extra)


def test_personal_is_sent_only_when_false_and_an_older_clouds_menu_reads_as_personal():
    personal, popular = _menu(), _menu(personal=False)
    assert "personal" not in json.loads(proto.dump_payload(personal))  # a personal menu's bytes are as before
    assert json.loads(proto.dump_payload(popular))["personal"] is False
    older = json.loads(proto.dump_payload(personal))  # a menu of a cloud from before the field
    parsed = proto.parse_payload(proto.menu_topic(personal.store_id, personal.customer_id), json.dumps(older).encode())
    assert parsed.personal is True
    again = proto.parse_payload(proto.menu_topic(popular.store_id, popular.customer_id), proto.dump_payload(popular))
    assert again == popular and again.personal is False
