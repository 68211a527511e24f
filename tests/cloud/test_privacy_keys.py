"""Privacy review (keys and erased loyalty ids), on real Ta-Feng lines, SQLite and PostgreSQL.

1. An imported line's idempotency key was an unkeyed SHA-1 of its content — amount and product id included, the
   two encrypted columns — stored in clear: both were brute-forced from the key without the data key (15 of 15
   real Ta-Feng pairs). The key is now an HMAC under a key derived from the data key; migration 0011 re-keys the
   stored purchases and ``rotate-key`` recomputes them, and a re-import still adds nothing after either.
2. Nothing remembered that a loyalty id was erased: re-importing an unchanged cumulative export recreated the
   erased customer with their whole history (17 lines of real customer 00539166). Imports now skip an erased
   loyalty id as a row error and the POS API refuses it (422); once the owner allows it again on the Privacy page
   only its sales from then on come in; ``rotate-key`` recomputes its keyed hash too.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from dangol_cloud.db import Database, migrate
from dangol_cloud.erasure import erase_customer
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import AuditEntry, CatalogueItem, Customer, Purchase, Store, User, external_ref_hash
from dangol_cloud.rotation import rotate_key
from dangol_cloud.security import hash_password, hash_token

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, STORE_TOKEN, add_owner

NEW_KEY = base64.b64decode("bmV3LWRhbmdvbC10ZXN0LWtleS0zMi1ieXRlcyEhISE=")
ERASED_REF = "00539166"  # a real Ta-Feng household with 17 lines among the file's first 300
SHA1_KEY = re.compile(r"^[A-Za-z0-9_.-]+:[0-9a-f]{40}$")


# --- helpers -----------------------------------------------------------------------------------------
def _slice(data_dir: Path, dst: Path, first: int, last: int, *, repeat: int | None = None) -> Path:
    """Header + the real Ta-Feng data rows ``first``..``last`` (1-based, inclusive); ``repeat``: that row once more
    at the end (a till listing the same sale line twice)."""
    src = data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv"
    with src.open() as fin:
        lines = [line for _n, line in zip(range(last + 1), fin)]
    body = lines[first:last + 1] + ([lines[repeat]] if repeat else [])
    dst.write_text(lines[0] + "".join(body))
    return dst


def _import(db: Database, path: Path, store_id: str | None = None):
    with db.transaction() as s:
        return import_rows(s, parse_purchases(path, "ta-feng"), source="ta-feng", key_prefix="ta-feng",
                           tz="Asia/Taipei", store_id=store_id)


def _keys(db: Database) -> dict[int, str]:
    with db.engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, idempotency_key FROM purchases")).all())


def _count(db: Database) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(Purchase))


def _utc(value) -> datetime:
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _add_store(db: Database, name: str = "Taipei", token: str | None = None) -> str:
    with db.transaction() as s:
        store = Store(name=name, ref=name.lower(), api_token_hash=hash_token(token) if token else None)
        s.add(store)
        s.flush()
        return store.id


def _files(data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A store's file (rows 1-60) and a history file (rows 1-300 with row 5 listed twice): the history's second
    copy of row 5 is stored with occurrence 1 while its first copy is the store's."""
    return (_slice(data_dir, tmp_path / "store.csv", 1, 60),
            _slice(data_dir, tmp_path / "history.csv", 1, 300, repeat=5))


def _load_store_and_history(db: Database, data_dir: Path, tmp_path: Path) -> tuple[str, Path, Path]:
    store_id = _add_store(db)
    store_file, history = _files(data_dir, tmp_path)
    assert _import(db, store_file, store_id).inserted == 60
    loaded = _import(db, history)
    assert (loaded.inserted, loaded.duplicates) == (241, 60)   # 240 new rows + the second copy of row 5
    return store_id, store_file, history


def _assert_reimports_add_nothing(db: Database, store_id: str, store_file: Path, history: Path) -> None:
    total = _count(db)
    assert _import(db, history).inserted == 0
    assert _import(db, store_file, store_id).inserted == 0
    filed = _import(db, history, store_id)           # the history into its store: filed, not doubled
    assert (filed.inserted, filed.filed) == (0, 241)
    assert _count(db) == total


