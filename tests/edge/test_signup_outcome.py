"""Why the last sign-up at the door did not work, as the staff page tells it (headless Chromium on the daemon's
staff page; real frames as the camera: a grey wall, LFW photos of many people in turns, one person's photos; the
GPIO button through gpiozero's MockFactory).

The door screen shows a failure for 5 seconds only; the staff page keeps saying what happened, how long ago and
what to do, until the next sign-up starts or :data:`dangol_edge.web.staff.SIGNUP_OUTCOME_S` passes.
"""

from __future__ import annotations

import re
import time

import cv2
import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from dangol_edge.config import signup_frames_needed
from dangol_edge.daemon import Appliance
from dangol_edge.web import staff
from tests.edge.test_button_enrol import press
from tests.edge.test_daemon import config, home  # noqa: F401  (fixture)
from tests.edge.test_sync import wait_for
from tests.edge.conftest import live_door_page, start_signup_on_staff_page


def staff_card(page, app) -> str:
    """The sign-up card's text on a fresh load of the staff page."""
    page.goto(app.web.url.rstrip("/") + "/staff")
    return page.inner_text("#signup")


def start(cfg) -> Appliance:
    app = Appliance(cfg)
    app.start()
    return app


@pytest.fixture(scope="module")
def strangers(data_dir, pipeline) -> list:
    """The first photo of 24 different LFW people, each with one good face (every quality gate passed)."""
    out = []
    for person in sorted((data_dir / "faces" / "lfw-deepfunneled").iterdir()):
        photo = sorted(person.glob("*.jpg"))[0]
        rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
        faces = pipeline.process(rgb, max_faces=1)
        if faces and faces[0].embedding is not None:
            out.append(photo)
        if len(out) == 24:
            return out
    raise AssertionError("fewer than 24 LFW people with a good face")


def folder(tmp_path, name: str, photos) -> str:
    """A camera folder: the photos as ``000.jpg`` … (symlinks, shown in this order)."""
    d = tmp_path / name
    d.mkdir()
    for i, p in enumerate(photos):
        (d / f"{i:03d}.jpg").symlink_to(p)
    return str(d)


def test_no_face_is_told_until_the_next_sign_up_starts(tmp_path, home, model_path, clips, browser,  # noqa: F811
                                                        monkeypatch):
    wall = tmp_path / "wall"
    wall.mkdir()
    for i in range(10):
        cv2.imwrite(str(wall / f"wall{i:02d}.png"), np.full((360, 640, 3), 90, np.uint8))
    app = start(config(home, model_path, clips, camera={"source": str(wall), "loop": True, "realtime": True},
                       enrol={"max_frames": signup_frames_needed(5)}))  # the fewest a sign-up may be given
    try:
        page = browser.new_page()
        page.set_default_timeout(10_000)
        assert "did not work" not in staff_card(page, app)
        page.click("#signup-start")
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "failed", timeout=20)
        assert app.screen.snapshot()["why"] == "none"
        card = staff_card(page, app)
        assert "The last sign-up did not work just now: the camera did not get a clear look at a face" in card
        assert "start again" in card and "more than one face" not in card
        # a new sign-up: the old reason goes at once (the page after the click), and while it captures
        page.click("#signup-start")
        page.wait_for_load_state()
        assert "Sign-up started" in page.inner_text(".flash")
        assert "did not work" not in page.inner_text("#signup")
        # it fails again (the door may still show the first failure for a moment: wait for the new ending), and
        # after SIGNUP_OUTCOME_S the staff page no longer tells it
        assert wait_for(lambda: app.screen.last_signup() is not None, timeout=20)
        assert "did not get a clear look" in staff_card(page, app)
        monkeypatch.setattr(staff, "SIGNUP_OUTCOME_S", 1.0)
        time.sleep(1.2)
        card = staff_card(page, app)
        assert "did not work" not in card and "Start a sign-up" in card
        page.close()
    finally:
        app.stop()


