"""Issue 11, finding 5 / build 4 — photos on the door screen.

A real JPEG (``clips/face_recognition_examples/obama-1080p.jpg``, 1920×1080) is given a GPS EXIF block with
Pillow and uploaded through the dashboard form: the stored photo has no EXIF and at most 800 px; an 81-MP
and a 225-MP image get the size message; the photo route needs sign-in; Publish inlines a small JPEG in the
snapshot, and the real edge web app shows it on the door screen in headless Chromium at 800×480.
"""

from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image
from sqlalchemy import select

from dangol_cloud.models import CatalogueItem, CatalogueVersion
from tests.browser import chromium_missing

from .test_cloud_web import csrf_of, sign_in, web  # noqa: F401 - the dashboard fixture

GPS_IFD = 0x8825


def _with_gps(jpeg: bytes) -> bytes:
    """The JPEG re-saved with an EXIF block carrying a GPS position (latitude 37.5665 N) and a camera make."""
    with Image.open(io.BytesIO(jpeg)) as image:
        exif = image.getexif()
        exif[0x010F] = "TestCam"  # Make
        exif[GPS_IFD] = {1: "N", 2: (37.0, 33.0, 59.4), 3: "E", 4: (126.0, 58.0, 40.0)}
        out = io.BytesIO()
        image.save(out, "JPEG", exif=exif.tobytes(), quality=90)
    data = out.getvalue()
    with Image.open(io.BytesIO(data)) as check:  # the input really carries the GPS block
        assert check.getexif().get_ifd(GPS_IFD)
    return data


def _upload(client, name: str, data: bytes, filename: str = "photo.jpg"):
    token = csrf_of(client.get("/catalogue/new").get_data(as_text=True))
    return client.post("/catalogue/new", content_type="multipart/form-data", data={
        "csrf_token": token, "name": name, "category": "Bakery", "price": "3.10", "available": "y",
        "photo": (io.BytesIO(data), filename)})


@pytest.fixture
def jpeg(data_dir) -> bytes:
    return (data_dir / "clips" / "face_recognition_examples" / "obama-1080p.jpg").read_bytes()


def test_upload_strips_exif_and_resizes(web, jpeg, tmp_path):  # noqa: F811
    app, db = web
    client = app.test_client()
    sign_in(client)
    assert _upload(client, "Butter croissant", _with_gps(jpeg)).status_code == 302
    with db.sessions() as s:
        item = s.scalar(select(CatalogueItem))
    stored = (tmp_path / "home" / "photos" / item.photo).read_bytes()
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "JPEG" and max(image.size) == 800 and image.size[0] > image.size[1]
        assert len(image.getexif()) == 0 and not image.getexif().get_ifd(GPS_IFD)
        assert "exif" not in image.info
    assert b"Exif\x00\x00" not in stored and b"TestCam" not in stored
    served = client.get(f"/catalogue/photos/{item.photo}")
    assert served.status_code == 200 and served.data == stored
    assert "private" in served.headers["Cache-Control"] and "public" not in served.headers["Cache-Control"]


@pytest.mark.parametrize("size,expected", [((9000, 9000), "9000×9000 (81 MP)"), ((15000, 15000), "225 million")],
                         ids=["81MP", "bomb-225MP"])
def test_oversized_photo_gets_the_size_message(web, tmp_path, size, expected):  # noqa: F811
    app, db = web
    client = app.test_client()
    sign_in(client)
    out = io.BytesIO()
    Image.new("1", size).save(out, "PNG")  # tiny file, huge pixel count
    response = _upload(client, "Huge", out.getvalue(), "huge.png")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and expected in page and "at most 16 megapixels" in page
    assert "cannot be read" not in page
    with db.sessions() as s:
        assert s.scalar(select(CatalogueItem)) is None
    assert not (tmp_path / "home" / "photos").exists() or not any((tmp_path / "home" / "photos").iterdir())


def test_photos_need_sign_in(web, jpeg):  # noqa: F811
    app, db = web
    owner = app.test_client()
    sign_in(owner)
    _upload(owner, "Butter croissant", jpeg)
    with db.sessions() as s:
        name = s.scalar(select(CatalogueItem.photo))
    assert owner.get(f"/catalogue/photos/{name}").status_code == 200
    stranger = app.test_client().get(f"/catalogue/photos/{name}")
    assert stranger.status_code in (302, 401, 403) and stranger.data[:3] != b"\xff\xd8\xff"
    if stranger.status_code == 302:
        assert "/login" in stranger.headers["Location"]


def _published_items(app, db, client) -> list[dict]:
    token = csrf_of(client.get("/catalogue/").get_data(as_text=True))
    assert client.post("/catalogue/publish", data={"csrf_token": token}).status_code == 302
    with db.sessions() as s:
        return s.scalar(select(CatalogueVersion).order_by(CatalogueVersion.version.desc())).items