# --- 1. the idempotency key ------------------------------------------------------------------------------
def test_the_key_of_a_real_ta_feng_line_reveals_neither_amount_nor_barcode(db, data_dir, tmp_path):
    """The reviewer's attack with the right guess: the line's true barcode and every amount 0..3000, hashed as the
    key was (unkeyed SHA-1, and SHA-256 for good measure): none matches a stored key. The key is reproducible
    only with the data key."""
    path = _slice(data_dir, tmp_path / "tf.csv", 1, 500)
    assert _import(db, path).inserted == 500
    rows = list(parse_purchases(path, "ta-feng"))[:15]
    with db.engine.connect() as conn:
        stored = conn.execute(text("SELECT idempotency_key, store_id, customer_id, item_id, ts, quantity "
                                   "FROM purchases ORDER BY id LIMIT 15")).all()
    recovered = 0
    for row, (key, store, customer, item, ts, quantity) in zip(rows, stored, strict=True):
        digest = key.split(":", 1)[1]
        when = _utc(ts).strftime("%Y-%m-%dT%H:%M:%S.%f")
        for amount in range(0, 3001):
            content = json.dumps([store, customer, item, row.product_id, when, float(quantity), float(amount), 0],
                                 separators=(",", ":")).encode()
            if digest in (hashlib.sha1(content).hexdigest(), hashlib.sha256(content).hexdigest()):
                recovered += 1
                break
    assert recovered == 0, f"{recovered} of 15 (amount, PRODUCT_ID) pairs recovered without the data key"
    from dangol_cloud.ingest import purchase_key

    with db.sessions() as s:  # with the key the same content gives the same key (what dedup needs)
        first = s.scalar(select(Purchase).order_by(Purchase.id).limit(1))
        assert first.idempotency_key == purchase_key(
            db.keyring, "ta-feng", store_id=first.store_id, customer_id=first.customer_id, item_id=first.item_id,
            product_id=first.product_id, ts=first.ts, quantity=first.quantity, amount=first.amount)
    assert purchase_key(Database("sqlite://", data_key=NEW_KEY).keyring, "ta-feng", store_id=first.store_id,
                        customer_id=first.customer_id, item_id=first.item_id, product_id=first.product_id,
                        ts=first.ts, quantity=first.quantity, amount=first.amount) != first.idempotency_key


def test_rekeying_keeps_each_lines_occurrence_and_numbers_changed_lines_after_the_others():
    """:func:`~dangol_cloud.purchase_keys.rekeyed` (migration 0011, rotate-key): a history line stored as occurrence
    1 (its occurrence 0 is the store's copy) stays 1; a line whose content changed since (its store deleted: store
    now empty, key made with the store) takes the lowest free occurrence of its content; POS keys are left alone."""
    from dangol_cloud.crypto import Keyring
    from dangol_cloud.purchase_keys import IMPORT_KEY, keyed, rekeyed

    old, new = keyed(Keyring(DEV_KEY_BYTES)), keyed(Keyring(NEW_KEY))
    store = ("s1", "c1", "i1", "4712936888817", "2000-11-01T00:00:00.000000", 1.0, 68.0)
    history = (None, *store[1:])
    rows = [(1, old("ta-feng", store, 0), store), (2, old("ta-feng", history, 1), history),
            (3, old("ta-feng", ("deleted-store", *store[1:]), 0), history), (4, "pos:s1:ab12:0", store)]
    assert rekeyed(rows, IMPORT_KEY, old, new) == {1: new("ta-feng", store, 0), 2: new("ta-feng", history, 1),
                                                   3: new("ta-feng", history, 0)}


def _frozen_0008_key(*args, **kwargs) -> str:
    """The key imports stored from revision 0008 until this fix (unkeyed SHA-1), whatever the caller's signature."""
    module = importlib.import_module("dangol_cloud.migrations.versions.0008_content_purchase_keys")
    kwargs.pop("ring", None)
    return module.purchase_key(args[-1], **kwargs)


def test_migration_0011_rekeys_stored_purchases_and_a_reimport_adds_nothing(db_url, data_dir, tmp_path,
                                                                              monkeypatch):
    database = Database(db_url, data_key=DEV_KEY_BYTES)
    try:
        migrate(database.engine, "0010")
        with monkeypatch.context() as m:  # imported as before this fix: unkeyed SHA-1 keys
            m.setattr("dangol_cloud.ingest.purchase_key", _frozen_0008_key)
            store_id, store_file, history = _load_store_and_history(database, data_dir, tmp_path)
        old = _keys(database)
        assert all(SHA1_KEY.match(k) for k in old.values())
        database.migrate()
        new = _keys(database)
        assert new.keys() == old.keys() and not [k for k in new.values() if SHA1_KEY.match(k)]
        assert not set(new.values()) & set(old.values())
        _assert_reimports_add_nothing(database, store_id, store_file, history)
        settled = _keys(database)
        database.migrate()  # a second upgrade changes nothing
        assert _keys(database) == settled
    finally:
        database.dispose()


