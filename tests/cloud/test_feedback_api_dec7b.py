"""``POST /api/v1/feedback`` (the store's like/dislike) against its OpenAPI document and under load, on SQLite and
PostgreSQL with the real app factory:

1. the document describes the endpoint as the code checks it: the ``Opinion`` schema's bounds, pattern, enum,
   required fields and ``additionalProperties: false`` are :class:`dangol_cloud.web.api.OpinionIn`'s, every status
   the route answers is documented (with a problem+json body for the errors), and it needs the store token;
2. the same opinion sent twice at once (a double tap, a till retrying after a time-out while the first request is
   still running) is recorded once and both requests get 200 — before, the second one's insert hit the primary key
   of ``pick_opinions`` and the request failed with a 500;
3. an opinion that waits on SQLite's write lock past the busy timeout (an import holding it) is a 503 with
   Retry-After, nothing recorded, as for a sale — before, a 500.
"""

from __future__ import annotations

import json
import re
import threading

import pytest
from sqlalchemy import select

import dangol_cloud.feedback as feedback_module
from dangol_cloud.app import create_app
from dangol_cloud.models import CatalogueItem, Customer, CustomerOrigin, PickOpinion
from dangol_cloud.settings import Settings
from dangol_cloud.web.api import OpinionIn, record_feedback

from .conftest import REPO, STORE_TOKEN, add_store_and_device, sqlite_write_lock_held

CUSTOMER, ITEM = "3f2c9a4e-8b1d-4c6e-9f0a-2d5b7e1c4a93", "7a1e5c2d-4b3f-4e8a-9c6d-0f1b2a3c4d5e"


def _document() -> dict:
    return json.loads((REPO / "cloud" / "openapi.json").read_text(encoding="utf-8"))


def _client(db, db_url, tmp_path):
    """A test client of the real app with one store (token :data:`STORE_TOKEN`), the item :data:`ITEM` and the
    customer :data:`CUSTOMER`, enrolled at that store; returns ``(client, app)``."""
    store_id, _ = add_store_and_device(db)
    with db.transaction() as s:
        s.add_all([CatalogueItem(id=ITEM, ref="croissant", name="Croissant", price=2.5, tags=[]),
                   Customer(id=CUSTOMER, status="active", source="edge")])
        s.flush()
        s.add(CustomerOrigin(customer_id=CUSTOMER, store_id=store_id))
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="t", _env_file=None)
    app = create_app(settings, db=db, TESTING=True)
    return app.test_client(), app


def post(client, opinion: str = "like"):
    return client.post("/api/v1/feedback", data=json.dumps({"customer": CUSTOMER, "item": ITEM, "opinion": opinion}),
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {STORE_TOKEN}"})


def _opinions(db) -> list[tuple[str, str, str]]:
    with db.sessions() as s:
        return [tuple(r) for r in s.execute(select(PickOpinion.customer_id, PickOpinion.item_id, PickOpinion.opinion))]


# --- 1. the document and the code ----------------------------------------------------------------------------------
def test_the_opinion_schema_is_the_one_the_route_validates_with():
    documented = _document()["components"]["schemas"]["Opinion"]
    model = OpinionIn.model_json_schema()
    assert documented["additionalProperties"] is False and OpinionIn.model_config["extra"] == "forbid"
    assert set(documented["required"]) == set(model["required"]) == {"customer", "item", "opinion"}
    assert set(documented["properties"]) == set(model["properties"])
    for field in ("customer", "item"):
        doc, code = documented["properties"][field], model["properties"][field]
        assert (doc["type"], doc["minLength"], doc["maxLength"]) == (code["type"], code["minLength"], code["maxLength"])
        # the same characters refused: the document's ECMA-262 \uXXXX and the model's \xXX ranges
        for char in map(chr, [*range(0x00, 0xa1), 0x2028, 0xfeff, 0x1f600]):
            assert bool(re.fullmatch(doc["pattern"], char)) == bool(re.fullmatch(code["pattern"], char)), (field, char)
    assert documented["properties"]["opinion"]["enum"] == model["properties"]["opinion"]["enum"] \
        == list(feedback_module.OPINIONS)


def test_every_status_the_route_answers_is_documented_with_its_body():
    import inspect

    operation = _document()["paths"]["/api/v1/feedback"]["post"]
    assert operation["security"] == _document()["paths"]["/api/v1/purchases"]["post"]["security"] == [
        {"storeToken": []}]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Opinion"}
    source = inspect.getsource(record_feedback)
    answered = {int(code) for code in re.findall(r"_problem\((\d{3}),", source)} | {200}
    assert set(map(int, operation["responses"])) == answered
    for code, response in operation["responses"].items():
        media = "application/json" if code == "200" else "application/problem+json"
        assert set(response["content"]) == {media}, code
    assert operation["responses"]["503"]["headers"]["Retry-After"]["schema"]["minimum"] == 1
    example = operation["requestBody"]["content"]["application/json"]["example"]
    assert OpinionIn.model_validate(example).model_dump() == example


# --- 2. the same opinion twice at once -----------------------------------------------------------------------------
def test_the_same_opinion_sent_twice_at_once_is_recorded_once(db, db_url, tmp_path, monkeypatch):
    """Both requests have read that the customer has no opinion of the item yet when either writes (held at a
    barrier after the read). Before: the second insert raised IntegrityError (pick_opinions' primary key): a 500."""
    _client_, app = _client(db, db_url, tmp_path)
    barrier = threading.Barrier(2, timeout=10)
    real = feedback_module.dislikes_ruling_out

    def after_the_read(*args, **kwargs):
        answer = real(*args, **kwargs)
        barrier.wait()
        return answer

    monkeypatch.setattr(feedback_module, "dislikes_ruling_out", after_the_read)
    results: list = []

    def send() -> None:
        try:
            answer = post(app.test_client(), "like")
            results.append((answer.status_code, answer.json))
        except Exception as exc:  # noqa: BLE001 - TESTING propagates the view's error: recorded, asserted below
            results.append(("raised", repr(exc)[:300]))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r[0] for r in results] == [200, 200], results
    assert _opinions(db) == [(CUSTOMER, ITEM, "like")]
    assert post(app.test_client(), "dislike").status_code == 200  # and the latest still counts
    assert _opinions(db) == [(CUSTOMER, ITEM, "dislike")]


# --- 3. SQLite's write lock ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_opinion_waiting_on_a_locked_sqlite_database_is_a_503_with_retry_after(db, db_url, tmp_path):
    client, _app = _client(db, db_url, tmp_path)
    with sqlite_write_lock_held(db):  # an import in another process holds the write lock
        busy = post(client, "dislike")
    assert busy.status_code == 503, busy.get_data(as_text=True)[:300]
    assert busy.mimetype == "application/problem+json"
    assert int(busy.headers["Retry-After"]) > 0
    assert "busy with another write" in busy.json["detail"] and "nothing was recorded" in busy.json["detail"]
    assert "database is locked" not in busy.get_data(as_text=True)
    assert _opinions(db) == []
    assert post(client, "dislike").status_code == 200  # sent again once the write lock is free
    assert _opinions(db) == [(CUSTOMER, ITEM, "dislike")]
