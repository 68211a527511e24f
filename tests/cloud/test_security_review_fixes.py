"""Security review (five findings), each test written to fail before its fix:

1. Removing a device (or giving it a new password) revokes its MQTT login on the broker at once, over the
   dynamic-security plugin's control topic with the cloud's own login (``broker-config`` gives it that right):
   a connected stolen box is disconnected and cannot log in again. A broker that refuses (a configuration from an
   older ``broker-config``) or cannot be reached leaves the page saying exactly what to do by hand: broker-config
   and a *restart* — never a reload, which the plugin ignores. Against a real Mosquitto 2.0 with the plugin.
2. An uploaded purchase file's name is only shown, cleaned (no control characters, at most 100 characters); the
   upload is saved under a generated name, so a 300-byte or NUL-bearing name is no 500.
3. A mistyped setting holding a secret (broker URL with its password, database URL) is refused without repeating
   the secret; the error names the variable and the scheme, host and port.
4. A photo is decoded once per submit, a JPEG at a reduced scale; more than 16 megapixels, or far more pixels per
   byte than any photo has (a flat decompression bomb), is refused before any decoding.
5. The training progress page (chain-wide customers and purchases) is for owners; staff see neither it nor its
   figures on the Today page.
"""

from __future__ import annotations

import io
import json
import re
import threading
from html import unescape
from types import SimpleNamespace

import pytest
from PIL import Image, ImageChops, ImageFile
from sqlalchemy import select

import dangol_protocol as proto
from dangol_cloud.app import create_app
from dangol_cloud.cli import main as cli
from dangol_cloud.db import Database
from dangol_cloud.models import CatalogueItem, Device, utcnow
from dangol_cloud.settings import ConfigError, Settings, load_settings
from tests.broker import free_port

from .conftest import DEV_KEY_BYTES, OWNER_EMAIL, OWNER_PASSWORD, add_owner
from .test_cloud_web import wait_for_import
from .test_device_trust import CLOUD_PW, Chain, Device_, DynsecBroker
from .test_scope_fixes import two_stores
from .test_web_hardening import STAFF_EMAIL, STAFF_PASSWORD, csrf_of, make_sqlite_site, sign_in  # noqa: F401


# --- 1. revoking a device's broker login -------------------------------------------------------------------------
class _Box(Device_):
    """A device's MQTT client that also notes when the broker drops it (paho then retries, and is refused)."""

    def __init__(self, *args) -> None:
        self.dropped = threading.Event()
        super().__init__(*args)
        self.client.on_disconnect = lambda *a: self.dropped.set()


def _broker_site(db, db_url, tmp_path, monkeypatch, *, strip_admin: bool = False, broker: bool = True):
    """(chain, app, broker or None): the two-store chain, ``broker-config``'s output (its cloud role's control-topic
    rights removed with ``strip_admin``, as an older broker-config wrote it) loaded by a real Mosquitto, and the app
    whose MQTT_URL is the cloud's login there (or a port where nothing listens, without ``broker``)."""
    chain = Chain(db)
    add_owner(db)
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_MQTT_URL", f"mqtt://cloud:{CLOUD_PW}@127.0.0.1:1883")
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    assert cli(["broker-config", "--out", str(tmp_path / "auth")]) == 0
    if strip_admin:
        path = tmp_path / "auth" / "dynamic-security.json"
        config = json.loads(path.read_text())
        for role in config["roles"]:
            role["acls"] = [a for a in role["acls"] if not a["topic"].startswith("$CONTROL")]
        path.write_text(json.dumps(config))
    running = DynsecBroker(tmp_path / "mosquitto", tmp_path / "auth").start() if broker else None
    url = running.url_as("cloud", CLOUD_PW) if running else f"mqtt://cloud:{CLOUD_PW}@127.0.0.1:{free_port()}"
    settings = Settings(cloud_home=tmp_path / "home", database_url=db_url, secret_key="k", mqtt_url=url,
                        _env_file=None)
    return chain, create_app(settings, db=db, TESTING=True), running


def _owner(app):
    client = app.test_client()
    token = csrf_of(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD,
                                       "csrf_token": token}).status_code == 302
    return client


#: The wrong instruction: the dynamic-security plugin reads its file only at start.
RELOAD = re.compile(r"reload (Mosquitto|the broker)|Mosquitto reload", re.I)


def _remove(owner, device_id: str) -> tuple[str, str]:
    """(confirmation page text, flashed message) of removing ``device_id`` on the Stores page."""
    token = csrf_of(owner.get("/stores/").get_data(as_text=True))
    confirm = owner.post(f"/stores/devices/{device_id}/delete", data={"csrf_token": token}).get_data(as_text=True)
    page = owner.post(f"/stores/devices/{device_id}/delete", data={"csrf_token": token, "confirm": "yes"},
                      follow_redirects=True).get_data(as_text=True)
    flashes = " ".join(unescape(f) for f in re.findall(r'<div class="flash [^"]*"[^>]*>(.*?)</div>', page, re.S))
    return unescape(confirm), flashes


