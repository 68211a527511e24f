"""``dangol-cloud`` end to end on real data slices: import, train, evaluate, exit statuses."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from dangol_cloud.cli import main as cli
from dangol_cloud.db import Database
from dangol_cloud.models import Menu, ModelVersion, Purchase, User
from dangol_cloud.security import check_password

from .conftest import DEV_KEY_BYTES, add_store_and_device


@pytest.fixture
def env(monkeypatch, tmp_path, db_url):
    """DANGOL_* environment pointing at a fresh database (both backends) and a temp home."""
    for var in ("DANGOL_MQTT_URL", "DANGOL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    return db_url


def purchases(url: str) -> int:
    db = Database(url, data_key=DEV_KEY_BYTES)
    try:
        with db.sessions() as s:
            return s.scalar(select(func.count()).select_from(Purchase))
    finally:
        db.dispose()


def test_import_is_idempotent_and_reports(env, ta_feng_slice, capsys):
    assert cli(["import-purchases", str(ta_feng_slice), "--format", "ta-feng", "--no-progress"]) == 0
    assert "3000 purchases imported" in capsys.readouterr().out
    assert cli(["import-purchases", str(ta_feng_slice), "--format", "ta-feng", "--no-progress"]) == 0
    assert "0 purchases imported, 3000 already present" in capsys.readouterr().out
    assert purchases(env) == 3000


def test_bad_rows_are_listed_with_line_numbers(env, tmp_path, capsys):
    path = tmp_path / "till.csv"
    path.write_text("customer,item,quantity,timestamp\na,Latte,1,2026-01-05T08:00:00\nb,Latte,x,2026-01-05T08:01:00\n")
    report = tmp_path / "errors.csv"
    assert cli(["import-purchases", str(path), "--format", "csv", "--no-progress", "--errors", str(report)]) == 0
    captured = capsys.readouterr()
    assert f"{path}:3:" in captured.err and "1 bad rows skipped" in captured.out
    assert report.read_text().splitlines()[1].startswith("3,") and "b,Latte,x" in report.read_text()
    assert purchases(env) == 1


@pytest.mark.parametrize("argv,needle", [
    (["import-purchases", "/nonexistent/p.csv", "--format", "csv"], "/nonexistent/p.csv"),
    (["import-purchases", "{csv}", "--format", "ta-feng"], "wrong.csv"),
    (["publish"], "DANGOL_MQTT_URL"),
    (["evaluate"], "no purchases"),
    (["evaluate", "--top-items", "0"], "--top-items"),
])
def test_input_errors_exit_2_naming_the_input(env, tmp_path, capsys, argv, needle):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("customer,item,quantity,timestamp\n")
    argv = [a.replace("{csv}", str(wrong)) for a in argv]
    assert cli(argv) == 2
    assert needle in capsys.readouterr().err.replace("\n", "")
    assert purchases(env) == 0


def test_usage_and_config_errors_exit_2(env, monkeypatch, tmp_path, capsys):
    assert cli(["import-purchases", "x.csv", "--format", "excel"]) == 2
    assert cli(["--config", str(tmp_path / "missing.toml"), "train"]) == 2
    assert "missing.toml" in capsys.readouterr().err
    bad = tmp_path / "cloud.toml"
    bad.write_text('menu_size = "lots"\n')
    assert cli(["--config", str(bad), "train"]) == 2
    assert "menu_size" in capsys.readouterr().err
    monkeypatch.setenv("DANGOL_MQTT_URL", "http://broker")
    assert cli(["publish"]) == 2
    assert "DANGOL_MQTT_URL" in capsys.readouterr().err


def test_unreachable_broker_exits_1(env, monkeypatch, capsys):
    from tests.broker import free_port

    monkeypatch.setenv("DANGOL_MQTT_URL", f"mqtt://127.0.0.1:{free_port()}")
    assert cli(["publish"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_create_user_hashes_the_password(env, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("a long passphrase\n"))
    assert cli(["create-user", "Owner@Cafe.example", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli(["create-user", "staff@cafe.example", "--role", "staff", "--password-stdin"]) == 2
    db = Database(env, data_key=DEV_KEY_BYTES)
    with db.sessions() as s:
        (user,) = s.scalars(select(User)).all()
    db.dispose()
    assert user.email == "owner@cafe.example" and user.role == "owner"
    assert user.password_hash.startswith("scrypt:") and check_password(user.password_hash, "a long passphrase")


def test_broker_config_writes_password_file_and_acl(env, monkeypatch, tmp_path):
    db = Database(env, data_key=DEV_KEY_BYTES)
    db.migrate()
    store_id, device_id = add_store_and_device(db)
    db.dispose()
    monkeypatch.setenv("DANGOL_MQTT_URL", "mqtt://cloud:s3cret@localhost:1883")
    assert cli(["broker-config", "--out", str(tmp_path / "mq")]) == 0
    passwd = (tmp_path / "mq" / "passwd").read_text()
    acl = (tmp_path / "mq" / "acl").read_text()
    assert passwd.startswith("cloud:$7$101$") and "device-" in passwd
    assert f"topic read dangol/v1/stores/{store_id}/menus/+" in acl
    assert f"topic write dangol/v1/devices/{device_id}/events" in acl


@pytest.mark.slow
def test_train_and_evaluate_on_real_purchases(monkeypatch, tmp_path, sqlite_url, ta_feng_customers, capsys):
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    monkeypatch.setenv("DANGOL_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["import-purchases", str(ta_feng_customers), "--format", "ta-feng", "--no-progress", "--train"]) == 0
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    with db.sessions() as s:
        model = s.scalar(select(ModelVersion))
        menus = s.scalars(select(Menu)).all()
        n_customers = s.scalar(select(func.count(func.distinct(Purchase.customer_id))))
    db.dispose()
    assert model is not None and (tmp_path / "home" / "models").is_dir()
    assert len(menus) == n_customers and all(1 <= len(m.picks) <= 10 for m in menus)
    assert all(p["reasons"] for m in menus for p in m.picks[:1])   # picks say why
    capsys.readouterr()
    assert cli(["evaluate", "--cut", "2001-02-01", "--top-items", "100"]) == 0
    table = capsys.readouterr().out
    assert "precision@10" in table and "popularity" in table


@pytest.mark.slow
def test_training_runs_on_a_schedule(tmp_path, sqlite_url, ta_feng_customers, monkeypatch):
    from dangol_cloud.app import create_app
    from dangol_cloud.background import start_background
    from dangol_cloud.settings import Settings

    monkeypatch.setenv("DANGOL_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    assert cli(["import-purchases", str(ta_feng_customers), "--format", "ta-feng", "--no-progress"]) == 0
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k",
                        train_interval_hours=1 / 3600, _env_file=None)   # every second
    app = create_app(settings)
    stop = start_background(app)
    db = app.extensions["dangol_db"]
    try:
        deadline = time.monotonic() + 60
        versions = 0
        while versions < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
            with db.sessions() as s:
                versions = s.scalar(select(func.count()).select_from(ModelVersion))
    finally:
        stop()
    assert versions >= 1
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Menu)) > 0


def test_import_reports_a_nul_line_and_stores_the_rest(db_url, monkeypatch, tmp_path, capsys):
    """A NUL character (which PostgreSQL text cannot hold) makes its line a row error, on both backends."""
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_MQTT_URL", raising=False)
    path = tmp_path / "pos.csv"
    path.write_text("customer,item,quantity,timestamp\nc1,latte,1,2026-01-02T09:00:00\n"
                    "c2,lat\x00te,1,2026-01-02T09:00:00\nc\x003,latte,1,2026-01-02T09:00:00\n", encoding="utf-8")
    assert cli(["import-purchases", str(path), "--format", "csv", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"{path}:3: contains a NUL character" in captured.err and f"{path}:4:" in captured.err
    assert purchases(db_url) == 1
