"""Encryption at rest: the database files (SQLite file + WAL, a PostgreSQL pg_dump) hold no customer name,
loyalty ref, consent recorder, product id or amount in clear; without the key the app refuses to read them
(naming DANGOL_DATA_KEY), with it everything reads back; old plaintext databases are migrated; rotate-key."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

import dangol_protocol as proto
from dangol_cloud.cli import main as cli
from dangol_cloud.crypto import DataKeyError, Keyring, generate_key
from dangol_cloud.db import Database, migrate
from dangol_cloud.events import handle_message
from dangol_cloud.models import AuditEntry, CatalogueItem, Customer, CustomerOrigin, DeviceEvent, Purchase, external_ref_hash
from dangol_cloud.settings import ConfigError, Settings

from .conftest import DEV_KEY_BYTES, add_store_and_device, utc

NAME, REF, RECORDER, PRODUCT = "Seoyeon Privacyname", "LOYALTY-98765-XQ", "staff:jihoon-recorder", "SKU-SECRET-4242"
SECRETS = [NAME, REF, RECORDER, PRODUCT]


def _err(capsys) -> str:
    return "".join(capsys.readouterr().err.split("\n"))  # rich wraps long lines


def _out(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())


def _fill(db) -> str:
    """One customer with a loyalty ref and a purchase, pending on a device, whose enrolment event (carrying the
    name and the consent record) then makes them a consented regular."""
    store_id, device_id = add_store_and_device(db)
    cid = str(uuid.uuid4())
    with db.transaction() as s:
        item = CatalogueItem(ref="latte", name="Latte", tags=[])
        s.add_all([item, Customer(id=cid, external_ref=REF, external_ref_hash=external_ref_hash(s, REF),
                                  status="pending", source="pos")])
        s.flush()
        s.add(CustomerOrigin(customer_id=cid, store_id=store_id, device_id=device_id))
        s.add(Purchase(customer_id=cid, item_id=item.id, product_id=PRODUCT, quantity=1, amount=4.75,
                       ts=utc(2026, 1, 2, 9), source="pos", idempotency_key="k1"))
    event = proto.EnrolmentEvent(event_id=uuid.uuid4(), device_id=uuid.UUID(device_id), ts=utc(2026, 1, 2),
                                 customer_id=uuid.UUID(cid), status="active", display_name=NAME,
                                 consent=proto.Consent(recorded_by=RECORDER, recorded_at=utc(2026, 1, 2),
                                                       text_version="2026-01"))
    assert handle_message(db, proto.events_topic(device_id), proto.dump_payload(event)).value == "stored"
    return cid


def _assert_reads_back(db, cid: str) -> None:
    with db.sessions() as s:
        customer = s.get(Customer, cid)
        assert (customer.display_name, customer.external_ref, customer.consent_by) == (NAME, REF, RECORDER)
        purchase = s.scalar(select(Purchase).where(Purchase.customer_id == cid))
        assert purchase.product_id == PRODUCT and purchase.amount == 4.75
        assert s.scalar(select(Customer.id).where(Customer.external_ref_hash == external_ref_hash(s, REF))) == cid


def test_sqlite_file_copy_reveals_nothing_without_the_key(tmp_path):
    path = tmp_path / "cloud.sqlite"
    db = Database(f"sqlite:///{path}", data_key=DEV_KEY_BYTES)
    db.migrate()
    cid = _fill(db)
    db.dispose()  # as a thief would find it: the database file and whatever WAL is left next to it
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("cloud.sqlite")]
    for p in files:
        shutil.copy(p, stolen / p.name)
    raw = b"".join(p.read_bytes() for p in stolen.iterdir())
    assert b"latte" in raw.lower()  # the grep works: non-personal data is there in clear
    for secret in SECRETS:
        for encoding in ("utf-8", "utf-16-le"):
            assert secret.encode(encoding) not in raw, f"{secret!r} readable in the database file"
    assert b"4.75" not in raw

    keyless = Database(f"sqlite:///{stolen / 'cloud.sqlite'}")
    with keyless.sessions() as s, pytest.raises(DataKeyError, match="DANGOL_DATA_KEY"):
        s.get(Customer, cid)
    with pytest.raises(DataKeyError, match="DANGOL_DATA_KEY"):
        keyless.require_key()
    wrong = Database(f"sqlite:///{stolen / 'cloud.sqlite'}", data_key=b"\x01" * 32)
    with wrong.sessions() as s, pytest.raises(DataKeyError, match="encrypted with data key"):
        s.get(Customer, cid)
    with_key = Database(f"sqlite:///{stolen / 'cloud.sqlite'}", data_key=DEV_KEY_BYTES)
    _assert_reads_back(with_key, cid)
    with with_key.sessions() as s:  # the stored event keeps no personal field
        payload = s.scalar(select(DeviceEvent.payload))
        assert payload["display_name"] is None and payload["consent"]["recorded_by"] is None
    for d in (keyless, wrong, with_key):
        d.dispose()


def test_postgresql_dump_reveals_nothing_without_the_key(postgres_database):
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = postgres_database.update_query_dict({"options": f"-csearch_path={schema}"})
    db = Database(url.render_as_string(hide_password=False), data_key=DEV_KEY_BYTES)
    db.migrate()
    cid = _fill(db)
    u = make_url(postgres_database)
    dump = subprocess.run(["pg_dump", "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres",
                           "-n", schema, "--data-only", u.database], capture_output=True, check=True).stdout
    assert b"latte" in dump.lower() and cid.encode() in dump
    for secret in SECRETS:
        assert secret.encode() not in dump, f"{secret!r} readable in pg_dump"
    _assert_reads_back(db, cid)
    db.dispose()


def test_ciphertext_moved_to_another_column_fails_authentication():
    ring = Keyring(DEV_KEY_BYTES)
    token = ring.encrypt(b"Mina", "customers.display_name")
    assert ring.decrypt(token, "customers.display_name") == b"Mina"
    assert ring.encrypt(b"Mina", "customers.display_name") != token  # random nonce per value
    with pytest.raises(DataKeyError, match="failed authentication"):
        ring.decrypt(token, "customers.consent_by")


def test_sql_comparison_on_an_encrypted_column_is_refused(db):
    with db.sessions() as s, pytest.raises(TypeError, match="customers.external_ref is encrypted"):
        s.scalar(select(Customer).where(Customer.external_ref == "x"))


def test_old_plaintext_database_is_encrypted_by_the_migration_and_needs_the_key(tmp_path, db_url):
    url = db_url
    old = Database(url)
    migrate(old.engine, "0002")
    with old.engine.begin() as conn:
        conn.execute(text("INSERT INTO customers (id, display_name, external_ref, status, source, consent_by, created_at)"
                          " VALUES ('c1', :n, :r, 'active', 'pos', :b, '2026-01-01 00:00:00')"),
                     {"n": NAME, "r": REF, "b": RECORDER})
        conn.execute(text("INSERT INTO catalogue_items (id, ref, name, description, tags, available, retired, created_at,"
                          " updated_at) VALUES ('i1', 'latte', 'Latte', '', '[]', :t, :f, '2026-01-01', '2026-01-01')"),
                     {"t": True, "f": False})
        conn.execute(text("INSERT INTO purchases (customer_id, item_id, product_id, quantity, amount, ts, source,"
                          " idempotency_key) VALUES ('c1', 'i1', :p, 1, 4.75, '2026-01-02 09:00:00', 'pos', 'k1')"),
                     {"p": PRODUCT})
        conn.execute(text("INSERT INTO stores (id, name, created_at) VALUES ('s1', 'Main', '2026-01-01')"))
        conn.execute(text("INSERT INTO devices (id, store_id, name, mqtt_username, mqtt_password_hash, created_at) "
                          "VALUES ('d1', 's1', 'Door', 'device-d1', 'x', '2026-01-01')"))
        conn.execute(text("INSERT INTO device_events (event_id, device_id, kind, ts, received_at, payload) VALUES "
                          "('e1', 'd1', 'enrolment', '2026-01-02', '2026-01-02', :p)"),
                     {"p": json.dumps({"kind": "enrolment", "display_name": NAME,
                                       "consent": {"recorded_by": RECORDER, "text_version": "2026-01"}})})
    old.dispose()
    with pytest.raises(DataKeyError, match="DANGOL_DATA_KEY"):  # refused before changing anything
        Database(url).migrate()
    with create_engine(url).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        assert conn.execute(text("SELECT display_name FROM customers")).scalar() == NAME
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    _assert_reads_back(db, "c1")
    db.dispose()
    if url.startswith("sqlite"):
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("cloud.sqlite"))
        for secret in SECRETS:  # secure_delete + WAL checkpoint: no stale plaintext page is left behind
            assert secret.encode() not in raw, f"{secret!r} left in the migrated file"
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT display_name, external_ref, consent_by FROM customers")).one()
        assert all(v.startswith("dg1:") for v in row)
        amount = conn.execute(text("SELECT amount FROM purchases")).scalar()
        assert amount.startswith("dg1:")
        payload = conn.execute(text("SELECT payload FROM device_events")).scalar()
        assert NAME not in str(payload) and RECORDER not in str(payload)
    engine.dispose()


def test_rotate_key_reencrypts_everything_in_one_go(tmp_path, sqlite_url, monkeypatch, capsys):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    cid = _fill(db)
    db.dispose()
    monkeypatch.setenv("DANGOL_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["rotate-key"]) == 2 and "--new-key-file" in _err(capsys)
    same = tmp_path / "same.key"
    same.write_text(base64.b64encode(DEV_KEY_BYTES).decode())
    assert cli(["rotate-key", "--new-key-file", str(same)]) == 2 and "already" in _err(capsys)
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    assert cli(["rotate-key", "--new-key-file", str(bad)]) == 2 and str(bad) in _err(capsys)

    new_key = tmp_path / "new.key"
    new_key.write_text(generate_key() + "\n")
    assert cli(["rotate-key", "--new-key-file", str(new_key)]) == 0
    assert "re-encrypted" in _out(capsys)
    new_bytes = base64.b64decode(new_key.read_text())
    rotated = Database(sqlite_url, data_key=new_bytes)
    _assert_reads_back(rotated, cid)  # incl. the lookup hash under the new key
    with rotated.sessions() as s:
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "key-rotated"))
        assert entry is not None and NAME not in entry.detail
    rotated.dispose()
    stale = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    with stale.sessions() as s, pytest.raises(DataKeyError, match="encrypted with data key"):
        s.get(Customer, cid)
    stale.dispose()


def test_commands_refuse_to_start_without_a_key(tmp_path, sqlite_url, monkeypatch, capsys):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    _fill(db)
    db.dispose()
    monkeypatch.setenv("DANGOL_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DANGOL_DATA_KEY")
    assert cli(["retention", "--dry-run"]) == 2
    message = " ".join(_err(capsys).split())
    assert "DANGOL_DATA_KEY" in message and "holds encrypted" in message
    monkeypatch.setenv("DANGOL_DATA_KEY", "too-short")
    assert cli(["retention", "--dry-run"]) == 2 and "DANGOL_DATA_KEY" in _err(capsys)
    monkeypatch.setenv("DANGOL_DATA_KEY", generate_key())  # a valid key, but not this database's
    assert cli(["retention", "--dry-run"]) == 2
    assert "is not the key this database was encrypted with" in " ".join(_err(capsys).split())


def test_key_from_a_systemd_credential(tmp_path, monkeypatch):
    monkeypatch.delenv("DANGOL_DATA_KEY")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dangol-data-key").write_text(base64.b64encode(DEV_KEY_BYTES).decode())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert Settings(_env_file=None).resolved_data_key() == DEV_KEY_BYTES
    (creds / "dangol-data-key").write_text("abc")
    with pytest.raises(ConfigError, match="dangol-data-key"):
        Settings(_env_file=None).resolved_data_key()
