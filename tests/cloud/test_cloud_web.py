"""Dashboard via Flask's test client: sign-in, CSRF, uploads, erasure (SQLite; the browser tests add Chromium)."""

from __future__ import annotations

import io
import re
import uuid

import pytest
from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.models import CatalogueItem, Customer, Erasure, Menu, ModelVersion, Purchase, Visit
from dangol_cloud.settings import Settings

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, add_owner, add_store_and_device, utc, write_ta_feng_customers


@pytest.fixture
def web(tmp_path, sqlite_url):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="k", _env_file=None)
    app = create_app(settings, db=db, TESTING=True)
    yield app, db
    db.dispose()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def sign_in(client, password=OWNER_PASSWORD):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": OWNER_EMAIL, "password": password, "csrf_token": token})


def wait_for_import(client, url: str, timeout: float = 30.0) -> str:
    """The import job page once the job finished (it refreshes itself while running)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        page = client.get(url).get_data(as_text=True)
        if 'data-state="running"' not in page or time.monotonic() > deadline:
            return page
        time.sleep(0.1)


def test_wrong_password_is_refused(web):
    app, _ = web
    client = app.test_client()
    response = sign_in(client, password="wrong password")
    assert response.status_code == 401 and "Wrong e-mail or password" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302  # still signed out
    assert sign_in(client).status_code == 302 and client.get("/").status_code == 200


def test_post_without_csrf_token_is_refused_and_changes_nothing(web):
    app, db = web
    client = app.test_client()
    sign_in(client)
    response = client.post("/catalogue/new", data={"name": "Sneaky latte", "price": "1"})
    assert response.status_code == 400
    response = client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD})
    assert response.status_code == 400
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(CatalogueItem)) == 0


def test_csv_upload_reports_bad_rows_with_line_numbers(web):
    app, db = web
    client = app.test_client()
    sign_in(client)
    html = client.get("/purchases/").get_data(as_text=True)
    csv = ("customer,item,quantity,timestamp\nann,Flat white,1,2026-01-05T08:00:00\n"
           "bob,Flat white,lots,2026-01-05T08:10:00\nbob,Scone,1,2026-01-05T08:11:00\n")
    response = client.post("/purchases/", content_type="multipart/form-data", data={
        "csrf_token": csrf_of(html), "format": "csv", "file": (io.BytesIO(csv.encode()), "till.csv")})
    assert response.status_code == 303 and "/purchases/imports/" in response.location  # a background job
    page = wait_for_import(client, response.location)
    assert "2 imported" in page and "1 skipped" in page
    assert re.search(r'<td class="num">3</td><td>[^<]*quantity', page)
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 2


def test_upload_of_a_file_with_a_wrong_header_imports_nothing(web):
    app, db = web
    client = app.test_client()
    sign_in(client)
    html = client.get("/purchases/").get_data(as_text=True)
    response = client.post("/purchases/", content_type="multipart/form-data", data={
        "csrf_token": csrf_of(html), "format": "csv", "file": (io.BytesIO(b"a,b\n1,2\n"), "odd.csv")})
    assert response.status_code == 422 and "odd.csv" in response.get_data(as_text=True)
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 0


def test_erase_deletes_the_customer_and_queues_an_erasure(web):
    app, db = web
    cid = str(uuid.uuid4())
    _, device_id = add_store_and_device(db)
    with db.transaction() as s:
        item = CatalogueItem(ref="latte", name="Latte", tags=[])
        s.add_all([item, Customer(id=cid, display_name="Mina", status="active", source="edge"),
                   ModelVersion(version="m1", path="x")])
        s.flush()
        s.add_all([Purchase(customer_id=cid, item_id=item.id, quantity=1, ts=utc(2026, 1, 1), source="csv",
                            idempotency_key="k1"),
                   Visit(event_id=str(uuid.uuid4()), customer_id=cid, ts=utc(2026, 1, 1)),
                   Menu(customer_id=cid, model_version="m1", picks=[{"item_id": item.id, "score": 1, "reasons": []}])])
    client = app.test_client()
    sign_in(client)
    page = client.get(f"/customers/{cid}").get_data(as_text=True)
    assert "Mina" in page
    response = client.post(f"/customers/{cid}/erase", data={"csrf_token": csrf_of(page), "confirm": "ERASE"})
    assert response.status_code == 302
    with db.sessions() as s:
        assert s.get(Customer, cid) is None and s.get(Menu, cid) is None
        assert s.scalar(select(func.count()).select_from(Purchase)) == 0
        assert s.scalar(select(Visit.customer_id)) is None  # the visit stays, anonymous
        erasure = s.scalar(select(Erasure))
        assert erasure.customer_id == cid and erasure.published_at is None and erasure.targets == [device_id]
        assert erasure.completed_at is None
    assert "1 not yet confirmed by every device" in client.get("/").get_data(as_text=True)


def test_item_with_photo_is_created_edited_retired_and_snapshotted(web, data_dir):
    from dangol_cloud.publishing import publish_catalogue_version

    app, db = web
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get("/catalogue/new").get_data(as_text=True))
    photo = next((data_dir / "clips" / "face_recognition_examples").rglob("*.jpg")).read_bytes()  # any real JPEG
    response = client.post("/catalogue/new", content_type="multipart/form-data", data={
        "csrf_token": token, "name": "Hojicha latte", "category": "Tea", "price": "4.50", "tags": "milk, roasted",
        "description": "Roasted green tea with steamed milk.", "available": "y",
        "photo": (io.BytesIO(photo), "hojicha.jpg")})
    assert response.status_code == 302
    with db.sessions() as s:
        item = s.scalar(select(CatalogueItem))
    assert (item.ref, item.price, item.tags, item.available) == ("hojicha-latte", 4.5, ["milk", "roasted"], True)
    served = client.get(f"/catalogue/photos/{item.photo}").data  # re-encoded (no EXIF): tests/cloud/test_owner_photos.py
    assert served[:3] == b"\xff\xd8\xff" and item.photo.endswith(".jpg")
    response = client.post(f"/catalogue/{item.id}", data={"csrf_token": token, "name": "Hojicha latte",
                                                          "price": "4.80", "tags": "milk"})  # unchecked: sold out
    assert response.status_code == 302
    with app.test_request_context(base_url="http://cafe.example"):
        with db.transaction() as s:
            snapshot = publish_catalogue_version(s, published_by="t", photo_url=lambda f: f"http://cafe.example/p/{f}")
    (entry,) = snapshot.items
    assert entry["price"] == 4.8 and entry["available"] is False and entry["photo_url"].endswith(item.photo)
    client.post(f"/catalogue/{item.id}/retire", data={"csrf_token": token, "confirm": "yes"})
    with db.transaction() as s:
        assert publish_catalogue_version(s, published_by="t").items == []   # retired items leave the snapshot
        assert s.get(CatalogueItem, item.id).retired


def test_retrain_now_trains_in_the_background(web, data_dir, tmp_path):
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows

    app, db = web
    slice_ = write_ta_feng_customers(data_dir, tmp_path / "ta_feng_00.csv")
    with db.transaction() as s:
        import_rows(s, parse_purchases(slice_, "ta-feng"), source="ta-feng", key_prefix="ta-feng")
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get("/").get_data(as_text=True))
    assert client.post("/train", data={}).status_code == 400           # no CSRF token: refused
    assert client.post("/train", data={"csrf_token": token}).status_code == 302
    job = app.extensions["dangol_training"]
    job.join(120)
    assert job.ok, job.message
    page = client.get("/").get_data(as_text=True)
    assert "Last run" in page and "menus" in page
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1
        assert s.scalar(select(func.count()).select_from(Menu)) > 100


@pytest.mark.parametrize("make,expected", [
    (lambda jpeg: jpeg[: len(jpeg) // 2], "cannot be read"),                         # truncated JPEG
    (lambda jpeg: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "cannot be read"),           # corrupt PNG header
    (lambda jpeg: b"GIF89a" + jpeg, "at most 16 megapixels"),  # a GIF header: Pillow reads 3.2 billion px
    (lambda jpeg: jpeg + b"\x00" * (8 * 1024 * 1024), "larger than 8 MiB"),          # oversized
], ids=["truncated", "corrupt", "garbage", "oversized"])
def test_corrupt_or_oversized_photo_is_refused_and_nothing_is_written(web, data_dir, tmp_path, make, expected):
    app, db = web
    client = app.test_client()
    sign_in(client)
    token = csrf_of(client.get("/catalogue/new").get_data(as_text=True))
    jpeg = next((data_dir / "clips" / "face_recognition_examples").rglob("*.jpg")).read_bytes()
    response = client.post("/catalogue/new", content_type="multipart/form-data", data={
        "csrf_token": token, "name": "Broken", "price": "1.00", "photo": (io.BytesIO(make(jpeg)), "broken.jpg")})
    assert response.status_code == 200 and expected in response.get_data(as_text=True)
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(CatalogueItem)) == 0
    assert not (tmp_path / "home" / "photos").exists() or not any((tmp_path / "home" / "photos").iterdir())