def test_removing_a_device_revokes_its_broker_login_at_once(db, db_url, tmp_path, monkeypatch):
    chain, app, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    try:
        stolen = _Box(broker, chain.user_b, "pw-b", proto.device_client_id(chain.device_b))
        assert stolen.accepted
        confirm, flashed = _remove(_owner(app), chain.device_b)
        assert not RELOAD.search(confirm) and "at once" in confirm
        assert "revoked on the broker at once" in flashed and not RELOAD.search(flashed), flashed
        with db.sessions() as s:
            assert s.get(Device, chain.device_b) is None
        assert stolen.dropped.wait(5), "the removed device's open connection was not closed"
        stolen.close()
        again = Device_(broker, chain.user_b, "pw-b", proto.device_client_id(chain.device_b))
        again.close()
        assert not again.accepted, f"the removed device still logs in: {again.rc}"
        other = Device_(broker, chain.user_a, "pw-a", proto.device_client_id(chain.device_a))
        other.close()
        assert other.accepted, "the other store's device lost its login too"
    finally:
        broker.stop()


def test_a_new_device_password_replaces_the_old_one_at_once(db, db_url, tmp_path, monkeypatch):
    chain, app, broker = _broker_site(db, db_url, tmp_path, monkeypatch)
    try:
        box = _Box(broker, chain.user_a, "pw-a", proto.device_client_id(chain.device_a))
        assert box.accepted
        owner = _owner(app)
        token = csrf_of(owner.get("/stores/").get_data(as_text=True))
        page = unescape(owner.post(f"/stores/devices/{chain.device_a}/password",
                                   data={"csrf_token": token, "confirm": "yes"}).get_data(as_text=True))
        password = re.search(r'id="mqtt-password">([^<]+)<', page).group(1)
        assert "the old one no longer works" in page and "keeps working" not in page
        assert box.dropped.wait(5), "a connection with the old password stayed open"
        box.close()
        old = Device_(broker, chain.user_a, "pw-a", proto.device_client_id(chain.device_a))
        new = Device_(broker, chain.user_a, password, proto.device_client_id(chain.device_a))
        old.close(), new.close()
        assert not old.accepted and new.accepted, (old.rc, new.rc)
    finally:
        broker.stop()


@pytest.mark.parametrize("case", ["older-broker-config", "broker-down"])
def test_when_the_broker_cannot_revoke_the_page_says_restart(sqlite_url, tmp_path, monkeypatch, case):
    db = Database(sqlite_url, data_key=DEV_KEY_BYTES)
    db.migrate()
    chain, app, broker = _broker_site(db, sqlite_url, tmp_path, monkeypatch, strip_admin=True,
                                      broker=case == "older-broker-config")
    try:
        owner = _owner(app)
        confirm, flashed = _remove(owner, chain.device_b)
        assert not RELOAD.search(confirm) and "restart" in confirm
        assert not RELOAD.search(flashed)
        assert "dangol-cloud broker-config" in flashed and "restart Mosquitto" in flashed, flashed
        assert "not revoked" in flashed and "revoked on the broker at once" not in flashed
        if broker is not None:  # the page told the truth: until the restart, the login still works
            still = Device_(broker, chain.user_b, "pw-b", proto.device_client_id(chain.device_b))
            still.close()
            assert still.accepted
        token = csrf_of(owner.get("/stores/").get_data(as_text=True))
        page = unescape(owner.post(f"/stores/devices/{chain.device_a}/password",
                                   data={"csrf_token": token, "confirm": "yes"}).get_data(as_text=True))
        assert "the old one keeps working until" in page and "restart" in page
    finally:
        if broker is not None:
            broker.stop()
        db.dispose()


# --- 2. an upload's file name --------------------------------------------------------------------------------------
SALES = b"customer,item,quantity,timestamp\nc1,latte,1,2025-01-05T08:00:00\n"


