"""Soak test of the edge daemon: memory, frames and event delivery over minutes, with the broker restarting.

Run: ``.venv/bin/python bench/soak.py [--minutes 10] [--restart-every 60] [--down 3]``
(quick check: ``--minutes 1 --restart-every 20``). Needs ``mosquitto`` and the built model
(``dangol-models build``; built here if missing, ``DANGOL_MODELS_DIR``/``DANGOL_DATA`` as in the tests).

What runs:

* the daemon in its own process (``Appliance(config).run()``, exactly what ``dangol-edge run --config``
  does, plus one JSON line of its counters on stdout when it exits and the outbox record below), reading
  ``short_hamilton_clip.mp4`` as its camera in real time (30 fps), looping, with Lin-Manuel Miranda
  enrolled by ``dangol-edge enroll --customer-id`` and ``tracker.cooldown_s = 0``: every loop of the
  clip yields an arrival for him plus unknown-face events for the others;
* a real Mosquitto with persistence on (``autosave_interval 1``, store in a temp folder), stopped with
  SIGTERM and started again on the same port every ``--restart-every`` seconds, down ``--down`` seconds;
* a subscriber standing in for the cloud: fixed client id, persistent session (``clean_session=False``),
  QoS 1, subscribing again in ``on_connect``, collecting ``dangol/v1/devices/+/events`` (and status).

Every ``--sample`` seconds (5) it reads the daemon's resident memory (``VmRSS`` in ``/proc/<pid>/status``,
and its anonymous part ``RssAnon``, where a leak would show).

Memory and the development venv: MediaPipe imports TensorFlow when it is importable
(``mediapipe/tasks/python/core/optional_dependencies.py``), and TensorFlow brings JAX. The development
``.venv`` has both (the ``build`` extra), a Raspberry Pi installed by ``scripts/install-edge`` (``[edge]``
only) has neither: the same daemon is ~810 MiB RSS here and ~280 MiB without them. ``--edge-packages-only``
makes both unimportable in the daemon's process, as on the Pi (the daemon's code is unchanged).

At the end it stops the daemon with SIGTERM (broker up), then, if the outbox still holds unacknowledged
events (PUBACKs in flight at shutdown), starts the daemon once more on a face-less image so that its
outbox drains the way it would after a reboot, and prints:

* events produced vs delivered (unique ``event_id`` values the subscriber received), the ones missing,
  duplicates received (allowed: the cloud deduplicates on ``event_id``), and how many waited in the outbox
  more than 1 s (produced while the broker was down). The edge deletes an outbox row on its PUBACK, so the
  daemon process records (:func:`record_outbox`; the daemon unchanged) each event id its outbox takes and
  each acknowledgement, with the time, in ``outbox.record``: produced = the ids taken; waited = acknowledged
  more than 1 s after being taken (what the rows' ``sent_at - created_at`` measured before);
* RSS in MiB at minute 1, at the end, the peak, and a verdict: *flat* when the median of the last third of
  the samples after warm-up (the first minute, or the first third of a shorter run) is within 10 % of the
  median of the first third;
* frames captured / dropped / processed, arrivals and unknown faces (the daemon's own counters, printed by
  the daemon process at exit), the last health the daemon published on its status topic (camera, fps,
  gallery size, queue depth, and frame counters when the daemon reports them);
* broker restarts done.

Exit status 0 when every produced event was delivered (produced == delivered), else 1
(report: ``bench/soak_report.py``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from soak_report import SoakRun, print_report, read_record

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EVENTS = "dangol/v1/devices/+/events"
STATUS = "dangol/v1/devices/+/status"


# --- the daemon process ------------------------------------------------------------------------------------
class _EdgePackagesOnly:
    """An import hook that makes TensorFlow and JAX unimportable (they are not on an installed Pi)."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "jax", "jaxlib"):
            raise ModuleNotFoundError(f"No module named {name!r} (bench/soak.py --edge-packages-only)", name=name)
        return None


def record_outbox(path: Path) -> None:
    """Make this process append ``q <event_id> <unix time>`` to ``path`` for every event its outbox takes
    (:meth:`~dangol_edge.state_outbox.OutboxTable.enqueue` returned True) and ``a <event_id> <unix time>`` for
    every broker acknowledgement (``mark_sent``), by wrapping those two methods of
    :class:`~dangol_edge.state.StateStore` (what they do is unchanged); read by ``soak_report.read_record``.
    Erasure confirmations (queued by ``erase_customers``) are not seen: the soak erases no one."""
    from dangol_edge.state import StateStore

    lock = threading.Lock()
    enqueue, mark_sent = StateStore.enqueue, StateStore.mark_sent

    def note(kind: str, event_id) -> None:
        with lock, open(path, "a", encoding="utf-8") as f:
            f.write(f"{kind} {event_id} {time.time():.6f}\n")

    def recording_enqueue(self, event_id, topic, payload):
        taken = enqueue(self, event_id, topic, payload)
        if taken:
            note("q", event_id)
        return taken

    def recording_mark_sent(self, event_id):
        mark_sent(self, event_id)
        note("a", event_id)

    StateStore.enqueue, StateStore.mark_sent = recording_enqueue, recording_mark_sent


