"""The door review's staff-page findings (/tmp/review_door):

1. Staff confirm "the customer agreed to the consent text version 2026-01", but no such text existed: the text of
   each version now ships in the package (``edge/consent/<version>.md``), filled in with this box's settings; the
   staff page links it next to the consent box and shows it to the customer on a page without any other customer's
   name; ``check-config`` refuses a consent version without its text.
2. The door greeted "김 민준" as "Welcome back, 김" (the first word, a bare family name): a "Greet as" field on the
   activation form, pre-filled by one rule (:func:`dangol_protocol.greeting_name`: a Hangul/CJK name whole, "Dr. Lee"
   whole, else the first word), editable, with a preview; stored sealed with the customer; the door greets with it.
3. After the documented install staff phones could not reach the staff page (host 127.0.0.1; the README only said
   to put a PIN in edge.env): ``install-edge --staff-pin PIN`` writes the PIN and the LAN host together and ends by
   printing the staff page's address on the shop's network.

Real Chromium on the staff page (one module-scoped server), the real ``install-edge`` functions on a fake
``/etc/dangol`` (as ``test_install_key.py`` runs them).
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import subprocess
import threading
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from dangol_edge.config import DisplayConfig, EdgeConfig, EnrolConfig, PrivacyConfig
from dangol_edge.gallery import Gallery
from dangol_edge.screen import Screen
from dangol_edge.state import StateStore
from dangol_edge.web import DisplayServer, create_app
from dangol_protocol import CONSENT_TEXT_VERSION, Consent, Menu
from tests.conftest import REPO
from tests.edge.test_install_key import _environment_file, _function
from tests.edge.test_systemd import FIRMWARE, INSTALL_EDGE, _tool

PIN = "246813"
CONSENT = Consent(recorded_by="Jo", recorded_at=datetime(2026, 1, 5, tzinfo=timezone.utc), text_version="2026-01")


def unit(seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((1, 128)).astype(np.float32)
    return e / np.linalg.norm(e)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The staff page on a free port with a PIN, a regular (Mina Park) and non-default retention settings."""
    tmp = tmp_path_factory.mktemp("staff-review")
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("DANGOL_") and k != "DANGOL_GALLERY_KEY"]:
            mp.delenv(k)
        config = EdgeConfig(home=tmp / "home", display=DisplayConfig(staff_pin=PIN),
                            enrol=EnrolConfig(pending_ttl_h=12), privacy=PrivacyConfig(retention_days=200))
    state = StateStore(config.state_path).open()
    gallery = Gallery(config.gallery_path, "0" * 64).open()
    gallery.enroll("Mina Park", unit(1), consent=CONSENT)
    app = create_app(screen=Screen(), state=state, gallery=gallery, config=config)
    server = DisplayServer(app, "127.0.0.1", 0)
    server.start()
    yield {"config": config, "gallery": gallery, "url": server.url}
    server.stop()
    gallery.close()
    state.close()


@pytest.fixture
def staff(browser, site):
    """A signed-in staff phone (375 px wide, as in the review)."""
    context = browser.new_context(viewport={"width": 375, "height": 812})
    page = context.new_page()
    page.set_default_timeout(5_000)
    page.goto(site["url"] + "/staff")
    page.fill("#pin", PIN)
    page.click("button[type=submit]")
    page.wait_for_url(site["url"] + "/staff")
    yield page
    context.close()


def pending(site) -> str:
    return site["gallery"].enroll("", unit(int.from_bytes(os.urandom(2), "big") + 10), status="pending",
                                  pending_ttl_s=3600).id


# --- 1. the consent text -------------------------------------------------------------------------------------
def test_the_configured_consent_version_has_its_text_in_the_package():
    from dangol_edge.consent_text import consent_path

    path = consent_path(CONSENT_TEXT_VERSION)
    assert path == REPO / "edge" / "consent" / f"{CONSENT_TEXT_VERSION}.md" and path.is_file()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dangol_edge"]
    assert "consent/*.md" in data   # in the wheel install-edge installs, not only in the checkout


