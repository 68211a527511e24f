"""Fixtures of the cloud tests: a fresh database per test on SQLite AND PostgreSQL, a real Mosquitto,
the Flask app, real purchase-data slices.

PostgreSQL: ``DANGOL_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
must be reachable; a new database is created for the test run and one schema per test. If it is not
reachable the PostgreSQL-parametrised tests FAIL with a message saying so (they are never skipped).
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from dangol_cloud.db import Database
from dangol_cloud.models import Device, Store, User
from dangol_cloud.security import hash_password, hash_token, mosquitto_hash
from dangol_cloud.settings import Settings
from tests.broker import MosquittoBroker

REPO = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("DANGOL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
OWNER_EMAIL, OWNER_PASSWORD = "owner@cafe.example", "correct horse 42"
#: The tests' data key (base64 of 32 bytes); never a production key. Set as DANGOL_DATA_KEY for every test.
DEV_DATA_KEY = "ZGFuZ29sLXRlc3QtZGF0YS1rZXktMzItYnl0ZXMhISE="
DEV_KEY_BYTES = base64.b64decode(DEV_DATA_KEY)
STORE_TOKEN = "test-store-token-0123456789"


@pytest.fixture(autouse=True, scope="session")
def _data_key():
    """Every cloud test runs with the test data key in DANGOL_DATA_KEY (CLI calls and subprocesses see it;
    session scope so module-scoped fixtures do too)."""
    old = {k: os.environ.get(k) for k in ("DANGOL_DATA_KEY", "CREDENTIALS_DIRECTORY")}
    os.environ["DANGOL_DATA_KEY"] = DEV_DATA_KEY
    os.environ.pop("CREDENTIALS_DIRECTORY", None)
    yield
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# --- databases ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_database():
    """A fresh PostgreSQL database for this test run (dropped at the end); yields its URL."""
    admin_url = make_url(POSTGRES_URL)
    name = f"dangol_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    problem = None
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - turned into a clear failure below
        problem = f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        engine.dispose()
    if problem:
        pytest.fail(f"PostgreSQL is not reachable at DANGOL_TEST_POSTGRES_URL={POSTGRES_URL} ({problem}). Start "
                    "PostgreSQL or point DANGOL_TEST_POSTGRES_URL at one; the cloud data layer is tested on both "
                    "SQLite and PostgreSQL.", pytrace=False)
    yield admin_url.set(database=name)
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def _postgres_schema_url(request) -> str:
    base = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database URL: a SQLite file, or a new schema in the run's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    return _postgres_schema_url(request)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite database URL (for the slower browser tests)."""
    return f"sqlite:///{tmp_path / 'cloud.sqlite'}"


def _database(url: str):
    database = Database(url, data_key=DEV_KEY_BYTES)
    database.migrate()
    return database


@pytest.fixture
def db(db_url):
    """A migrated :class:`Database` (both backends)."""
    database = _database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    return Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="test-secret", _env_file=None)


# --- objects -----------------------------------------------------------------------------------------
def add_store_and_device(database: Database, *, device_password: str = "device-pw") -> tuple[str, str]:
    """Create a store (POS token :data:`STORE_TOKEN`) with one device; returns (store id, device id)."""
    with database.transaction() as s:
        store = Store(name="Main Street", ref="main", api_token_hash=hash_token(STORE_TOKEN))
        s.add(store)
        s.flush()
        device = Device(store_id=store.id, name="Front door", mqtt_username=f"device-{uuid.uuid4()}",
                        mqtt_password_hash=mosquitto_hash(device_password))
        s.add(device)
        s.flush()
        return store.id, device.id


def add_owner(database: Database) -> None:
    with database.transaction() as s:
        s.add(User(email=OWNER_EMAIL, password_hash=hash_password(OWNER_PASSWORD), role="owner"))


@pytest.fixture
def store_device(db):
    return add_store_and_device(db)


# --- broker ------------------------------------------------------------------------------------------
@pytest.fixture
def mosquitto(tmp_path):
    """A real Mosquitto on a free port (anonymous access), stopped after the test."""
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        yield broker


# --- real data ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data folder: $DANGOL_DATA or <repo>/../shared/data. Fails clearly if missing."""
    path = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    if not (path / "purchases").is_dir():
        pytest.fail(f"real data not found at {path} (set DANGOL_DATA to the folder holding purchases/)", pytrace=False)
    return path


@pytest.fixture
def ta_feng_slice(data_dir, tmp_path) -> Path:
    """The header and first 3,000 rows of the real Ta-Feng file."""
    src = data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv"
    dst = tmp_path / "ta_feng_slice.csv"
    with src.open() as fin, dst.open("w") as fout:
        for n, line in enumerate(fin):
            if n > 3000:
                break
            fout.write(line)
    return dst


def write_ta_feng_customers(data_dir: Path, dst: Path) -> Path:
    """Write every purchase of the real Ta-Feng customers whose id ends in '00' (~1 % of customers, whole
    histories) to ``dst``, with the header; returns ``dst``."""
    src = data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv"
    with src.open() as fin, dst.open("w") as fout:
        fout.write(next(fin))
        fout.writelines(line for line in fin if line.split(",", 2)[1].endswith("00"))
    return dst


@pytest.fixture
def ta_feng_customers(data_dir, tmp_path) -> Path:
    """:func:`write_ta_feng_customers` into the test's folder."""
    return write_ta_feng_customers(data_dir, tmp_path / "ta_feng_00.csv")


def owner_database(tmp_path: Path) -> tuple[MosquittoBroker, str, Database, str]:
    """A started Mosquitto, and a migrated SQLite cloud database in ``tmp_path`` with the owner, a store and its
    device: ``(broker, database URL, database, store id)``. The caller stops the broker and disposes the db."""
    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    store_id, _device = add_store_and_device(db)
    return broker, url, db, store_id


def screenshot_page(browser, tmp_path: Path, name: str, timeout_ms: int):
    """``(folder, page)``: a 1280×900 Playwright page with ``timeout_ms`` as its default timeout, and the
    screenshot folder ``$DANGOL_SCREENSHOTS/<name>`` (or ``tmp_path/<name>``), created."""
    folder = Path(os.environ.get("DANGOL_SCREENSHOTS") or tmp_path) / name
    folder.mkdir(parents=True, exist_ok=True)
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(timeout_ms)
    return folder, page


def sign_in_owner(page, base: str) -> None:
    """Sign the owner in through the dashboard's login form in a Playwright page; waits for the home page."""
    page.goto(base + "/login")
    page.fill("input[name=email]", OWNER_EMAIL)
    page.fill("input[name=password]", OWNER_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@contextlib.contextmanager
def serving(app):
    """Serve the Flask ``app`` on a free local port in a thread for a real browser; yields the base URL
    (``http://127.0.0.1:<port>``) and stops the server on exit."""
    from werkzeug.serving import make_server

    from tests.broker import free_port

    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@contextlib.contextmanager
def sqlite_write_lock_held(db: Database):
    """While inside, another connection holds the SQLite file's write lock (``BEGIN IMMEDIATE``), as an import from
    the command line or a zone change in another process does; ``db``'s new connections wait 0.3 s for it
    (``busy_timeout``) instead of 30, so a write inside fails fast with "database is locked"."""
    import sqlite3

    from sqlalchemy import event

    db.engine.dispose()
    event.listen(db.engine, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout = 300"))
    writer = sqlite3.connect(make_url(str(db.engine.url)).database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        writer.execute("ROLLBACK")
        writer.close()