def test_several_people_at_a_button_sign_up_are_told_on_the_staff_page(tmp_path, home, model_path, clips,  # noqa: F811
                                                                        browser, strangers):
    """A different person in every frame (24 in turns): the good faces never agree."""
    factory = MockFactory()
    app = Appliance(config(home, model_path, clips,
                           camera={"source": folder(tmp_path, "crowd", strangers), "loop": True, "realtime": True},
                           enrol={"max_frames": 30}, gpio={"enabled": True, "button_pin": 17, "led_pin": 27}),
                    pin_factory=factory)
    app.start()
    try:
        press(factory, 17)
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "capturing", timeout=5)
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "failed", timeout=30)
        assert app.screen.snapshot()["why"] == "several"
        page = browser.new_page()
        page.set_default_timeout(10_000)
        card = staff_card(page, app)
        assert "The last sign-up did not work just now: the camera saw more than one face" in card
        assert "Ask the customer to stand alone in front of the camera" in card
        assert "clear look" not in card
        page.close()
    finally:
        app.stop()


def test_too_few_good_snapshots_are_counted_on_the_door_and_the_staff_page(tmp_path, home, model_path, clips,  # noqa: F811
                                                                           browser, data_dir):
    """One person, but the sign-up ends (``enrol.max_frames`` at its smallest, 29) before the pool of 15 good snapshots
    is full: three frames of an empty doorway after each of the person's photos, so at most a quarter of the frames
    hold a good face. (A smaller ``enrol.max_frames`` is refused by the config: no sign-up could succeed.)"""
    people = [line.split("\t") for line in (data_dir / "faces" / "people.txt").read_text().splitlines()[1:]]
    most = max(people, key=lambda r: int(r[1]))[0]
    photos = sorted((data_dir / "faces" / "lfw-deepfunneled" / most).glob("*.jpg"))[:20]
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((250, 250, 3), 90, np.uint8))
    frames = [f for p in photos for f in (p, wall, wall, wall)]
    app = start(config(home, model_path, clips,
                       camera={"source": folder(tmp_path, "one", frames), "loop": True, "realtime": True},
                       enrol={"max_frames": signup_frames_needed(5)}))
    try:
        door = live_door_page(browser, app)
        page = start_signup_on_staff_page(browser, app)
        door.wait_for_function("document.body.innerText.includes(\"We didn't get enough good snapshots\")")
        snap = app.screen.snapshot()
        assert snap["stage"] == "failed" and snap["why"] == "few" and snap["wanted"] == 15
        assert 1 <= snap["samples"] < 15
        assert f"We got {snap['samples']} of 15 in time" in door.inner_text("#stage")
        assert "clear look" not in door.inner_text("#stage")
        card = staff_card(page, app)
        assert re.search(r"The last sign-up did not work just now: the camera got only (\d+) of the 15 good "
                         r"snapshots it needs", card), card
        assert f"only {snap['samples']} of the 15" in card
        door.close()
        page.close()
    finally:
        app.stop()


def test_a_sign_up_not_saved_on_a_full_disk_is_told_on_the_staff_page(tmp_path, home, model_path, clips,  # noqa: F811
                                                                     browser, data_dir):
    """One person's photos give a full pool, but the gallery cannot be written: the card says so and what to do.
    (A new face: Lin-Manuel Miranda, enrolled, signing up again from the Hamilton clip would make no record at all.)"""
    from tests.edge.test_daemon_faults import fill_the_disk

    photos = sorted((data_dir / "faces" / "lfw-deepfunneled" / "George_W_Bush").glob("*.jpg"))[:200]
    app = start(config(home, model_path, clips,
                       camera={"source": folder(tmp_path, "one", photos), "loop": True, "realtime": True}))
    try:
        fill_the_disk(app, gallery=True)
        page = start_signup_on_staff_page(browser, app)
        assert wait_for(lambda: app.screen.snapshot().get("stage") == "not-saved", timeout=90)
        card = staff_card(page, app)
        assert ("The last sign-up could not be saved just now: this device cannot write its storage, so nothing of "
                "it was kept.") in card
        assert "storage is full" in page.inner_text("#storage-problem")
        page.close()
    finally:
        app.stop()
