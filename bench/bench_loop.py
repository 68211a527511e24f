"""Door-to-screen latency: from the first camera frame of a known face to the menu page showing their menu.

Run: ``.venv/bin/python bench/bench_loop.py [--loops 6]`` (after ``scripts/setup``; builds the model if
missing). The daemon reads ``short_hamilton_clip.mp4`` in real time (30 fps, looping) as its camera,
with Lin-Manuel Miranda enrolled from one photo and a cached catalogue and menu; a headless Chromium
shows the display page. Every loop of the clip is a new visit (cool-down 0). For each arrival it
prints and summarises:

* ``decide``: first frame of the track → identity decided (tracking + ≥3 votes), ms;
* ``show``: decision → the page's DOM shows "Welcome back" (server-sent event + render), ms;
* ``total``: first frame → page, ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "2")
if not os.environ.get("DANGOL_GALLERY_KEY"):  # throw-away galleries: a throw-away key
    import base64
    import secrets

    os.environ["DANGOL_GALLERY_KEY"] = base64.b64encode(secrets.token_bytes(32)).decode()

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", type=int, default=6, help="arrivals to measure (one per loop of the clip)")
    args = ap.parse_args()
    data = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    models = Path(os.environ.get("DANGOL_MODELS_DIR") or REPO / ".cache" / "models")
    from dangol_models.build import build

    build(models, data / "faces")
    model = models / "facenet-int8.tflite"
    clips = data / "clips" / "face_recognition_examples"

    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    from dangol_edge.config import EdgeConfig
    from dangol_edge.daemon import Appliance
    from dangol_edge.detect import FaceDetector
    from dangol_edge.embed import Embedder
    from dangol_edge.enrol import sample_from_photo
    from dangol_edge.faces import FacePipeline
    from dangol_edge.gallery import Gallery
    from dangol_edge.state import StateStore
    from tests.broker import free_port

    store, lin = uuid.uuid4(), str(uuid.uuid4())
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        emb = Embedder(model)
        pipe = FacePipeline(FaceDetector.beside(model), emb)
        with Gallery(home / "gallery.sqlite", emb.sha256) as g:
            g.enroll("Lin-Manuel Miranda", sample_from_photo(clips / "lin-manuel-miranda.png", pipe).embedding[None],
                     customer_id=lin)
        pipe.close()
        st = StateStore(home / "state.sqlite").open()
        st.put_catalogue({"schema": "catalogue/1", "store_id": str(store), "version": 1, "currency": "KRW",
                          "published_at": datetime.now(timezone.utc).isoformat(),
                          "items": [{"id": f"i{i}", "name": f"Item {i}", "price": 4000 + 100 * i} for i in range(12)]})
        st.put_menu({"schema": "menu/1", "store_id": str(store), "customer_id": lin, "model_version": "b",
                     "generated_at": datetime.now(timezone.utc).isoformat(),
                     "items": [{"item_id": f"i{i}", "score": 1.0} for i in (3, 1, 4, 7, 5, 9)]})
        st.close()
        cfg = EdgeConfig(home=home, embedder={"model_path": model}, device={"store_id": store},
                         camera={"source": str(clips / "short_hamilton_clip.mp4"), "realtime": True, "loop": True},
                         tracker={"cooldown_s": 0}, display={"port": free_port(), "welcome_s": 2},
                         gpio={"enabled": False})
        app = Appliance(cfg)
        app.start()
        wall = time.time() - time.monotonic()  # monotonic → epoch seconds
        try:
            with sync_playwright() as p:
                browser = launch(p)
                page = browser.new_page(viewport={"width": 1920, "height": 1080})
                # record (epoch ms) every time the page switches to a welcome screen
                page.add_init_script("""
                    window.__shown = []; let was = false;
                    new MutationObserver(() => {
                      const now = document.body && document.body.innerText.includes('Welcome back');
                      if (now && !was) window.__shown.push(Date.now());
                      was = now;
                    }).observe(document, {subtree: true, childList: true, characterData: true});
                """)
                page.goto(app.web.url)
                deadline = time.monotonic() + 60 + 12 * args.loops
                while time.monotonic() < deadline and len(page.evaluate("window.__shown")) < args.loops + 1:
                    time.sleep(0.5)
                shown = [t / 1000.0 - wall for t in page.evaluate("window.__shown")]
                browser.close()
        finally:
            app.stop()
        # pair each switch of the page with the latest decision before it
        pairs = []
        for s_t in shown:
            before = [(f, d) for f, d in app.stats.arrival_times if d <= s_t]
            if before:
                pairs.append((*before[-1], s_t))
        decide = [(d - f) * 1000 for f, d, _ in pairs]
        show = [(s_t - d) * 1000 for f, d, s_t in pairs]
        total = [(s_t - f) * 1000 for f, d, s_t in pairs]
        print(f"Door to screen on {clips.name}/short_hamilton_clip.mp4 (real time, {len(total)} page switches, "
              f"frames dropped {app.stats.frames_dropped} of {app.stats.frames_captured}, "
              f"{app.stats.fps:.1f} fps recognised):")
        for name, v in (("first frame → decision", decide), ("decision → page shows menu", show),
                        ("first frame → page shows menu", total)):
            print(f"  {name:<30} p50 {np.percentile(v, 50):7.0f} ms   p95 {np.percentile(v, 95):7.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