def test_migration_0011_needs_the_data_key_when_purchases_exist(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    database = Database(url, data_key=DEV_KEY_BYTES)
    migrate(database.engine, "0010")
    _import(database, _slice(data_dir, tmp_path / "tf.csv", 1, 20))
    database.dispose()
    keyless = Database(url)
    from dangol_cloud.crypto import DataKeyError

    with pytest.raises(DataKeyError, match="DANGOL_DATA_KEY"):
        keyless.migrate()
    keyless.dispose()


def test_rotate_key_recomputes_purchase_keys_and_a_reimport_adds_nothing(db, db_url, data_dir, tmp_path):
    store_id, store_file, history = _load_store_and_history(db, data_dir, tmp_path)
    before = _keys(db)
    rotate_key(db, NEW_KEY)
    db.dispose()
    rotated = Database(db_url, data_key=NEW_KEY)
    try:
        after = _keys(rotated)
        assert after.keys() == before.keys() and not set(after.values()) & set(before.values())
        _assert_reimports_add_nothing(rotated, store_id, store_file, history)
        with rotated.sessions() as s:
            entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "key-rotated"))
        assert "purchases.idempotency_key: 301" in entry.detail
    finally:
        rotated.dispose()


# --- 2. erased loyalty ids ---------------------------------------------------------------------------------
def _erase_ref(db: Database, ref: str, reason: str = "request") -> tuple[str, int]:
    with db.transaction() as s:
        cid = s.scalar(select(Customer.id).where(Customer.external_ref_hash == external_ref_hash(s, ref)))
        lines = s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == cid))
        erase_customer(s, cid, actor=OWNER_EMAIL, reason=reason)
    return cid, lines


def _customer_of(db: Database, ref: str) -> Customer | None:
    with db.sessions() as s:
        return s.scalar(select(Customer).where(Customer.external_ref_hash == external_ref_hash(s, ref)))


def test_reimporting_an_erased_loyalty_customer_brings_nothing_back(db, db_url, data_dir, tmp_path):
    path = _slice(data_dir, tmp_path / "tf.csv", 1, 300)
    assert _import(db, path).inserted == 300
    total = _count(db)
    cid, lines = _erase_ref(db, ERASED_REF)
    assert lines == 17
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    again = _import(db, path)                     # next month's cumulative export, unchanged
    assert (again.inserted, again.customers_created, len(again.errors)) == (0, 0, 17)
    assert {e.message for e in again.errors} == {f"customer {ERASED_REF!r} erased on {today}; not imported"}
    assert _customer_of(db, ERASED_REF) is None and _count(db) == total - 17
    by_id = tmp_path / "by-id.csv"                # the erased customer's Dangol id named as the customer
    by_id.write_text(f"customer,item,quantity,timestamp,amount\n{cid},flat-white,1,2026-01-05T08:31:00+01:00,3.6\n")
    with db.transaction() as s:
        report = import_rows(s, parse_purchases(by_id, "csv"), source="csv", key_prefix="csv")
    assert (report.inserted, report.customers_created) == (0, 0)
    assert [e.message for e in report.errors] == [f"customer {cid!r} erased on {today}; not imported"]
    rotate_key(db, NEW_KEY)                       # the suppression's keyed hash follows the key
    db.dispose()
    rotated = Database(db_url, data_key=NEW_KEY)
    try:
        after = _import(rotated, path)
        assert (after.inserted, after.customers_created, len(after.errors)) == (0, 0, 17)
        assert _customer_of(rotated, ERASED_REF) is None
    finally:
        rotated.dispose()


def test_an_erased_loyalty_id_is_kept_only_as_ciphertext_and_keyed_hash(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    database = Database(url, data_key=DEV_KEY_BYTES)
    database.migrate()
    _import(database, _slice(data_dir, tmp_path / "tf.csv", 1, 300))
    _erase_ref(database, ERASED_REF)
    database.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("c.sqlite*"))
    assert ERASED_REF.encode() not in raw


def _web(tmp_path: Path, url: str):
    from dangol_cloud.app import create_app
    from dangol_cloud.settings import Settings

    database = Database(url, data_key=DEV_KEY_BYTES)
    database.migrate()
    add_owner(database)
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="k", _env_file=None)
    return create_app(settings, db=database, TESTING=True), database


def _signed_in(app, email: str = OWNER_EMAIL, password: str | None = None):
    from tests.cloud.test_cloud_web import csrf_of, sign_in

    client = app.test_client()
    if password is None:
        assert sign_in(client).status_code == 302
    else:
        token = csrf_of(client.get("/login").get_data(as_text=True))
        assert client.post("/login", data={"email": email, "password": password,
                                           "csrf_token": token}).status_code == 302
    return client, re.search(r'name="csrf_token"[^>]*value="([^"]+)"', client.get("/").get_data(as_text=True))[1]


