"""POS API on SQLite and PostgreSQL: bearer token per store, Idempotency-Key, OpenAPI document."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.models import CatalogueItem, Purchase

from .conftest import STORE_TOKEN, add_store_and_device
from .test_cloud_data import counts


@pytest.fixture
def api(db, settings):
    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        s.add_all([CatalogueItem(ref="flat-white", name="Flat white", price=3.6, tags=[]),
                   CatalogueItem(ref="croissant", name="Croissant", price=2.5, tags=[])])
    app = create_app(settings, db=db, TESTING=True)
    return app.test_client(), store_id


SALE = {"customer": "loyalty-1042", "ts": "2026-01-05T08:31:00+01:00",
        "lines": [{"item": "flat-white", "quantity": 2, "amount": 7.2}, {"item": "croissant", "product_id": "B-17"}]}


def post(client, body, *, key="sale-1", token=STORE_TOKEN):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/api/v1/purchases", data=json.dumps(body) if not isinstance(body, str) else body,
                       headers=headers)


def test_sale_is_stored_and_a_retry_never_doubles_it(api, db):
    client, store_id = api
    first = post(client, SALE)
    assert first.status_code == 201, first.json
    assert first.json["lines"] == 2
    retry = post(client, SALE)
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json == first.json
    with db.sessions() as s:
        rows = s.scalars(select(Purchase).order_by(Purchase.id)).all()
    assert len(rows) == 2
    assert {r.store_id for r in rows} == {store_id} and rows[0].quantity == 2 and rows[1].product_id == "B-17"
    assert rows[0].ts.isoformat() == "2026-01-05T07:31:00+00:00"
    assert post(client, SALE, key="sale-2").status_code == 201  # a new key is a new sale
    assert counts(db)["purchases"] == 4


def test_same_key_with_a_different_body_is_refused(api, db):
    client, _ = api
    assert post(client, SALE).status_code == 201
    before = counts(db)
    changed = {**SALE, "lines": [{"item": "croissant", "quantity": 5}]}
    response = post(client, changed)
    assert response.status_code == 422 and "different request body" in response.json["detail"]
    assert counts(db) == before


@pytest.mark.parametrize("token,status", [(None, 401), ("wrong-token", 401), ("", 401)])
def test_unknown_store_token_is_refused_and_stores_nothing(api, db, token, status):
    client, _ = api
    before = counts(db)
    response = post(client, SALE, token=token)
    assert response.status_code == status and response.mimetype == "application/problem+json"
    assert counts(db) == before


@pytest.mark.parametrize("body,key,status,where", [
    (SALE, None, 400, "Idempotency-Key"),
    ({**SALE, "ts": "2026-01-05T08:31:00"}, "k", 422, "ts"),                  # no UTC offset
    ({**SALE, "lines": []}, "k", 422, "lines"),
    ({**SALE, "lines": [{"item": "flat-white", "quantity": -1}]}, "k", 422, "lines.0.quantity"),
    ({**SALE, "surprise": 1}, "k", 422, "surprise"),
    ("{not json", "k", 422, ""),
    ({**SALE, "lines": [{"item": "flat-white"}, {"item": "unicorn-latte"}]}, "k", 422, "unicorn-latte"),
])
def test_invalid_sales_are_refused_and_store_nothing(api, db, body, key, status, where):
    client, _ = api
    before = counts(db)
    response = post(client, body, key=key)
    assert response.status_code == status
    assert where in json.dumps(response.json)
    assert counts(db) == before


def test_openapi_document_describes_the_endpoint(api):
    from openapi_spec_validator import validate

    client, _ = api
    doc = client.get("/api/v1/openapi.json").json
    validate(doc)  # a valid OpenAPI 3 document (raises otherwise)
    assert doc["openapi"].startswith("3.")
    op = doc["paths"]["/api/v1/purchases"]["post"]
    assert {p["$ref"].rsplit("/", 1)[-1] for p in op["parameters"]} == {"IdempotencyKey"}
    assert {"201", "200", "401", "422"} <= set(op["responses"])
    schema = doc["components"]["schemas"]["Purchase"]
    assert set(schema["required"]) == {"customer", "ts", "lines"}


def test_concurrent_retries_store_the_sale_once(api, db):
    """Eight simultaneous deliveries of the same sale (a POS retrying on timeouts): one sale stored."""
    from concurrent.futures import ThreadPoolExecutor

    client, _ = api
    app = client.application

    def deliver(_):
        response = post(app.test_client(), SALE, key="burst-1")
        return response.status_code, response.json

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(deliver, range(8)))
    codes = sorted(code for code, _ in results)
    assert codes.count(201) == 1 and set(codes) <= {200, 201}
    assert len({json.dumps(body, sort_keys=True) for _, body in results}) == 1
    assert counts(db)["purchases"] == 2


@pytest.mark.parametrize("field", ["customer", "item", "product_id"])
def test_nul_characters_are_refused_not_a_server_error(api, db, field):
    """PostgreSQL text cannot hold NUL: such a body is a 422 naming the field on both backends."""
    client, _ = api
    body = json.loads(json.dumps(SALE))
    if field == "customer":
        body["customer"] = "loyal\u0000ty"
    else:
        body["lines"][0][field] = "flat\u0000white"
    response = post(client, body, key=f"nul-{field}")
    assert response.status_code == 422 and field in response.get_data(as_text=True)
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 0


def test_a_token_only_ever_records_sales_for_its_own_store(api, db):
    """The POS token is scoped to one store: the sale lands in the token's store, and a body that tries to
    name another store is refused (the schema has no store field)."""
    client, store_id = api
    other = {**SALE, "store": "some-other-store"}
    response = post(client, other, key="other-store")
    assert response.status_code == 422 and "store" in response.get_data(as_text=True)
    assert post(client, SALE, key="own-store").status_code == 201
    with db.sessions() as s:
        assert {p.store_id for p in s.scalars(select(Purchase))} == {store_id}
