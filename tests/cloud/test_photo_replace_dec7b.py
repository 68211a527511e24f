"""A replaced catalogue photo is removed from the cloud's photos folder (review R3, dec 7): every new photo got a new
file, and the old one stayed on disk and downloadable for ever. A photo another item still shows is kept."""

from __future__ import annotations

import io

from PIL import Image
from sqlalchemy import select

from dangol_cloud.models import CatalogueItem

from .conftest import sqlite_write_lock_held
from .test_cloud_web import csrf_of, sign_in, web  # noqa: F401 - the dashboard fixture


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "JPEG")
    return out.getvalue()


def _post(client, url: str, name: str, photo: bytes | None):
    data = {"csrf_token": csrf_of(client.get(url).get_data(as_text=True)), "name": name, "category": "Bakery",
            "price": "3.10", "available": "y"}
    if photo is not None:
        data["photo"] = (io.BytesIO(photo), "photo.jpg")
    return client.post(url, content_type="multipart/form-data", data=data)


def test_a_replaced_photo_is_removed_and_no_longer_served(web, tmp_path):  # noqa: F811
    app, db = web
    client = app.test_client()
    sign_in(client)
    folder = tmp_path / "home" / "photos"
    assert _post(client, "/catalogue/new", "Butter croissant", _jpeg((200, 150, 90))).status_code == 302
    with db.sessions() as s:
        item_id, first = s.execute(select(CatalogueItem.id, CatalogueItem.photo)).one()
    assert (folder / first).is_file()

    assert _post(client, f"/catalogue/{item_id}", "Butter croissant", _jpeg((90, 150, 200))).status_code == 302
    with db.sessions() as s:
        second = s.get(CatalogueItem, item_id).photo
    assert second != first and (folder / second).is_file()
    assert not (folder / first).exists()
    assert client.get(f"/catalogue/photos/{first}").status_code == 404
    assert client.get(f"/catalogue/photos/{second}").status_code == 200

    assert _post(client, f"/catalogue/{item_id}", "Butter croissant", None).status_code == 302  # no new photo: kept
    with db.sessions() as s:
        assert s.get(CatalogueItem, item_id).photo == second
    assert (folder / second).is_file()
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [second]


def test_a_photo_another_item_shows_is_kept(web, tmp_path):  # noqa: F811
    app, db = web
    client = app.test_client()
    sign_in(client)
    folder = tmp_path / "home" / "photos"
    assert _post(client, "/catalogue/new", "Butter croissant", _jpeg((200, 150, 90))).status_code == 302
    assert _post(client, "/catalogue/new", "Almond croissant", None).status_code == 302
    with db.transaction() as s:  # e.g. set by hand or by an older version: both items show one file
        one, two = s.scalars(select(CatalogueItem).order_by(CatalogueItem.name.desc())).all()
        two.photo = one.photo
        shared, one_id = one.photo, one.id
    assert _post(client, f"/catalogue/{one_id}", "Butter croissant", _jpeg((1, 2, 3))).status_code == 302
    assert (folder / shared).is_file()


def test_a_photo_written_for_a_save_that_fails_is_removed(web, tmp_path):  # noqa: F811
    """The save fails (another process holds SQLite's write lock: 503, nothing saved): the photo file written for it
    goes too (review R4: the edit's failure happened before the commit and after a rollback, and the file stayed)."""
    app, db = web
    client = app.test_client()
    sign_in(client)
    folder = tmp_path / "home" / "photos"
    assert _post(client, "/catalogue/new", "Butter croissant", None).status_code == 302  # no photo yet
    with db.sessions() as s:
        item_id = s.scalar(select(CatalogueItem.id))
    url = f"/catalogue/{item_id}"
    token = csrf_of(client.get(url).get_data(as_text=True))
    with sqlite_write_lock_held(db):  # an import in another process holds the write lock
        page = client.post(url, content_type="multipart/form-data", data={
            "csrf_token": token, "name": "Butter croissant", "category": "Bakery", "price": "3.10", "available": "y",
            "photo": (io.BytesIO(_jpeg((9, 9, 9))), "photo.jpg")})
    assert page.status_code == 503
    with db.sessions() as s:
        assert s.get(CatalogueItem, item_id).photo is None
    assert not folder.exists() or [p.name for p in folder.iterdir() if p.is_file()] == []