def test_the_text_states_this_devices_settings(tmp_path):
    from dangol_edge.consent_text import render_consent

    config = EdgeConfig(home=tmp_path, enrol=EnrolConfig(pending_ttl_h=12), privacy=PrivacyConfig(retention_days=200))
    text = render_consent(config)
    assert "12 hours" in text and "200 days" in text and CONSENT_TEXT_VERSION in text
    assert "never leave this device" in text and "optional" in text
    assert "are not kept" in text and "{" not in text
    kept = render_consent(config.model_copy(update={"enrol": EnrolConfig(keep_photos=True)}))
    assert "are not kept" not in kept and "keep the snapshots" in kept   # enrol.keep_photos is said as it is
    assert "<script" not in render_consent(config)


def test_check_config_refuses_a_consent_version_without_its_text(tmp_path, capsys, monkeypatch):
    from dangol_edge.cli import main

    for k in [k for k in os.environ if k.startswith("DANGOL_") and k != "DANGOL_GALLERY_KEY"]:
        monkeypatch.delenv(k)
    toml = (FIRMWARE / "edge.toml").read_text().replace('consent_version = "2026-01"', 'consent_version = "2099-01"')
    assert "2099-01" in toml
    path = tmp_path / "edge.toml"
    path.write_text(toml)
    assert main(["--home", str(tmp_path / "home"), "check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "display.consent_version" in err and "2099-01" in err and "consent/2099-01.md" in err
    assert main(["--home", str(tmp_path / "home"), "check-config", str(FIRMWARE / "edge.toml")]) == 0


def test_the_staff_page_links_the_text_and_shows_it_to_the_customer(site, staff):
    cid = pending(site)
    staff.goto(site["url"] + "/staff")
    card = staff.locator(f"#pending-{cid}")
    read = card.locator("a.consent-text")
    assert read.count() == 1 and CONSENT_TEXT_VERSION in card.locator("label.check").inner_text()
    with staff.context.expect_page() as opened:
        read.click()
    text = opened.value
    text.wait_for_load_state()
    body = text.inner_text("body")
    assert CONSENT_TEXT_VERSION in body and "200 days" in body and "12 hours" in body
    assert "Show to the customer" in body
    # the customer's view: only the text, in large type — no other customer's name (the staff page lists regulars)
    with staff.context.expect_page() as shown:
        card.locator("a.consent-show").click()
    customer = shown.value
    customer.wait_for_load_state()
    body = customer.inner_text("body")
    assert "200 days" in body and "Mina Park" not in body and "Sign out" not in body
    size = customer.evaluate("parseFloat(getComputedStyle(document.querySelector('main p')).fontSize)")
    assert size >= 20
    assert customer.evaluate("document.documentElement.scrollWidth") <= 375   # readable on the phone as it is
    text.close()
    customer.close()


# --- 2. the greeting -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, greeting", [
    ("Mina Park", "Mina"), ("Lin-Manuel Miranda", "Lin-Manuel"),
    ("김 민준", "김 민준"), ("김민준", "김민준"), ("이 린마누엘", "이 린마누엘"), ("山田 太郎", "山田 太郎"),
    ("Dr. Lee", "Dr. Lee"), ("dr lee", "dr lee"), ("Dr. Mina Park", "Dr. Park"), ("Ms Park", "Ms Park"),
    ("  ", None), ("Dr.", "Dr."),
])
def test_one_greeting_rule_for_the_door_the_cli_and_the_clouds_menus(name, greeting):
    from dangol_protocol import first_name, greeting_name

    assert greeting_name(name) == greeting
    assert first_name(name) == greeting   # what the cloud puts in menus (cloud/publishing.py) and the edge caches
    menu = Menu(store_id="11111111-1111-1111-1111-111111111111", customer_id="22222222-2222-2222-2222-222222222222",
                display_name=name, model_version="m", generated_at=datetime.now(timezone.utc), items=[])
    assert menu.display_name == greeting