def test_publish_inlines_a_small_photo(web, jpeg):  # noqa: F811
    app, db = web
    client = app.test_client()
    sign_in(client)
    _upload(client, "Butter croissant", _with_gps(jpeg))
    (entry,) = _published_items(app, db, client)
    prefix = "data:image/jpeg;base64,"
    assert entry["photo_url"].startswith(prefix) and len(entry["photo_url"]) < 40_000
    with Image.open(io.BytesIO(base64.b64decode(entry["photo_url"][len(prefix):]))) as image:
        assert max(image.size) == 240 and len(image.getexif()) == 0


def test_publish_keeps_the_snapshot_within_the_photo_budget(web, jpeg, monkeypatch):  # noqa: F811
    from dangol_cloud import publishing

    app, db = web
    client = app.test_client()
    sign_in(client)
    for name in ("Butter croissant", "Cardamom bun", "Basque cheesecake"):
        _upload(client, name, jpeg)
    with db.sessions() as s:
        sizes = [len(publishing.photo_url_builder(_photos_dir(app))(name))
                 for name in s.scalars(select(CatalogueItem.photo)).all()]
    one = max(sizes)
    monkeypatch.setattr(publishing, "PHOTO_BUDGET_BYTES", 2 * one + 10)
    items = _published_items(app, db, client)
    assert [bool(i["photo_url"]) for i in items] == [True, True, False]


def _photos_dir(app):
    from dangol_cloud.app import get_settings

    with app.app_context():
        return get_settings().photos_dir


@pytest.mark.slow
def test_door_screen_shows_the_photo(web, jpeg, browser, tmp_path):  # noqa: F811
    """The published snapshot, cached by the real edge web app, shows the photo on the house menu and on a
    welcome pick at 800×480 (screenshot ``door-photo-*.png`` in ``$DANGOL_SCREENSHOTS``)."""
    import shutil
    import uuid
    from pathlib import Path

    from dangol_edge.config import DisplayConfig, EdgeConfig
    from dangol_edge.gallery import Gallery
    from dangol_edge.screen import Screen
    from dangol_edge.state import StateStore
    from dangol_edge.web import DisplayServer, create_app

    if (msg := chromium_missing()):
        pytest.fail(msg, pytrace=False)
    app, db = web
    client = app.test_client()
    sign_in(client)
    _upload(client, "Butter croissant", _with_gps(jpeg))
    items = _published_items(app, db, client)
    catalogue = {"schema": "catalogue/1", "store_id": str(uuid.uuid4()), "version": 1, "currency": "EUR",
                 "published_at": "2026-12-02T08:00:00+00:00", "items": items}
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("DANGOL_")]:
            mp.delenv(k)
        config = EdgeConfig(home=tmp_path / "edge", display=DisplayConfig(welcome_s=30.0, picks=6, staff_pin="246813"))
    state = StateStore(config.state_path).open()
    assert state.put_catalogue(catalogue)
    gallery = Gallery(config.gallery_path, "0" * 64).open()
    screen = Screen()
    server = DisplayServer(create_app(screen=screen, state=state, gallery=gallery, config=config,
                                      on_activate=lambda *_: None, on_erase=lambda *_: None), "127.0.0.1", 0)
    server.start()
    shots = Path(os.environ.get("DANGOL_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 800, "height": 480})
    try:
        page = context.new_page()
        page.set_default_timeout(8_000)
        page.goto(server.url + "/")
        page.wait_for_function("document.body.dataset.live === '1'")
        img = page.locator(f'li.item[data-item="{items[0]["id"]}"] img.ph')
        img.wait_for(state="visible")
        assert page.evaluate("(el) => el.naturalWidth", img.element_handle()) == 240
        page.screenshot(path=str(tmp_path / "door-photo-house.png"))
        screen.show_welcome("Mina", [{"id": items[0]["id"]}], "c1", 30.0)
        page.wait_for_function("document.body.dataset.screen === 'welcome'")
        pick = page.locator(f'li.pick[data-item="{items[0]["id"]}"] img.ph')
        pick.wait_for(state="visible")
        assert pick.bounding_box()["width"] >= 40
        page.screenshot(path=str(tmp_path / "door-photo-welcome.png"))
        for name in ("door-photo-house.png", "door-photo-welcome.png"):
            shutil.copy(tmp_path / name, shots / name)
    finally:
        context.close()
        server.stop()
        gallery.close()
        state.close()


def test_door_screen_shows_only_inlined_photos():
    """The edge page fetches nothing: a ``photo_url`` that is not an inlined image (an http URL of the
    dashboard, which now needs sign-in, or a script URL) is not shown."""
    import uuid

    import dangol_protocol as proto
    from dangol_edge.web.menu import photos

    jpeg = "data:image/jpeg;base64,/9j/4AAQ"
    urls = [jpeg, "http://cloud/catalogue/photos/x.jpg", "javascript:alert(1)", None]
    items = [{"id": str(uuid.uuid4()), "name": f"Item {n}", "photo_url": url} for n, url in enumerate(urls)]
    catalogue = proto.Catalogue.model_validate({"schema": "catalogue/1", "store_id": str(uuid.uuid4()), "version": 1,
                                                "published_at": "2026-12-02T08:00:00+00:00", "items": items})
    shown = {str(k): v for k, v in photos(catalogue).items()}
    assert shown == {items[0]["id"]: jpeg} and photos(None) == {}