def daemon_main(config: str, source: str | None, edge_only: bool = False, record: str | None = None) -> int:
    """The daemon as ``dangol-edge run --config CONFIG`` runs it; prints its counters as JSON on exit. With
    ``record``, the events its outbox takes and their acknowledgements go to that file (:func:`record_outbox`)."""
    import logging

    if edge_only:
        sys.meta_path.insert(0, _EdgePackagesOnly())
    if record:
        record_outbox(Path(record))

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dangol_edge.config import load_config
    from dangol_edge.daemon import Appliance

    app = Appliance(load_config(config), source=source)
    rc = app.run()
    s = app.stats
    print(json.dumps({"frames_captured": s.frames_captured, "frames_dropped": s.frames_dropped,
                      "frames_processed": s.frames_processed, "arrivals": s.arrivals, "unknown": s.unknown}),
          flush=True)
    return rc


# --- helpers -----------------------------------------------------------------------------------------------
def rss_kib(pid: int) -> tuple[int, int] | None:
    """(``VmRSS``, ``RssAnon``) of a process in KiB, None once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith(("VmRSS:", "RssAnon:")))
        return int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0])
    except (OSError, ValueError, KeyError):
        return None


class Subscriber:
    """The cloud's stand-in: persistent session, QoS 1, resubscribes on every connect."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        self.event_ids: list[str] = []
        self.health: list[dict] = []
        self.connects = 0
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dangol-soak-cloud", clean_session=False,
                             protocol=mqtt.MQTTv311)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(1, 2)
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            self.connects += 1
            client.subscribe([(EVENTS, 1), (STATUS, 1)])

    def _on_message(self, client, userdata, msg):
        try:
            obj = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            if msg.topic.endswith("/events"):
                self.event_ids.append(obj["event_id"])
            elif obj.get("health"):
                self.health.append(obj["health"])

    def ids(self) -> list[str]:
        with self.lock:
            return list(self.event_ids)

    def publish(self, topic: str, payload: dict) -> None:
        self.c.publish(topic, json.dumps(payload).encode(), qos=1, retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def outbox_pending(state: Path) -> int:
    """Events in the edge's outbox not acknowledged yet (rows of its ``outbox`` table), read-only; 0 before the
    file or the table exists."""
    if not state.exists():
        return 0
    con = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        con.close()


def wait_for(pred, timeout: float, step: float = 0.25) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


# --- the soak ----------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the daemon runs (default 10)")
    ap.add_argument("--restart-every", type=float, default=60.0, help="broker restart period, seconds (default 60)")
    ap.add_argument("--down", type=float, default=3.0, help="seconds the broker stays down each time (default 3)")
    ap.add_argument("--sample", type=float, default=5.0, help="RSS sampling period, seconds (default 5)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (logs, state.sqlite, broker store)")
    ap.add_argument("--edge-packages-only", action="store_true",
                    help="make TensorFlow/JAX unimportable in the daemon, as on a Pi (see the memory note above)")
    ap.add_argument("--daemon", metavar="CONFIG", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--record", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.daemon:
        return daemon_main(args.daemon, args.source, args.edge_packages_only, args.record)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "2")
    data = Path(os.environ.get("DANGOL_DATA") or REPO.parent / "shared" / "data")
    models = Path(os.environ.get("DANGOL_MODELS_DIR") or REPO / ".cache" / "models")
    sys.path.insert(0, str(REPO))
    from dangol_cloud.local_broker import MosquittoBroker, free_port
    from dangol_models.build import build

    build(models, data / "faces")
    model = models / "facenet-int8.tflite"
    clips = data / "clips" / "face_recognition_examples"

    tmp = Path(tempfile.mkdtemp(prefix="dangol-soak-"))
    home = tmp / "home"
    state_path = home / "state.sqlite"
    store, device, lin = uuid.uuid4(), uuid.uuid4(), str(uuid.uuid4())
    port = free_port()
    conf = tmp / "edge.toml"
    conf.write_text(f"""home = "{home}"
[embedder]
model_path = "{model}"
[device]
id = "{device}"
store_id = "{store}"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
reconnect_min_s = 1
reconnect_max_s = 2
status_interval_s = 5
[camera]
source = "{clips / 'short_hamilton_clip.mp4'}"
loop = true
realtime = true
[tracker]
cooldown_s = 0
[display]
port = {free_port()}
welcome_s = 2
[gpio]
enabled = false
""")
    # the daemon's environment: no stray DANGOL_* settings from the caller; a throw-away gallery key
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANGOL_")}
    env["DANGOL_GALLERY_KEY"] = os.environ.get("DANGOL_GALLERY_KEY") or base64.b64encode(secrets.token_bytes(32)).decode()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    enrol = subprocess.run([str(BIN / "dangol-edge"), "--config", str(conf), "enroll", "--name", "Lin-Manuel Miranda",
                            "--image", str(clips / "lin-manuel-miranda.png"), "--customer-id", lin],
                           env=env, capture_output=True, text=True, timeout=300)
    if enrol.returncode != 0:
        print(f"enrolment failed ({enrol.returncode}):\n{enrol.stderr}", file=sys.stderr)
        return 1

    # the store in tmp/broker/mosquitto.db, saved on SIGTERM and every second; always on the same port
    broker = MosquittoBroker(tmp / "broker", persistence=True,
                             log_types=("error", "warning", "notice", "information"))
    broker.start(timeout=15.0, port=port)
    cloud = Subscriber(port)
    if not cloud.subscribed.wait(10):
        print("the subscriber did not subscribe", file=sys.stderr)
        return 1
    now = datetime.now(timezone.utc).isoformat()
    cloud.publish(f"dangol/v1/stores/{store}/catalogue", {
        "schema": "catalogue/1", "store_id": str(store), "version": 1, "published_at": now, "currency": "KRW",
        "items": [{"id": f"i{i}", "name": f"Item {i}", "price": 4000 + 100 * i} for i in range(12)]})
    cloud.publish(f"dangol/v1/stores/{store}/menus/{lin}", {
        "schema": "menu/1", "store_id": str(store), "customer_id": lin, "model_version": "soak", "generated_at": now,
        "items": [{"item_id": f"i{i}", "score": 1.0 - i / 20} for i in (3, 1, 4, 7, 5, 9)]})

    duration = args.minutes * 60
    log_path, record = tmp / "daemon.log", tmp / "outbox.record"
    print(f"soak: {args.minutes:g} min, broker restart every {args.restart_every:g} s (down {args.down:g} s), "
          f"RSS every {args.sample:g} s{', TensorFlow/JAX hidden' if args.edge_packages_only else ''}; "
          f"work folder {tmp}", flush=True)

    def spawn(extra: list[str], env_extra: dict | None = None) -> subprocess.Popen:
        if args.edge_packages_only:
            extra = [*extra, "--edge-packages-only"]
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--daemon", str(conf),
                                 "--record", str(record), *extra],
                                env={**env, **(env_extra or {})}, stdout=subprocess.PIPE,
                                stderr=open(log_path, "a"), text=True)

    daemon = spawn([])
    t0 = time.monotonic()
    run = SoakRun(duration=duration, ran=0.0, sample_s=args.sample, down_s=args.down, log_path=log_path)
    next_sample, next_restart, next_report, down_until = 0.0, args.restart_every, 60.0, None
    try:
        while (el := time.monotonic() - t0) < duration:
            if daemon.poll() is not None:
                run.crashed = daemon.returncode
                break
            if el >= next_sample:
                kib = rss_kib(daemon.pid)
                if kib:
                    run.samples.append((el, *kib))
                next_sample += args.sample
            if down_until is None and el >= next_restart and el + args.down < duration:
                broker.stop(timeout=15.0)
                down_until = el + args.down
            elif down_until is not None and el >= down_until:
                broker.start(timeout=15.0, port=port)
                run.restarts += 1
                down_until = None
                next_restart += args.restart_every
            if el >= next_report:
                print(f"  t={el / 60:4.1f} min  RSS {run.samples[-1][1] / 1024:6.1f} MiB  "
                      f"produced {len(read_record(record)[0]):5d}  outbox pending {outbox_pending(state_path):3d}  "
                      f"delivered {len(set(cloud.ids())):5d}  broker restarts {run.restarts}", flush=True)
                next_report += 60.0
            time.sleep(0.1)
        if not broker.running:
            broker.start(timeout=15.0, port=port)
            run.restarts += 1
        if run.crashed is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            out, _ = daemon.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            out, _ = daemon.communicate()
            print("the daemon did not stop within 60 s of SIGTERM: killed", flush=True)
        run.stop_rc = daemon.returncode
        for line in (out or "").splitlines():
            if line.startswith("{"):
                run.counters = json.loads(line)
        run.pending_at_stop = outbox_pending(state_path)

        # events whose PUBACK was in flight at shutdown wait in the outbox: the next start sends them
        if run.pending_at_stop:
            import cv2
            import numpy as np

            blank = tmp / "blank"
            blank.mkdir(exist_ok=True)
            cv2.imwrite(str(blank / "grey.png"), np.full((480, 640, 3), 128, np.uint8))
            again = spawn(["--source", str(blank)], {"DANGOL_CAMERA__LOOP": "false"})
            wait_for(lambda: outbox_pending(state_path) == 0, 120)
            again.send_signal(signal.SIGTERM)
            try:
                again.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                again.kill()
                again.communicate()
            run.drained_by_restart = True
        run.pending = outbox_pending(state_path)
        run.queued, run.acked = read_record(record)
        wait_for(lambda: set(run.queued) <= set(cloud.ids()), 60)
        run.received = cloud.ids()
        run.health = list(cloud.health)
    finally:
        cloud.close()
        broker.stop(timeout=15.0)

    run.ran = time.monotonic() - t0
    ok = print_report(run)
    if args.keep:
        print(f"  kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