def test_the_owner_lifts_a_suppression_on_the_privacy_page(tmp_path, data_dir):
    app, database = _web(tmp_path, f"sqlite:///{tmp_path / 'c.sqlite'}")
    try:
        path = _slice(data_dir, tmp_path / "tf.csv", 1, 300)
        _import(database, path)
        cid, _ = _erase_ref(database, ERASED_REF)
        with database.transaction() as s:
            s.add(User(email="staff@cafe.example", password_hash=hash_password("staff password 1"), role="staff"))
        staff, token = _signed_in(app, "staff@cafe.example", "staff password 1")
        assert staff.post("/privacy/erased-refs/lift", data={"ref": ERASED_REF, "csrf_token": token}).status_code \
            == 403
        owner, token = _signed_in(app)
        page = owner.get("/privacy/").get_data(as_text=True)
        assert "1 erased loyalty number" in page and ERASED_REF not in page
        unknown = owner.post("/privacy/erased-refs/lift", data={"ref": "99999999", "csrf_token": token},
                             follow_redirects=True).get_data(as_text=True)
        assert "No erased customer has that loyalty number" in unknown and _import(database, path).inserted == 0
        lifted = owner.post("/privacy/erased-refs/lift", data={"ref": f" {ERASED_REF} ", "csrf_token": token},
                            follow_redirects=True).get_data(as_text=True)
        assert "may be imported again: its sales from now on are recorded" in lifted and "stay out" in lifted
        assert "1 erased loyalty number kept out" in lifted and "1 of them allowed again" in lifted
        assert ERASED_REF not in lifted
        with database.sessions() as s:
            entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "erasure-lifted"))
        assert entry.actor == OWNER_EMAIL and entry.customer_id == cid and ERASED_REF not in entry.detail
        # the customer re-joined: their sales from now on come in; the erased history stays out, as the page says
        # (until revision 0012 the unchanged export brought all 17 erased lines back: the test asserted that)
        back = _import(database, path)
        assert (back.inserted, back.customers_created, len(back.errors)) == (0, 0, 17)
        again = owner.post("/privacy/erased-refs/lift", data={"ref": ERASED_REF, "csrf_token": token},
                           follow_redirects=True).get_data(as_text=True)
        assert "was allowed again on" in again and "nothing changed" in again
    finally:
        database.dispose()


def _post_sale(client, customer: str, ts: datetime, key: str):
    return client.post("/api/v1/purchases", headers={"Authorization": f"Bearer {STORE_TOKEN}", "Idempotency-Key": key},
                       json={"customer": customer, "ts": ts.isoformat(), "lines": [{"item": "flat-white",
                                                                                    "amount": 3.6}]})


def test_the_pos_api_refuses_a_sale_of_an_erased_customer(tmp_path, db_url):
    app, database = _web(tmp_path, db_url)
    try:
        _add_store(database, "Main", STORE_TOKEN)
        with database.transaction() as s:
            s.add(CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[]))
        client = app.test_client()
        now = datetime.now(timezone.utc)
        first = _post_sale(client, "loyalty-1042", now - timedelta(days=3), "r-1")
        assert first.status_code == 201
        cid, _ = _erase_ref(database, "loyalty-1042")
        for customer, key in (("loyalty-1042", "r-2"), (cid, "r-3")):
            refused = _post_sale(client, customer, now, key)
            assert refused.status_code == 422, refused.get_data(as_text=True)
            assert refused.json["title"] == "Customer erased"
            assert f"customer {customer!r} was erased on {now:%Y-%m-%d}" in refused.json["detail"]
        assert _count(database) == 0 and _customer_of(database, "loyalty-1042") is None
        with database.transaction() as s:
            assert s.scalar(select(func.count()).select_from(Customer)) == 0
        # a retention erasure (not the customer's request): only the sales from before it stay out
        assert _post_sale(client, "loyalty-7", now - timedelta(days=400), "r-4").status_code == 201
        _erase_ref(database, "loyalty-7", reason="retention")
        old = _post_sale(client, "loyalty-7", now - timedelta(days=399), "r-5")
        assert old.status_code == 422 and "retention" in old.json["detail"]
        later = datetime.now(timezone.utc)                                      # back after a year: a new regular
        assert _post_sale(client, "loyalty-7", later, "r-6").status_code == 201
        assert _post_sale(client, "loyalty-7", now - timedelta(days=398), "r-7").status_code == 422
        from dangol_cloud.erased_refs import lift_erased_ref

        with database.transaction() as s:
            assert lift_erased_ref(s, "loyalty-1042", actor="cli") is not None
        assert _post_sale(client, "loyalty-1042", now, "r-8").status_code == 422       # from before: stays out
        assert _post_sale(client, "loyalty-1042", datetime.now(timezone.utc), "r-9").status_code == 201
    finally:
        database.dispose()
