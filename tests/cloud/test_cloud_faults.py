"""Faults on the cloud side: training that dies half-way (exception before commit, or ``kill -9`` of
``dangol-cloud train``) leaves the previous model version current, its menus intact, and those menus are
what ``publish`` sends to the stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud import training
from dangol_cloud.cli import main as cli
from dangol_cloud.db import Database
from dangol_cloud.models import Customer, Menu, ModelVersion
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, add_store_and_device, utc
from .test_cloud_mqtt import Collector

pytestmark = pytest.mark.slow


def _state(db) -> tuple[str, dict[str, tuple[str, list]]]:
    with db.sessions() as s:
        current = s.scalar(select(ModelVersion.version).order_by(ModelVersion.created_at.desc()).limit(1))
        menus = {m.customer_id: (m.model_version, m.picks) for m in s.scalars(select(Menu))}
    return current, menus


@pytest.fixture
def trained(tmp_path, sqlite_url, ta_feng_slice, monkeypatch):
    """A database with real Ta-Feng purchases, one enrolled regular, and one trained model (version A)."""
    monkeypatch.setenv("DANGOL_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    assert cli(["import-purchases", str(ta_feng_slice), "--format", "ta-feng", "--no-progress", "--train"]) == 0
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    with db.transaction() as s:
        regular = s.scalar(select(Customer).order_by(Customer.id).limit(1))
        regular.display_name, regular.source, regular.status = "Mina", "edge", "active"
        regular.consent_by, regular.consent_at, regular.consent_text_version = "staff:jo", utc(2026, 1, 2), "2026-01"
    yield db
    db.dispose()


def test_exception_before_commit_keeps_the_previous_model_and_menus(trained, tmp_path, sqlite_url, monkeypatch):
    before = _state(trained)
    assert before[0] is not None and len(before[1]) > 100

    def broken_insert(*args, **kwargs):  # fails after the old menus were deleted inside the transaction
        raise RuntimeError("disk went away half-way through writing menus")

    monkeypatch.setattr(training, "insert", broken_insert)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, _env_file=None)
    with pytest.raises(RuntimeError, match="half-way"):
        training.train_from_database(trained, settings)
    assert _state(trained) == before


def test_kill_9_during_train_keeps_the_last_good_model_serving(trained, tmp_path, sqlite_url, mosquitto, data_dir,
                                                               capsys):
    more = tmp_path / "more.csv"  # 20,000 more real rows: the next training run takes several seconds
    with (data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv").open() as fin, more.open("w") as fout:
        fout.write(next(fin))
        fout.writelines(line for n, line in enumerate(fin) if 3000 <= n < 23000)
    assert cli(["import-purchases", str(more), "--format", "ta-feng", "--no-progress"]) == 0
    before = _state(trained)
    env = {**os.environ, "DANGOL_DATABASE_URL": sqlite_url, "DANGOL_CLOUD_HOME": str(tmp_path / "home")}
    env.pop("DANGOL_MQTT_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "dangol_cloud.cli", "train", "--no-publish"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)  # started, migrated, loading purchases / fitting LightFM
    assert proc.poll() is None, "train finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    assert _state(trained) == before  # the previous model is current and its menus are untouched

    store_id, _ = add_store_and_device(trained)
    os.environ["DANGOL_MQTT_URL"] = mosquitto.url
    try:
        assert cli(["publish"]) == 0
    finally:
        os.environ.pop("DANGOL_MQTT_URL")
    late = Collector(mosquitto, [proto.menus_wildcard(store_id)])
    try:
        (topic, payload, _), = late.wait_for(1)
    finally:
        late.close()
    menu = proto.parse_payload(topic, payload)
    assert menu.model_version == before[0] and menu.display_name == "Mina"
