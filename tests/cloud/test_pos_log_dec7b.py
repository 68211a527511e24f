"""The POS API's 'Customer changed meanwhile' 503 never writes the loyalty number of a customer being erased to the
log (security review R7, dec 7: it did, at WARNING).

Interleaving forced with an engine hook on PostgreSQL: another till creates loyalty number X (committed) just before
this sale's INSERT ... ON CONFLICT DO NOTHING, and an owner erases X right after it (before the read-back)."""
import json
import logging

import pytest
from sqlalchemy import event, select

from dangol_cloud.app import create_app
from dangol_cloud.erasure import erase_customer
from dangol_cloud.models import CatalogueItem, Customer, external_ref_hash
from dangol_cloud.settings import Settings
from tests.cloud.conftest import OWNER_EMAIL, STORE_TOKEN, add_store_and_device

REF = "LOYALTY-4711-r7"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_changed_meanwhile_keeps_the_erased_ref_out_of_the_log(db, db_url, tmp_path, caplog):
    add_store_and_device(db)
    with db.transaction() as s:
        s.add(CatalogueItem(ref="americano", name="Americano", price=4.5, tags=[]))
    app = create_app(Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="t", currency="USD",
                              _env_file=None), db=db, TESTING=True)
    state = {}

    def before(conn, cursor, statement, params, context, executemany):
        if statement.startswith("INSERT INTO customers") and "ON CONFLICT" in statement and not state:
            state["phase"] = "other till"
            with db.transaction() as s:  # another till's sale created X meanwhile (committed)
                c = Customer(external_ref=REF, external_ref_hash=external_ref_hash(s, REF), status="active",
                             source="pos")
                s.add(c)
                s.flush()
                state["id"] = c.id

    def after(conn, cursor, statement, params, context, executemany):
        if (state.get("phase") == "other till" and statement.startswith("INSERT INTO customers")
                and "ON CONFLICT" in statement):
            state["phase"] = "erased"
            with db.transaction() as s:  # the owner erases X at that moment
                erase_customer(s, state["id"], actor=OWNER_EMAIL)

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(db.engine, "after_cursor_execute", after)
    caplog.set_level(logging.INFO)
    answer = app.test_client().post("/api/v1/purchases", data=json.dumps(
        {"customer": REF, "ts": "2026-01-05T08:31:00+00:00", "lines": [{"item": "americano"}]}),
        headers={"Content-Type": "application/json", "Idempotency-Key": "k1", "Authorization": f"Bearer {STORE_TOKEN}"})
    leaked = [r.getMessage() for r in caplog.records if REF in r.getMessage()]
    assert state.get("phase") == "erased"
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0
    assert leaked == []
    with db.sessions() as s:
        assert s.scalar(select(Customer).where(Customer.external_ref_hash == external_ref_hash(s, REF))) is None
