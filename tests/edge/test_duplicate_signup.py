"""A regular who signs up again is not given a second record (two records of one face defeat the door's margin over
the runner-up, and neither is greeted any more): the door screen says they are already a regular (no name: it is
public), the staff page names them, the log says so; a pending sign-up of an active customer's face is not
activated. Real int8 SFace + YuNet on LFW photos and the Hamilton clip, the daemon with a photo folder or the clip as
its camera, headless Chromium on the door and staff pages, the GPIO button through gpiozero's MockFactory."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from dangol_edge.cli import main
from dangol_edge.config import EdgeConfig
from dangol_edge.daemon import Appliance
from dangol_edge.embed import file_sha256
from dangol_edge.enrol import EnrolmentError, sample_from_photo
from dangol_edge.gallery import Gallery
from dangol_edge.screen import Screen
from dangol_edge.state import StateStore
from dangol_edge.web import DisplayServer, create_app
from dangol_protocol import Consent
from tests.edge.test_button_enrol import activate_on_staff_page, press
from tests.edge.test_daemon import LIN, config, home  # noqa: F401  (fixture)
from tests.edge.test_signup_outcome import folder, staff_card
from tests.edge.test_sync import wait_for
from tests.edge.conftest import live_door_page, start_signup_on_staff_page

CONSENT = Consent(recorded_by="test", recorded_at=datetime.now(timezone.utc), text_version="1")


def without_lin(home, model_path) -> None:
    """Erase the ``home`` fixture's Lin-Manuel Miranda: a sign-up from the Hamilton clip is then a new customer
    (with him enrolled it is a regular signing up again, which makes no second record)."""
    with Gallery(home / "gallery.sqlite", file_sha256(model_path)) as g:
        g.delete(LIN)


@pytest.fixture(scope="module")
def lfw(data_dir, pipeline) -> dict[str, list]:
    """LFW people with at least 6 photos (in folder order) → ``[(photo, Sample)]`` of their photos with one good
    face; and ``"_background"``: one good photo each of 60 people with a single photo."""
    root = data_dir / "faces" / "lfw-deepfunneled"
    out: dict[str, list] = {"_background": []}
    for person in sorted(root.iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if not (len(photos) >= 6 or (len(photos) == 1 and len(out["_background"]) < 60)):
            continue
        good = []
        for p in photos[:8]:
            try:
                good.append((p, sample_from_photo(p, pipeline)))
            except EnrolmentError:
                pass
        if len(photos) >= 6 and len(good) >= 6:
            out[person.name] = good
        elif len(photos) == 1 and good:
            out["_background"].append(good[0])
    return out


def people(lfw) -> list[str]:
    return [k for k in lfw if k != "_background"]


def emb(samples) -> np.ndarray:
    return np.stack([s.embedding for _, s in samples])


def test_a_second_sign_up_is_told_apart_from_a_new_customer_on_lfw(tmp_path, model_path, lfw):
    """10 regulars enrolled from 2 photos each among 60 others: a second sign-up of each (4 other photos) is found
    as that regular by the door's rule; 10 people not enrolled are not taken for anyone."""
    from dangol_edge.enrol import DoorRule

    cfg = EdgeConfig(home=tmp_path, embedder={"model_path": model_path})
    g = Gallery(cfg.gallery_path, file_sha256(model_path)).open()
    for i, (_, s) in enumerate(lfw["_background"]):
        g.enroll(f"other {i}", s.embedding[None], consent=CONSENT)
    names = people(lfw)
    assert len(names) >= 20
    regulars, strangers = names[:10], names[10:20]
    ids = {p: g.enroll(p.replace("_", " "), emb(lfw[p][:2]), consent=CONSENT).id for p in regulars}
    rule = DoorRule.from_config(cfg, g.model_sha256)
    for p in regulars:
        found = rule.find(g, emb(lfw[p][2:6]))
        assert found is not None and found.customer_id == ids[p], p
        assert found.votes >= 3 and found.templates == 4
    for p in strangers:
        assert rule.find(g, emb(lfw[p][:4])) is None, p
    g.close()


def test_a_regular_signing_up_again_at_the_door_is_told_so(tmp_path, model_path, clips, lfw, browser, caplog):
    """A regular (enrolled from 2 photos) in front of the door camera (a folder of 200 of their other photos) gets
    a sign-up from the staff page: no pending record; the door says "already one of our regulars" without the name;
    the staff card names them; the door keeps greeting them."""
    caplog.set_level(logging.INFO, logger="dangol_edge")
    person = "George_W_Bush"   # the LFW person with the most photos (530)
    photos = sorted(lfw[person][0][0].parent.glob("*.jpg"))
    home = tmp_path / "home"
    name = person.replace("_", " ")
    with Gallery(home / "gallery.sqlite", file_sha256(model_path)) as g:
        regular = g.enroll(name, emb(lfw[person][:2]), consent=CONSENT)
    first = {p for p, _ in lfw[person][:2]}
    # 200 photos: a looping folder restarts its frame numbers, which a sign-up's capture gap does not expect
    camera = folder(tmp_path, "door", [p for p in photos if p not in first][:200])
    app = Appliance(config(home, model_path, clips, camera={"source": camera, "loop": True, "realtime": True}))
    app.start()
    try:
        assert wait_for(lambda: app.stats.arrivals >= 1, timeout=60), "the door greets the regular"
        door = live_door_page(browser, app)
        page = start_signup_on_staff_page(browser, app)
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "already", timeout=90)
        door.wait_for_function("document.body.innerText.includes(\"You're already one of our regulars\")")
        snap = app.screen.snapshot()
        assert snap["stage"] == "already" and snap["code"] is None
        assert regular.id not in json.dumps(snap) and "Bush" not in door.inner_text("body")   # the door is public
        assert app.gallery.customers(status="pending") == []
        assert [c.id for c in app.gallery.customers()] == [regular.id]   # no second record
        card = staff_card(page, app)
        assert f"already a regular: {name}" in card and "No second record was made" in card
        assert any("already a regular" in r.getMessage() and regular.id in r.getMessage() for r in caplog.records)
        events = [json.loads(e["payload"]) for e in app.state.pending(1000)]
        assert [e for e in events if e["kind"] == "enrolment"] == []   # nothing new for the cloud
        assert app.gallery.customer(regular.id).templates == 2         # their record as it was
        from dangol_edge.enrol import DoorRule

        probe = lfw[person][-1][1].embedding
        rule = DoorRule.from_config(app.config, app.gallery.model_sha256)
        m = app.gallery.match(probe, rule.rule.threshold(app.gallery.size), rule.margin)[0]
        assert m.customer_id == regular.id and m.accepted   # still greeted: one record, nothing to split the margin
        door.close()
        page.close()
    finally:
        app.stop()


