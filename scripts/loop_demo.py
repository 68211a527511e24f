"""The whole Dangol loop on this machine, on real input.

1. A real Mosquitto on a free loopback port, with per-user passwords and an ACL written by
   ``dangol-cloud broker-config`` (the cloud and one device).
2. The cloud imports real purchase history (Complete Journey by default: ``transactions.csv`` with the real
   ``products.csv`` beside it, so each POS product is named by its ``product_category``, e.g. "BAKED
   BREAD/BUNS/ROLLS"), gets a store and a device, and the most regular customer of that history becomes
   "Lin-Manuel Miranda" with a consent record. The owner's mapping step puts one menu item per product on
   the menu, named as the data names it — never an invented name (Ta-Feng, ``--format ta-feng``, has product
   codes only, so its picks show codes).
3. The edge enrols Lin-Manuel Miranda from one photo under that customer's id.
4. ``dangol-cloud train`` trains LightFM and publishes the catalogue and menus (retained, QoS 1);
   ``dangol-cloud listen`` records device events.
5. ``dangol-edge run`` reads ``short_hamilton_clip.mp4`` in real time as its camera; headless Chromium
   shows the display page and saves a screenshot when it welcomes him with his picks.
6. The arrival is checked as a visit in the cloud database.

Run by ``scripts/demo``; ``--purchases``/``--format`` pick another history file (the tests use a slice; for
Complete Journey ``products.csv`` must sit beside it). Prints a JSON summary as its last line (``picks``: the
names the welcome showed); exit 0 when the page showed the menu and the visit was recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def say(msg: str) -> None:
    print(f"\033[1m== {msg}\033[0m", flush=True)


def run(cmd: list, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, check=True, **kw)


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def main() -> int:
    data = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--purchases", type=Path, default=data / "purchases" / "completejourney" / "transactions.csv")
    ap.add_argument("--format", default="completejourney", choices=["ta-feng", "completejourney", "csv"])
    ap.add_argument("--currency", help="ISO 4217 code of the history's amounts (default: USD for Complete "
                                       "Journey, TWD for Ta-Feng, EUR otherwise)")
    ap.add_argument("--work", type=Path, default=REPO / "var" / "loop", help="state folder (recreated)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the welcome")
    args = ap.parse_args()
    clips = data / "clips" / "face_recognition_examples"
    if not clips.is_dir() or not args.purchases.is_file():
        print(f"loop_demo: real data not found ({clips}, {args.purchases}); set DANGOL_DATA", file=sys.stderr)
        return 2
    models = Path(os.environ.get("DANGOL_MODELS_DIR") or REPO / ".cache" / "models")
    model = models / "sface-int8.tflite"
    if not model.is_file():
        print(f"loop_demo: {model} missing: run dangol-models build", file=sys.stderr)
        return 2

    currency = args.currency or {"completejourney": "USD", "ta-feng": "TWD"}.get(args.format, "EUR")
    sys.path.insert(0, str(REPO))
    from dangol_cloud.importers import DATASET_TIMEZONES
    from dangol_cloud.local_broker import MosquittoBroker, free_port

    zone = DATASET_TIMEZONES.get(args.format, "UTC")  # the café's hours: the history's shops' local time
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    (work / "broker").mkdir(parents=True)
    port, display_port = free_port(), free_port()
    cloud_pw, device_pw = uuid.uuid4().hex, uuid.uuid4().hex
    import base64
    import secrets

    # personal data in the cloud database is encrypted at rest; this demo's database is new each run
    data_key = os.environ.get("DANGOL_DATA_KEY") or base64.b64encode(secrets.token_bytes(32)).decode()
    os.environ["DANGOL_DATA_KEY"] = data_key  # this process reads the cloud database too
    env = dict(os.environ, DANGOL_CLOUD_HOME=str(work / "cloud"), DANGOL_DATA=str(data), DANGOL_DATA_KEY=data_key,
               DANGOL_DATABASE_URL=f"sqlite:///{work / 'cloud' / 'dangol.sqlite'}",
               DANGOL_MQTT_URL=f"mqtt://cloud:{cloud_pw}@127.0.0.1:{port}", DANGOL_CURRENCY=currency,
               DANGOL_TIMEZONE=zone, TF_CPP_MIN_LOG_LEVEL="3", GLOG_minloglevel="2")
    procs: list[subprocess.Popen] = []
    broker = None
    summary: dict = {"ok": False}
    try:
        say(f"cloud: import {args.purchases.name} ({args.format})")
        run([BIN / "dangol-cloud", "import-purchases", args.purchases, "--format", args.format], env)

        say("cloud: a store, its device, and the most regular customer (consent recorded)")
        sys.path.insert(0, str(REPO))
        from sqlalchemy import func, select

        from dangol_cloud.db import Database
        from dangol_cloud.models import Customer, CustomerOrigin, Device, Purchase, Store
        from dangol_cloud.security import mosquitto_hash
        from dangol_cloud.models import utcnow

        from dangol_cloud.crypto import decode_key

        db = Database(env["DANGOL_DATABASE_URL"], data_key=decode_key(data_key, "DANGOL_DATA_KEY"))
        with db.transaction() as s:
            store = Store(name="Dangol demo café")
            s.add(store)
            s.flush()
            device = Device(store_id=store.id, name="entrance", mqtt_username="entrance-1",
                            mqtt_password_hash=mosquitto_hash(device_pw))
            s.add(device)
            cid, n = s.execute(select(Purchase.customer_id, func.count()).group_by(Purchase.customer_id)
                               .order_by(func.count().desc()).limit(1)).one()
            c = s.get(Customer, cid)
            c.display_name, c.status = "Lin-Manuel Miranda", "active"
            c.consent_by, c.consent_at, c.consent_text_version = "loop demo", utcnow(), "1"
            s.add(CustomerOrigin(customer_id=cid, store_id=store.id))  # a regular of this café: its device may greet them
            # the owner's mapping step (Products page): imports create POS products, never menu items; here the
            # owner chooses "one menu item per product" for all of them. A product's name is what the data calls
            # it: Complete Journey's product_category (products.csv); Ta-Feng has product codes, no names. Lines
            # sold at no price (Complete Journey's "COUPON/MISC ITEMS") are not something to put on a menu: left off
            from dangol_cloud.menu_mapping import map_products
            from dangol_cloud.models import CatalogueItem, ProductMapping

            priced = s.scalars(select(ProductMapping.product_id)
                               .join(CatalogueItem, CatalogueItem.id == ProductMapping.product_id)
                               .where(CatalogueItem.price > 0)).all()
            mapped = map_products(s, list(priced), "self", by="loop demo")
            s.flush()
            store_id, device_id, ext = store.id, device.id, c.external_ref
        db.dispose()
        summary.update(customer_id=cid, external_ref=ext, purchases=n, store_id=store_id, device_id=device_id,
                       menu_items=mapped)
        print(f"customer {cid} (history id {ext}, {n} purchase lines) plays Lin-Manuel Miranda")

        say("broker: per-user passwords and ACL from dangol-cloud broker-config")
        run([BIN / "dangol-cloud", "broker-config", "--out", work / "broker"], env, stdout=subprocess.DEVNULL)
        auth = work / "broker"
        broker = MosquittoBroker(auth, password_lines=[ln for ln in (auth / "passwd").read_text().splitlines() if ln],
                                 acl=(auth / "acl").read_text(), log_file=auth / "log", log_types=())
        broker.start(port=port)

        say("cloud: train LightFM and publish catalogue + menus (retained)")
        run([BIN / "dangol-cloud", "train"], env)
        procs.append(subprocess.Popen([BIN / "dangol-cloud", "listen"], env=env, stdout=subprocess.DEVNULL))

        say("edge: enrol Lin-Manuel Miranda from one photo under that customer's id")
        from dangol_edge.crypto import new_key

        edge_env = dict(env, DANGOL_HOME=str(work / "edge"), DANGOL_EMBEDDER__MODEL_PATH=str(model),
                        DANGOL_GALLERY_KEY=os.environ.get("DANGOL_GALLERY_KEY") or new_key())
        edge_env.pop("DANGOL_MQTT_URL")
        run([BIN / "dangol-edge", "enroll", "--name", "Lin-Manuel Miranda", "--image", clips / "lin-manuel-miranda.png",
             "--customer-id", cid], edge_env, stdout=subprocess.DEVNULL)
        cfg = work / "edge.toml"
        cfg.write_text(f"""