def test_the_greeting_is_sealed_kept_and_greeted_with(tmp_path):
    from dangol_edge.events import EventFactory, Outbox
    from dangol_edge.tracker import Decision
    from dangol_edge.workers.arrivals import ArrivalWorker
    from dangol_edge.workers.base import Stats

    path = tmp_path / "gallery.sqlite"
    with Gallery(path, "0" * 64) as g:
        cid = g.enroll("", unit(3), status="pending", pending_ttl_s=600).id
        g.activate(cid, "김 민준", CONSENT, greet_name="민준")
        assert g.customer(cid).first_name == "민준" and g.customer(cid).greet_name == "민준"
        plain = g.enroll("김 서연", unit(4), consent=CONSENT)   # no greeting given (CLI, older rows): the rule
        assert plain.greet_name is None and plain.first_name == "김 서연"
    raw = sqlite3.connect(path).execute("SELECT greet_name FROM customers WHERE id = ?", [cid]).fetchone()[0]
    assert isinstance(raw, bytes) and "민준".encode() not in raw   # sealed like the name
    with Gallery(path, "0" * 64) as g:
        assert g.customer(cid).first_name == "민준"
        device = "33333333-3333-3333-3333-333333333333"
        with StateStore(tmp_path / "state.sqlite") as state:
            screen = Screen()
            worker = ArrivalWorker(EdgeConfig(home=tmp_path), g, state, screen, EventFactory(device),
                                   Outbox(device, state), queue.Queue(), Stats(), threading.Event())
            worker.handle(Decision(kind="known", track_id=1, ts=1.0, first_ts=1.0, votes=3, frames=3,
                                   customer_id=cid, score=0.8, arrival=True))
            assert screen.snapshot()["first_name"] == "민준"   # "Welcome back, 민준"


def test_rotate_key_reseals_the_greeting(tmp_path):
    import secrets

    from dangol_edge.crypto import FieldCipher

    path = tmp_path / "gallery.sqlite"
    with Gallery(path, "0" * 64) as g:
        cid = g.enroll("", unit(5), status="pending", pending_ttl_s=600).id
        g.activate(cid, "Dr. Mina Park", CONSENT, greet_name="Dr. Park")
        key = secrets.token_bytes(32)
        assert g.rotate_key(FieldCipher(key)) >= 3   # name, greeting, template
    with Gallery(path, "0" * 64, cipher=FieldCipher(key)) as g:
        assert g.customer(cid).first_name == "Dr. Park"


def test_an_older_gallery_gains_the_greeting_column(tmp_path):
    path = tmp_path / "gallery.sqlite"
    with Gallery(path, "0" * 64) as g:
        cid = g.enroll("이 린마누엘", unit(6), consent=CONSENT).id
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE customers DROP COLUMN greet_name")   # as a gallery written before this version
    con.commit()
    con.close()
    with Gallery(path, "0" * 64) as g:
        assert "greet_name" in g.db["customers"].columns_dict
        assert g.customer(cid).first_name == "이 린마누엘"   # was "이": a bare family name


def test_the_staff_page_prefills_previews_and_stores_the_greeting(site, staff):
    cid = pending(site)
    staff.goto(site["url"] + "/staff")
    card = staff.locator(f"#pending-{cid}")
    name, greet, preview = (card.locator("input[name=display_name]"), card.locator("input[name=greet_as]"),
                            card.locator(".greet-preview"))
    for typed, expected in (("김 민준", "김 민준"), ("김민준", "김민준"), ("Dr. Lee", "Dr. Lee"), ("Mina Park", "Mina"),
                            ("Dr. Mina Park", "Dr. Park")):
        name.fill(typed)
        assert greet.input_value() == expected, typed
        assert preview.inner_text() == f"The door will say: Welcome back, {expected}"
    name.fill("김 민준")
    greet.fill("민준")   # staff ask the customer; from now on the name no longer changes it
    assert preview.inner_text() == "The door will say: Welcome back, 민준"
    name.fill("김 민준 ")
    assert greet.input_value() == "민준"
    card.locator("input[name=consent]").check()
    card.locator("input[name=staff]").fill("Jo")
    card.locator("button:has-text('Activate')").click()
    staff.wait_for_selector(f"#active-{cid}")
    got = site["gallery"].customer(cid)
    assert got.status == "active" and got.display_name == "김 민준" and got.first_name == "민준"
    assert "greeted as 민준" in staff.inner_text(f"#active-{cid}")


