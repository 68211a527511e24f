"""The service layer (:mod:`dangol_cloud.services`): one retrain-and-publish and one consent record for the CLI,
the dashboard's jobs, the schedule and the MQTT listener; real Ta-Feng rows, real Mosquitto."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

import dangol_protocol as proto
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import AuditEntry, CatalogueVersion, Customer, Menu, ModelVersion
from dangol_cloud.services import PublishFailed, record_consent, retrain_and_publish
from dangol_cloud.settings import Settings
from tests.broker import MosquittoBroker, free_port

from .conftest import _database, add_store_and_device, utc
from .test_cloud_mqtt import Collector


@pytest.fixture
def trained_db(sqlite_url, ta_feng_slice):
    """SQLite with 3,000 real Ta-Feng purchases, one store + device, and one imported customer given consent."""
    db = _database(sqlite_url)
    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        import_rows(s, parse_purchases(ta_feng_slice, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    with db.transaction() as s:
        customer = s.scalars(select(Customer).order_by(Customer.id).limit(1)).one()
        assert record_consent(s, customer, display_name="Mina Park", recorded_by="staff:jo", text_version="2026-01",
                              recorded_at=utc(2026, 1, 2, 9), actor="owner@cafe.example")
        customer_id = customer.id
    yield db, store_id, customer_id
    db.dispose()


def _settings(tmp_path, db, mqtt_url=None) -> Settings:
    return Settings(cloud_home=tmp_path / "home", database_url=str(db.engine.url), secret_key="k",
                    mqtt_url=mqtt_url, _env_file=None)


def test_record_consent_activates_and_audits_once(trained_db):
    db, _, customer_id = trained_db
    with db.transaction() as s:
        customer = s.get(Customer, customer_id)
        assert customer.status == "active" and customer.display_name == "Mina Park"
        assert customer.consent_text_version == "2026-01" and customer.consent_by == "staff:jo"
        # the same record again (a re-sent enrolment event) is not new and not audited twice
        assert not record_consent(s, customer, display_name=None, recorded_by="staff:jo", text_version="2026-01",
                                  recorded_at=customer.consent_at, actor="device:x")
        assert customer.display_name == "Mina Park"
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)
                        .where(AuditEntry.action == "consent-recorded")) == 1


@pytest.mark.slow
def test_retrain_and_publish_sends_the_menus_without_the_unpublished_catalogue(trained_db, tmp_path):
    db, store_id, customer_id = trained_db
    steps: list[str] = []
    with MosquittoBroker(tmp_path / "mq") as broker:
        collector = Collector(broker, [f"{proto.ROOT}/stores/{store_id}/menus/+"])
        try:
            result = retrain_and_publish(db, _settings(tmp_path, db, broker.url), progress=steps.append)
            messages = collector.wait_for(1)
        finally:
            collector.close()
    with db.sessions() as s:
        assert s.get(ModelVersion, result.model_version) is not None
        assert s.scalar(select(func.count()).select_from(Menu)) == result.menus > 0
        assert s.scalar(select(func.count()).select_from(CatalogueVersion)) == 0   # published_by=None: menus only
    assert steps[0] == "load" and steps[-1] == "publish"
    assert result.menu_messages == 1 and result.catalogue_messages == 0 and result.stores == 1
    assert result.messages_published == 1 and result.seconds > 0
    assert [topic for topic, _, retained in messages] == [proto.menu_topic(store_id, customer_id)]


@pytest.mark.slow
def test_a_failed_publish_keeps_the_trained_model(trained_db, tmp_path):
    db, _, _ = trained_db
    with pytest.raises(PublishFailed, match="unreachable") as caught:
        retrain_and_publish(db, _settings(tmp_path, db, f"mqtt://127.0.0.1:{free_port()}"),
                            published_by="dangol-cloud train")
    result = caught.value.result
    with db.sessions() as s:
        assert s.get(ModelVersion, result.model_version) is not None and result.messages_published is None
        assert s.scalar(select(func.count()).select_from(CatalogueVersion)) == 0   # rolled back with the publish


def test_an_unknown_store_is_refused_before_training(trained_db, tmp_path):
    db, _, _ = trained_db
    with pytest.raises(LookupError, match="no-such-store"):
        retrain_and_publish(db, _settings(tmp_path, db, "mqtt://127.0.0.1:1"), store_id="no-such-store")
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