[device]
id = "{device_id}"
store_id = "{store_id}"
[mqtt]
url = "mqtt://entrance-1:{device_pw}@127.0.0.1:{port}"
status_interval_s = 5
[camera]
source = "{clips / 'short_hamilton_clip.mp4'}"
realtime = true
loop = true          # the entrance camera keeps watching: the clip plays again and again
[display]
port = {display_port}
welcome_s = 60
[gpio]
enabled = false
""")
        run([BIN / "dangol-edge", "check-config", cfg], edge_env, stdout=subprocess.DEVNULL)

        say("edge: dangol-edge run (camera = the Hamilton clip, in real time); Chromium shows the page")
        from playwright.sync_api import sync_playwright

        from tests.browser import launch

        with sync_playwright() as p:
            browser = launch(p)
            edge = subprocess.Popen([BIN / "dangol-edge", "run", "--config", cfg], env=edge_env)
            procs.append(edge)
            wait_port(display_port, 60)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.goto(f"http://127.0.0.1:{display_port}/")
            page.wait_for_function("document.body.innerText.includes('Welcome back')", timeout=args.timeout * 1000)
            page.wait_for_timeout(1200)  # let the entrance animation (staggered cards) finish for the screenshot
            shot = work / "display.png"
            page.screenshot(path=str(shot))
            text = page.inner_text("body")
            summary["picks"] = [t.strip() for t in page.locator("li.pick h2").all_inner_texts()]
            browser.close()
        summary["screenshot"] = str(shot)
        summary["page"] = " | ".join(line.strip() for line in text.splitlines() if line.strip())[:400]
        print(f"page: {summary['page']}\nscreenshot: {shot}")

        say("cloud: the arrival is recorded as a visit")
        from dangol_cloud.models import Visit

        end = time.monotonic() + 30
        visits = 0
        while time.monotonic() < end and not visits:
            with db.sessions() as s:
                visits = s.scalar(select(func.count()).select_from(Visit).where(Visit.customer_id == cid))
            time.sleep(0.5)
        db.dispose()
        summary["visits"] = int(visits or 0)
        summary["ok"] = bool(visits)
        print(f"visits recorded for {cid}: {visits}")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if broker is not None:
            broker.stop()
        print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