def test_an_empty_greet_as_field_greets_by_the_rule(site, staff):
    cid = pending(site)
    staff.goto(site["url"] + "/staff")
    card = staff.locator(f"#pending-{cid}")
    card.locator("input[name=display_name]").fill("박 지우")
    card.locator("input[name=greet_as]").fill("")
    card.locator("input[name=consent]").check()
    card.locator("input[name=staff]").fill("Jo")
    card.locator("button:has-text('Activate')").click()
    staff.wait_for_selector(f"#active-{cid}")
    assert site["gallery"].customer(cid).first_name == "박 지우"


def test_cli_enrol_greets_by_the_same_rule(edge_env, capsys, clips):
    from dangol_edge.cli import main

    assert main(["enroll", "--name", "김 민준", "--image", str(clips / "obama.jpg")]) == 0
    out = json.loads(capsys.readouterr().out)["enrolled"]
    assert out["name"] == "김 민준" and out["greet_as"] == "김 민준"


# --- 3. the staff page on the shop's network -----------------------------------------------------------------
def run_functions(tmp_path: Path, names: tuple[str, ...], call: str, *, dry_run: bool = False,
                  path_dir: Path | None = None) -> subprocess.CompletedProcess:
    """install-edge's shell functions ``names`` run on ``tmp_path/etc`` (as test_install_key.py does)."""
    script = INSTALL_EDGE.read_text()
    harness = "\n".join([
        "set -euo pipefail", "umask 022", 'B="" Y="" N=""',
        f"DRY_RUN={int(dry_run)} SRC={REPO} ETC={tmp_path / 'etc'}",
        *(_function(script, name) for name in names), call])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANGOL_")}
    if path_dir is not None:
        env["PATH"] = f"{path_dir}:{env['PATH']}"
    return subprocess.run([_tool("bash", "bash"), "-c", harness], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def etc(tmp_path) -> Path:
    """A first install's /etc/dangol: the example edge.env (root-only mode) and edge.toml."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "edge.env").write_bytes((FIRMWARE / "edge.env.example").read_bytes())
    (etc / "edge.env").chmod(0o600)
    (etc / "edge.toml").write_bytes((FIRMWARE / "edge.toml").read_bytes())
    return etc


def test_install_edge_takes_a_staff_pin(tmp_path):
    help_ = subprocess.run([str(INSTALL_EDGE), "--help"], capture_output=True, text=True, timeout=30)
    assert "--staff-pin" in help_.stdout
    for bad in ("1234", "24681x", "1" * 33):
        proc = subprocess.run([str(INSTALL_EDGE), "--dry-run", "--staff-pin", bad], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2 and "--staff-pin" in proc.stderr and bad not in proc.stderr


def test_the_pin_and_the_lan_host_go_into_edge_env_together(tmp_path, etc, monkeypatch):
    functions = ("log", "set_staff_pin")
    proc = run_functions(tmp_path, functions, f'set_staff_pin "$ETC/edge.env" {PIN}')
    assert proc.returncode == 0, proc.stderr
    assert PIN not in proc.stdout + proc.stderr   # never on screen
    env = _environment_file(etc / "edge.env")
    assert env["DANGOL_DISPLAY__STAFF_PIN"] == PIN and env["DANGOL_DISPLAY__HOST"] == "0.0.0.0"
    assert oct((etc / "edge.env").stat().st_mode & 0o777) == "0o600"
    # again with another PIN: replaced, not added
    assert run_functions(tmp_path, functions, 'set_staff_pin "$ETC/edge.env" 97531864').returncode == 0
    lines = (etc / "edge.env").read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("DANGOL_DISPLAY__")] == ["DANGOL_DISPLAY__STAFF_PIN=97531864",
                                                                        "DANGOL_DISPLAY__HOST=0.0.0.0"]
    # what the daemon makes of it: a valid config, the staff page on the shop's network behind the PIN
    from dangol_edge.config import load_config

    for k in [k for k in os.environ if k.startswith("DANGOL_") and k != "DANGOL_GALLERY_KEY"]:
        monkeypatch.delenv(k)
    for k, v in _environment_file(etc / "edge.env").items():
        monkeypatch.setenv(k, v)
    cfg = load_config(etc / "edge.toml", home=tmp_path / "home")
    assert cfg.display.host == "0.0.0.0" and cfg.display.staff_pin == "97531864"


def test_install_edge_prints_the_staff_pages_lan_address(tmp_path, etc):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "hostname").write_text("#!/bin/sh\necho '192.168.1.23 172.17.0.1 fd00::23'\n")
    (fake / "hostname").chmod(0o755)
    functions = ("log", "display_setting", "staff_urls")
    local = run_functions(tmp_path, functions, 'staff_urls "$ETC/edge.env" "$ETC/edge.toml"', path_dir=fake)
    assert local.returncode == 0, local.stderr
    assert "http://127.0.0.1:8080/staff" in local.stdout and "--staff-pin" in local.stdout
    assert "192.168.1.23" not in local.stdout   # not reachable from there: not offered
    with (etc / "edge.env").open("a") as f:
        f.write(f"DANGOL_DISPLAY__STAFF_PIN={PIN}\nDANGOL_DISPLAY__HOST=0.0.0.0\nDANGOL_DISPLAY__PORT=8090\n")
    lan = run_functions(tmp_path, functions, 'staff_urls "$ETC/edge.env" "$ETC/edge.toml"', path_dir=fake)
    assert lan.returncode == 0, lan.stderr
    assert "http://192.168.1.23:8090/staff" in lan.stdout and PIN not in lan.stdout


def test_a_dry_run_with_a_staff_pin_says_what_it_would_do(tmp_path):
    proc = subprocess.run([str(INSTALL_EDGE), "--dry-run", "--no-apt", "--no-start", "--staff-pin", PIN],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DANGOL_DISPLAY__HOST=0.0.0.0" in proc.stdout and "/staff" in proc.stdout
    assert PIN not in proc.stdout + proc.stderr


def test_the_docs_tell_how_phones_reach_the_staff_page():
    readme = (REPO / "systemd" / "README.md").read_text()
    assert "--staff-pin" in readme and ":8080/staff" in readme
    example = (FIRMWARE / "edge.env.example").read_text()
    assert "--staff-pin" in example and "DANGOL_DISPLAY__HOST=0.0.0.0" in example
    assert "--staff-pin" in (FIRMWARE / "edge.toml").read_text()


@pytest.mark.parametrize("content", ["", "  \n\n \t\n"])
def test_a_blank_consent_text_is_refused_by_name_not_with_a_traceback(tmp_path, monkeypatch, content):
    from dangol_edge import consent_text
    from dangol_edge.consent_text import ConsentTextError, render_consent

    monkeypatch.setattr(consent_text, "CONSENT_DIR", tmp_path)
    (tmp_path / "2026-02.md").write_text(content, encoding="utf-8")
    config = EdgeConfig(home=tmp_path / "home", display={"consent_version": "2026-02"})
    with pytest.raises(ConsentTextError, match=r"2026-02\.md.*empty"):
        render_consent(config)