def test_lin_pressing_the_button_again_gets_no_second_record(home, model_path, clips, pipeline):  # noqa: F811
    """The ``home`` fixture's Lin-Manuel Miranda (enrolled from one photo) signs up with the GPIO button on the
    Hamilton clip: no pending customer, the LED goes off, and his record is left as it was: a sign-up never writes
    into another customer's record (a newcomer the door falsely matched would be stored as that regular's face and
    greeted as them for good)."""
    factory = MockFactory()
    cfg = config(home, model_path, clips, camera={"realtime": True},
                 gpio={"enabled": True, "button_pin": 17, "led_pin": 27})
    app = Appliance(cfg, pin_factory=factory)
    app.start()
    try:
        assert app.gallery.customer(LIN).templates == 1
        press(factory, 17)
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "capturing", timeout=5)
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "already", timeout=90)
        assert app.screen.last_signup()["regular"] == LIN
        assert [c.id for c in app.gallery.customers()] == [LIN]
        assert app.gallery.customer(LIN).templates == 1                  # before: up to enrol.templates
        assert wait_for(lambda: not app.button.led.is_lit, timeout=5)
    finally:
        app.stop()


@pytest.fixture
def staff_site(tmp_path, model_path):
    """The staff page (no PIN, loopback) over a real-model gallery with the model's calibration; ``(site, calls)``."""
    cfg = EdgeConfig(home=tmp_path / "home", embedder={"model_path": model_path})
    state = StateStore(cfg.state_path).open()
    gallery = Gallery(cfg.gallery_path, file_sha256(model_path)).open()
    calls = []
    server = DisplayServer(create_app(screen=Screen(), state=state, gallery=gallery, config=cfg,
                                      on_activate=calls.append), "127.0.0.1", 0)
    server.start()
    yield {"url": server.url, "gallery": gallery}, calls
    server.stop()
    gallery.close()
    state.close()


def test_staff_cannot_activate_a_second_sign_up_of_an_active_customer(staff_site, browser, lfw):
    """Two pending sign-ups of one person (made before either was activated) and one of somebody else: the first
    and the other person are activated; the second of the same face is refused, naming the regular, unchanged."""
    site, calls = staff_site
    g = site["gallery"]
    a, b = people(lfw)[0], people(lfw)[1]
    first = g.enroll("", emb(lfw[a][:3]), status="pending", pending_ttl_s=3600)
    again = g.enroll("", emb(lfw[a][3:6]), status="pending", pending_ttl_s=3600)
    other = g.enroll("", emb(lfw[b][:3]), status="pending", pending_ttl_s=3600)
    page = browser.new_page()
    page.set_default_timeout(10_000)
    name = a.replace("_", " ")
    activate_on_staff_page(page, site["url"], first.id, name, "Jisoo")
    assert f"{name} is now a regular" in page.inner_text(".flash")
    activate_on_staff_page(page, site["url"], again.id, "Someone Else", "Jisoo")
    assert f"already a regular: {name}" in page.inner_text("#error")
    assert "Nothing was changed" in page.inner_text("#error")
    assert f"Already a regular: {name}" in page.inner_text(f"#pending-{again.id}")
    still = g.customer(again.id)
    assert still.status == "pending" and still.consent is None and still.short_code == again.short_code
    assert still.templates == 3 and still.display_name == ""
    activate_on_staff_page(page, site["url"], other.id, b.replace("_", " "), "Jisoo")
    assert f"{b.replace('_', ' ')} is now a regular" in page.inner_text(".flash")
    assert [c.id for c in calls] == [first.id, other.id]   # the cloud hears of the two activations only
    page.close()


def test_the_cli_refuses_to_enrol_a_regular_twice(edge_env, capsys, clips):
    from tests.edge.test_cli import gallery_rows, run

    code, out, _ = run(capsys, "enroll", "--name", "Barack Obama", "--image", str(clips / "obama.jpg"))
    assert code == 0
    obama = out[0]["enrolled"]["id"]
    code, out, err = run(capsys, "enroll", "--name", "Barry", "--image", str(clips / "obama2.jpg"))
    assert code == 2 and out == []
    assert "obama2.jpg: already enrolled as 'Barack Obama'" in err and obama in err and "nothing saved" in err
    assert gallery_rows(edge_env) == (1, 1)
    assert main(["enroll", "--name", "Lin-Manuel Miranda", "--image", str(clips / "lin-manuel-miranda.png")]) == 0
    assert gallery_rows(edge_env) == (2, 2)