@pytest.mark.parametrize("name,shown", [
    ("a" * 300 + ".csv", "a" * 60),                   # 300 bytes: ENAMETOOLONG as a file name
    ("sales\x00.csv", "sales.csv"),                   # NUL: ValueError in open()
    ("till\x1b[31m\u202eexport.csv", "till[31mexport.csv"),  # terminal escape, right-to-left override
], ids=["300-bytes", "nul", "controls"])
def test_an_upload_name_is_shown_cleaned_and_never_used_as_a_path(make_sqlite_site, monkeypatch, name, shown):
    from dangol_cloud.web import purchases

    app, db = make_sqlite_site()
    app.config["TESTING"] = False  # as in production: an exception would be the 500 page
    saved = []
    real = purchases.detect_files
    monkeypatch.setattr(purchases, "detect_files", lambda paths, fmt: saved.extend(paths) or real(paths, fmt))
    client = app.test_client()
    assert sign_in(client).status_code == 302
    token = csrf_of(client.get("/purchases/").get_data(as_text=True))
    response = client.post("/purchases/", content_type="multipart/form-data",
                           data={"csrf_token": token, "format": "auto", "file": [(io.BytesIO(SALES), name)]})
    assert response.status_code == 303, response.get_data(as_text=True)[:300]
    assert [p.name for p in saved] == ["upload-1.csv"]
    page = unescape(wait_for_import(client, response.location))
    files = re.search(r'<p class="sub">(.*?) · csv</p>', page, re.S).group(1)
    assert shown in files and len(files) <= 100 and not re.search(r"[\x00-\x1f\x7f\u202e]", files), files


def test_a_refused_upload_names_the_file_as_uploaded(make_sqlite_site):
    app, db = make_sqlite_site()
    client = app.test_client()
    assert sign_in(client).status_code == 302
    token = csrf_of(client.get("/purchases/").get_data(as_text=True))
    files = [(io.BytesIO(SALES), "good.csv"), (io.BytesIO(b"who,what\nx,y\n"), "weird\x07 export.csv")]
    response = client.post("/purchases/", content_type="multipart/form-data",
                           data={"csrf_token": token, "format": "auto", "file": files})
    page = unescape(response.get_data(as_text=True))
    assert response.status_code == 422 and "weird export.csv: not a known purchase file" in page
    assert not re.search(r"upload-\d+\.csv", page)


def test_an_import_failing_midway_names_the_file_as_uploaded(make_sqlite_site, monkeypatch):
    from dangol_cloud import importers

    def fail(path, fmt, products=None):
        raise importers.ImportFormatError(f"{path}: the disk went away")

    monkeypatch.setattr(importers, "parse_purchases", fail)
    app, db = make_sqlite_site()
    client = app.test_client()
    assert sign_in(client).status_code == 302
    token = csrf_of(client.get("/purchases/").get_data(as_text=True))
    response = client.post("/purchases/", content_type="multipart/form-data",
                           data={"csrf_token": token, "format": "auto", "file": [(io.BytesIO(SALES), "till.csv")]})
    page = unescape(wait_for_import(client, response.location))
    assert "till.csv: the disk went away Nothing was imported." in page, page


# --- 3. secrets in settings errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variable,value,named", [
    ("DANGOL_MQTT_URL", "tcp://cloud:S3cretPassw0rd@broker.example:1883", "tcp://broker.example:1883"),
    ("DANGOL_MQTT_URL", "mqtt://cloud:S3cretPassw0rd@", "mqtt://"),
    ("DANGOL_MQTT_URL", "mqtt://cloud:S3cretPassw0rd@broker.example:99999", "broker.example"),
    ("DANGOL_MQTT_URL", "mqtt://cloud:S3cretPassw0rd@bro ker:1883", "mqtt://"),
    ("DANGOL_DATABASE_URL", "postgresql+psycopg://dangol:S3cretPassw0rd@db:port/dangol", "postgresql+psycopg://db"),
    ("DANGOL_DATABASE_URL", "dangol:S3cretPassw0rd@db/dangol", "DATABASE_URL"),
    ("DANGOL_PUBLIC_URL", "ftp://admin:S3cretPassw0rd@cafe.example", "ftp://cafe.example"),
], ids=["mqtt-scheme", "mqtt-no-host", "mqtt-port", "mqtt-space", "db-port", "db-not-a-url", "public-url"])
def test_a_refused_setting_never_repeats_its_secret(monkeypatch, tmp_path, variable, value, named):
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "S3cretPassw0rd" not in message and variable in message and named in message, message
    with pytest.raises(ValueError) as direct:  # built directly (pydantic's own error text): no input either
        Settings(_env_file=None)
    assert "S3cretPassw0rd" not in str(direct.value)


def test_a_valid_broker_url_is_kept_as_it_is(monkeypatch, tmp_path):
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path))
    for url in ("mqtt://cloud:pw@127.0.0.1:1883", "mqtts://cloud:p%40ss@broker.example"):
        assert load_settings(mqtt_url=url).mqtt_url == url


# --- 4. photos -----------------------------------------------------------------------------------------------------
@pytest.fixture
def decodes(monkeypatch):
    """``[(format, size)]`` of every image decoded (``ImageFile.load``), at the size it was decoded."""
    seen = []
    real = ImageFile.ImageFile.load

    def load(self):
        if self.tile:  # not yet decoded
            seen.append((self.format, self.size))
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _photo_like(size) -> Image.Image:
    """An RGB image that compresses like a photo (smooth gradients and grain)."""
    w, h = size
    grad = Image.linear_gradient("L").resize((w, h))
    grain = ImageChops.add(Image.effect_noise((w, h), 24), grad, 2.0, -64)
    return Image.merge("RGB", (grad, grad.transpose(Image.Transpose.ROTATE_180), grain))


def _post_item(client, data: bytes, name: str, price: str = "3.50"):
    token = csrf_of(client.get("/catalogue/new").get_data(as_text=True))
    return client.post("/catalogue/new", content_type="multipart/form-data", data={
        "csrf_token": token, "name": "Bomb", "price": price, "available": "y", "photo": (io.BytesIO(data), name)})


def test_a_small_flat_png_of_40_megapixels_is_refused_without_decoding(make_sqlite_site, decodes):
    data = _png(Image.new("RGBA", (6320, 6320), (1, 2, 3, 255)))  # 166 KB, 40 MP: the reviewer's bomb
    app, db = make_sqlite_site()
    two_stores(db)
    client = app.test_client()
    assert sign_in(client, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    decodes.clear()
    page = unescape(_post_item(client, data, "bomb.png").get_data(as_text=True))
    assert "6320×6320 (40 MP)" in page and "at most 16 megapixels" in page, page[:2000]
    assert decodes == []
    with db.sessions() as s:
        assert s.scalar(select(CatalogueItem)) is None


def test_an_image_compressed_far_beyond_any_photo_is_refused(make_sqlite_site, decodes):
    data = _png(Image.new("RGB", (4000, 3000), (250, 250, 250)))  # 12 MP in a few KB
    app, db = make_sqlite_site()
    client = app.test_client()
    sign_in(client)
    decodes.clear()
    page = unescape(_post_item(client, data, "flat.png").get_data(as_text=True))
    assert "compressed far more than a photo" in page, page[:2000]
    assert decodes == []


def test_a_photo_is_decoded_once_per_submit_and_a_jpeg_at_a_reduced_scale(make_sqlite_site, decodes, tmp_path):
    app, db = make_sqlite_site()
    client = app.test_client()
    sign_in(client)
    png = _png(_photo_like((1600, 1200)))
    decodes.clear()
    assert _post_item(client, png, "cake.png").status_code == 302
    assert decodes == [("PNG", (1600, 1200))]
    out = io.BytesIO()
    _photo_like((4000, 3000)).save(out, "JPEG", quality=85)
    decodes.clear()
    refused = _post_item(client, out.getvalue(), "cake.jpg", price="-1")  # refused for the price: photo held
    assert refused.status_code == 200 and "held/" in refused.get_data(as_text=True)
    assert decodes == [("JPEG", (2000, 1500))]  # libjpeg's DCT scaling: 1/2, still over 800 px
    with db.sessions() as s:
        stored = s.scalar(select(CatalogueItem)).photo
    with Image.open(tmp_path / "home" / "photos" / stored) as image:
        assert image.format == "JPEG" and image.size == (800, 600)


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("RGB", "WEBP"),
                                      ("CMYK", "JPEG")])
def test_every_mode_is_stored_upright_as_a_small_jpeg(mode, fmt):
    from dangol_cloud.web.photos import checked_photo

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; the stored photo is upright (portrait)
    out = io.BytesIO()
    _photo_like((1000, 600)).convert(mode).save(out, fmt, exif=exif.tobytes())
    with Image.open(io.BytesIO(checked_photo(out.getvalue()))) as stored:
        assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", (480, 800))
        assert not stored.getexif()


# --- 5. training progress ------------------------------------------------------------------------------------------
def test_training_figures_are_for_owners_only(make_sqlite_site):
    app, db = make_sqlite_site()
    two_stores(db)
    job = app.extensions["dangol_training"]
    job.started_at = job.finished_at = utcnow()
    job.ok, job.message = True, "model m-1: 335,436 purchases, 2,017 menus, 2,020 menu messages published to 2 store(s)"
    job.result = SimpleNamespace(model_version="m-1", interactions=335_436, items=4_321, customers=2_017, menus=2_017,
                                 messages_published=2_030, menu_messages=2_020, stores=2, seconds=61.0)
    owner, staff = app.test_client(), app.test_client()
    assert sign_in(owner).status_code == 302
    assert sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    assert "335,436" in owner.get("/train/job").get_data(as_text=True)
    assert "335,436" in owner.get("/").get_data(as_text=True)
    assert staff.get("/train/job").status_code == 403
    today = staff.get("/").get_data(as_text=True)
    assert "335,436" not in today and "2,017" not in today and "/train/job" not in today
    assert 'id="training"' in today  # they still see that the picks were renewed
