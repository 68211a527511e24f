"""Packaging of the edge appliance: systemd units, opening hours, example configs, install-edge, Mosquitto.

Needs the Debian packages ``systemd`` (``systemd-analyze``), ``mosquitto`` and ``openssl``
(``scripts/setup`` installs them). Nothing here needs a Raspberry Pi, root or a running systemd: the
units are checked with ``systemd-analyze verify`` on copies whose executable paths point at this
checkout's venv; ``scripts/install-edge`` only runs with ``--dry-run``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.broker import free_port
from tests.conftest import REPO

SYSTEMD = REPO / "systemd"
FIRMWARE = REPO / "firmware-config"
INSTALL_EDGE = REPO / "scripts" / "install-edge"
HOURS = SYSTEMD / "dangol-hours"
UNITS = sorted(p.name for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer"))
DANGOL_EDGE = Path(sys.executable).parent / "dangol-edge"
DANGOL_CLOUD = Path(sys.executable).parent / "dangol-cloud"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.path.exists(p)),
                                      None)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package '{package}' (scripts/setup does)", pytrace=False)
    return path


# --- systemd units -------------------------------------------------------------------------------------
def _stage_units(dest: Path) -> Path:
    """Copy the units to ``dest`` with their executables pointing at things that exist on this machine."""
    dest.mkdir(parents=True, exist_ok=True)
    true = shutil.which("true") or "/bin/true"
    rewrites = {
        "/opt/dangol/venv/bin/dangol-edge": str(DANGOL_EDGE),
        "/opt/dangol/bin/dangol-hours": str(HOURS),
        "/usr/bin/cage": true,  # cage is not installed on a CI machine; its arguments are not checked
    }
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        for old, new in rewrites.items():
            text = text.replace(old, new)
        (dest / name).write_text(text)
    return dest


def _verify(paths: list[Path]) -> list[str]:
    """Problems ``systemd-analyze verify`` reports for ``paths``: its exit status and every diagnostic line
    about our units. It exits 0 for unknown directives and unparsable values (they are only logged as
    "ignoring"), so the log lines count as failures too."""
    tool = _tool("systemd-analyze", "systemd")
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    proc = subprocess.run([tool, "verify", "--man=no", *map(str, paths)], capture_output=True, text=True,
                          timeout=60, env=env)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and ("dangol-" in line or any(str(p.parent) in line for p in paths))]
    if proc.returncode != 0:
        problems.insert(0, f"systemd-analyze verify exited {proc.returncode}: {proc.stderr.strip()}")
    return problems


def test_every_unit_passes_systemd_analyze_verify(tmp_path):
    assert {"dangol-edge.service", "dangol-kiosk.service", "dangol-open.service", "dangol-close.service",
            "dangol-open.timer", "dangol-close.timer"} <= set(UNITS)
    assert DANGOL_EDGE.exists(), f"{DANGOL_EDGE} missing: install the project in this venv (scripts/setup)"
    staged = _stage_units(tmp_path / "units")
    assert _verify([staged / name for name in UNITS]) == []


@pytest.mark.parametrize("original, broken", [
    ("WatchdogSec=30", "WatchdogSecs=30"),           # typo'd directive: systemd logs and ignores it
    ("Type=notify", "Type=notfy"),                   # unparsable value: also only a log line
    ("ExecStart=" + str(DANGOL_EDGE), "ExecStart=/nonexistent/dangol-edge"),  # exit status 1
])
def test_verify_rejects_a_broken_unit(tmp_path, original, broken):
    """The check above can fail: each mistake in the daemon unit is reported."""
    staged = _stage_units(tmp_path / "units")
    unit = staged / "dangol-edge.service"
    text = unit.read_text()
    assert original in text
    unit.write_text(text.replace(original, broken, 1))
    problems = _verify([unit])
    assert problems, f"systemd-analyze verify accepted a unit with {broken!r}"


def _directives(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", (SYSTEMD / name).read_text())  # join continuation lines
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_daemon_unit_contract():
    """The contract with the daemon (design.md, issue 4) that verify cannot see."""
    d = _directives("dangol-edge.service")
    assert d["Type"] == ["notify"] and d["WatchdogSec"] == ["30"] and d["Restart"] == ["on-failure"]
    assert "ExecStartPre" not in d  # run checks the config itself: exit 2 stops restarts (not so for ExecStartPre)
    assert d["ExecStart"] == ["/opt/dangol/venv/bin/dangol-edge run --config /etc/dangol/edge.toml"]
    assert d["User"] == ["dangol"] and {"video", "gpio"} <= set(d["SupplementaryGroups"][0].split())
    assert d["StateDirectory"] == ["dangol"] and "DANGOL_HOME=/var/lib/dangol" in d["Environment"]
    assert d["EnvironmentFile"] == ["-/etc/dangol/edge.env"]
    assert d["ProtectSystem"] == ["strict"] and d["NoNewPrivileges"] == ["yes"]
    assert "PrivateDevices" not in d, "PrivateDevices hides the camera from libcamera"
    allowed = " ".join(d["DeviceAllow"])
    for dev in ("char-video4linux", "char-media", "char-dma_heap", "char-gpiochip"):
        assert dev in allowed
    assert d["WorkingDirectory"] == ["/var/lib/dangol"], "lgpio writes its notify pipe to the working directory"
    kiosk = _directives("dangol-kiosk.service")
    assert "dangol-edge.service" in kiosk["After"] and "dangol-edge.service" in kiosk["Wants"]
    assert kiosk["ExecStart"][0].endswith("http://127.0.0.1:8080/")


# --- opening hours -------------------------------------------------------------------------------------
def _hours(command: str, now: str, open_: str = "07:00", close: str = "22:00") -> int:
    env = {**os.environ, "DANGOL_OPEN": open_, "DANGOL_CLOSE": close, "DANGOL_HOURS_NOW": now}
    return subprocess.run([str(HOURS), command], env=env, capture_output=True, timeout=10).returncode


@pytest.mark.parametrize("now, open_, close, is_open", [
    ("06:59", "07:00", "22:00", False), ("07:00", "07:00", "22:00", True), ("12:00", "07:00", "22:00", True),
    ("21:59", "07:00", "22:00", True), ("22:00", "07:00", "22:00", False), ("23:30", "07:00", "22:00", False),
    ("01:00", "18:00", "02:00", True), ("02:00", "18:00", "02:00", False), ("17:59", "18:00", "02:00", False),
    ("03:00", "00:00", "00:00", True),  # OPEN == CLOSE: always open
])
def test_open_and_close_services_decide_by_the_clock(now, open_, close, is_open):
    """dangol-open/close.service run at boot, at the timers and on clock jumps; exactly one of them acts."""
    assert (_hours("is-open", now, open_, close) == 0) is is_open
    assert (_hours("is-closed", now, open_, close) == 0) is not is_open


def test_malformed_hours_fail_the_unit_instead_of_skipping():
    assert _hours("is-open", "12:00", open_="7") == 255  # ExecCondition: 255 = failure, 1..254 = skip
    assert _hours("is-closed", "12:00", close="24:00") == 255


# --- example configuration -----------------------------------------------------------------------------
def _check_config(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANGOL_")}
    env["DANGOL_HOME"] = str(tmp_path / "home")  # what the unit sets
    return subprocess.run([str(DANGOL_EDGE), "check-config", str(path)], capture_output=True, text=True,
                          env=env, timeout=60)


def _set(toml: str, section: str, key: str, value: str) -> str:
    """``toml`` with ``key`` in ``[section]`` (an uncommented line of the example) set to ``value``."""
    pattern = re.compile(rf"(^\[{re.escape(section)}\][^\[]*?^){re.escape(key)} = [^\n#]*", re.M | re.S)
    new, count = pattern.subn(lambda m: f"{m.group(1)}{key} = {value} ", toml, count=1)
    assert count == 1, f"[{section}] {key} not found in the example edge.toml"
    return new


def test_example_edge_toml_passes_check_config(tmp_path):
    example = FIRMWARE / "edge.toml"
    text = example.read_text()
    for section in ("detector", "embedder", "matcher", "tracker", "enrol", "device", "mqtt", "camera", "display",
                    "gpio"):
        assert f"\n[{section}]\n" in text, f"the example edge.toml has no [{section}] section"
    proc = _check_config(example, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_edge_toml_documents_every_setting():
    """Each field of edge/config.py appears in the example, set or commented out (``#key = ...``)."""
    from dangol_edge.config import EdgeConfig
    from pydantic import BaseModel

    parts = re.split(r"^\[(\w+)\]\s*$", (FIRMWARE / "edge.toml").read_text(), flags=re.M)
    top, bodies = parts[0], dict(zip(parts[1::2], parts[2::2], strict=True))
    missing = []
    for name, field in EdgeConfig.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            missing += [f"{name}.{key}" for key in section.model_fields
                        if not re.search(rf"^#?{key} = ", bodies.get(name, ""), re.M)]
        elif not re.search(rf"^#?{name} = ", top, re.M):
            missing.append(name)
    assert missing == [], f"firmware-config/edge.toml does not document {missing}"


@pytest.mark.parametrize("section, key, value, field", [
    ("matcher", "target_fpir", "1.5", "matcher.target_fpir"),
    ("gpio", "button_pin", "40", "gpio.button_pin"),
    ("display", "port", "70000", "display.port"),
    ("camera", "source", "12", "camera.source"),  # wrong type (a TOML integer for a string)
])
def test_out_of_range_value_is_refused_with_the_field_named(tmp_path, section, key, value, field):
    bad = tmp_path / "edge.toml"
    bad.write_text(_set((FIRMWARE / "edge.toml").read_text(), section, key, value))
    proc = _check_config(bad, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert field in proc.stderr


# --- install-edge --------------------------------------------------------------------------------------
def test_install_edge_dry_run_changes_nothing(tmp_path):
    bash = _tool("bash", "bash")
    assert subprocess.run([bash, "-n", str(INSTALL_EDGE)], capture_output=True, timeout=30).returncode == 0
    help_ = subprocess.run([str(INSTALL_EDGE), "--help"], capture_output=True, text=True, timeout=30)
    assert help_.returncode == 0 and "--dry-run" in help_.stdout and "--model" in help_.stdout

    model = tmp_path / "sface-int8.tflite"
    model.write_bytes(b"not really a model")
    (tmp_path / "sface-int8.calibration.json").write_text("{}")  # copied along with the model
    before = {p: os.path.exists(p) for p in ("/opt/dangol", "/etc/dangol", "/var/lib/dangol")}
    proc = subprocess.run([str(INSTALL_EDGE), "--dry-run", "--no-apt", "--model", str(model), "--open", "08:30",
                           "--close", "21:00"], capture_output=True, text=True, timeout=60)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p: os.path.exists(p) for p in before} == before, "--dry-run changed the system"
    for expected in ("--system-site-packages", "/opt/dangol/src\\[edge\\]", "DANGOL_OPEN=08:30",
                     "DANGOL_CLOSE=21:00", "OnCalendar=*-*-* 08:30:00", "OnCalendar=*-*-* 21:00:00",
                     "/var/lib/dangol/models/sface-int8.tflite", "/var/lib/dangol/models/sface-int8.calibration.json",
                     "systemctl daemon-reload",
                     "dangol-open.timer", "check-config /etc/dangol/edge.toml"):
        assert expected in out, f"{expected!r} not in the dry run's output:\n{out}"
    for unit in UNITS:
        assert f"/etc/systemd/system/{unit}" in out

    # the timer drop-ins it would write are valid and set the new times
    written = _written_files(out)
    staged = _stage_units(tmp_path / "units")
    for kind, at in (("open", "08:30"), ("close", "21:00")):
        dropin = written[f"/etc/systemd/system/dangol-{kind}.timer.d/hours.conf"]
        assert f"OnCalendar=\nOnCalendar=*-*-* {at}:00" in dropin
        (staged / f"dangol-{kind}.timer.d").mkdir()
        (staged / f"dangol-{kind}.timer.d" / "hours.conf").write_text(dropin)
    assert _verify([staged / "dangol-open.timer", staged / "dangol-close.timer"]) == []


def _written_files(dry_run_output: str) -> dict[str, str]:
    """{path: content} of the files install-edge --dry-run says it would write."""
    files: dict[str, str] = {}
    path = None
    for line in dry_run_output.splitlines():
        if m := re.match(r"  would write (\S+) ", line):
            path = m.group(1)
            files[path] = ""
        elif path is not None and line.startswith("    | "):
            files[path] += line[6:] + "\n"
        else:
            path = None
    return files


@pytest.mark.parametrize("args, message", [
    (["--open", "7:00"], "--open 7:00"),
    (["--close", "24:00"], "--close 24:00"),
    (["--model", "/nonexistent.tflite"], "--model /nonexistent.tflite"),
    (["--frobnicate"], "--frobnicate"),
])
def test_install_edge_refuses_bad_options(args, message):
    proc = subprocess.run([str(INSTALL_EDGE), "--dry-run", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr


# --- Mosquitto: the example config with the cloud's credentials and ACL -----------------------------------
def _certificates(d: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl, EC P-256: fast)."""
    openssl = _tool("openssl", "openssl")
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", *ec, "-days", "2", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=Dangol test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                                  "basicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-out", "server.crt", "-extfile", "server.ext")


def _cloud_broker_files(tmp_path: Path, devices: dict[str, tuple[str, str]]) -> tuple[Path, dict]:
    """A cloud database with ``devices`` ({name: (store_id, password)}) and ``dangol-cloud broker-config``
    run on it, as an operator would. Returns the folder with ``dangol-dynsec.conf`` (and the classic ``passwd``,
    ``acl``) and
    {name: (device_id, mqtt_username)}."""
    from dangol_cloud.db import Database
    from dangol_cloud.models import Device, Store
    from dangol_cloud.security import mosquitto_hash

    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(url)
    db.migrate()
    with db.sessions() as s:
        for store_id in sorted({store for store, _ in devices.values()}):
            s.add(Store(id=store_id, name=f"store {store_id[:8]}"))
        for name, (store_id, password) in devices.items():
            device_id = str(uuid.uuid4())
            s.add(Device(id=device_id, store_id=store_id, name=name, mqtt_username=f"device-{device_id}",
                         mqtt_password_hash=mosquitto_hash(password)))
        s.commit()
        ids = {d.name: (d.id, d.mqtt_username) for d in s.query(Device)}
    db.engine.dispose()
    out = tmp_path / "broker-auth"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANGOL_")}
    env.update(DANGOL_DATABASE_URL=url, DANGOL_HOME=str(tmp_path / "cloud-home"),
               DANGOL_MQTT_URL="mqtt://cloud:cloud-secret@127.0.0.1:1883",
               DANGOL_DATA_KEY=os.environ["DANGOL_DATA_KEY"])  # the cloud encrypts personal data at rest
    proc = subprocess.run([str(DANGOL_CLOUD), "broker-config", "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, ids


class _Client:
    """A paho-mqtt 2.x client that records CONNACK, SUBACKs and received messages."""

    def __init__(self, port: int, username: str, password: str, *, ca: Path | None = None,
                 client_id: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, list] = {}
        self.connack = None
        self._event = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:10]}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))  # verifies the chain and that the name is 127.0.0.1
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _notify(self) -> None:
        with self._event:
            self._event.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self._notify()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks[mid] = list(reason_codes)
        self._notify()

    def _on_message(self, client, userdata, msg):
        self.messages.append((msg.topic, msg.payload))
        self._notify()

    def wait(self, predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._event:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._event.wait(left)
        return True

    def connected(self) -> bool:
        assert self.wait(lambda: self.connack is not None), "no CONNACK"
        return not self.connack.is_failure

    def subscribe(self, topic: str) -> list:
        _, mid = self.client.subscribe(topic, qos=1)
        assert self.wait(lambda: mid in self.subacks), f"no SUBACK for {topic}"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def dangol_broker(tmp_path):
    """The example dangol.conf, installed as Debian does (conf.d/ included from a stock main file), with
    ports, certificate and credential paths rewritten into tmp_path. Yields a dict of what tests need."""
    mosquitto = _tool("mosquitto", "mosquitto")
    _certificates(tmp_path / "certs")
    store_a, store_b = str(uuid.uuid4()), str(uuid.uuid4())
    auth, ids = _cloud_broker_files(tmp_path, {"door-a": (store_a, "pw-a"), "door-b": (store_b, "pw-b")})
    plain, tls = free_port(), free_port()
    conf = (FIRMWARE / "mosquitto" / "dangol.conf").read_text()
    rewrites = {
        "listener 1883 127.0.0.1": f"listener {plain} 127.0.0.1",
        "listener 8883\n": f"listener {tls} 127.0.0.1\n",
        "/etc/mosquitto/certs/": f"{tmp_path / 'certs'}/",
    }
    for old, new in rewrites.items():
        assert old in conf, f"{old!r} not in dangol.conf (update this test with the config)"
        conf = conf.replace(old, new)
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "dangol.conf").write_text(conf)
    (confd / "dangol-dynsec.conf").symlink_to(auth / "dangol-dynsec.conf")  # as README.md says
    # Debian's stock /etc/mosquitto/mosquitto.conf, paths moved to tmp_path; as root mosquitto would
    # switch to the 'mosquitto' user, which cannot read tmp_path.
    main = tmp_path / "mosquitto.conf"
    main.write_text(f"user {pwd.getpwuid(os.getuid()).pw_name}\npid_file {tmp_path / 'mosquitto.pid'}\n"
                    f"persistence true\npersistence_location {tmp_path}/\n"
                    f"log_dest file {tmp_path / 'mosquitto.log'}\ninclude_dir {confd}\n")
    proc = subprocess.Popen([mosquitto, "-c", str(main)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        pending = {plain, tls}
        while pending and time.monotonic() < deadline and proc.poll() is None:
            for port in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    pending.discard(port)
                except OSError:
                    time.sleep(0.05)
        if pending:
            proc.terminate()
            output = proc.communicate(timeout=5)[0].decode(errors="replace")
            log = tmp_path / "mosquitto.log"
            output += log.read_text() if log.exists() else ""
            pytest.fail(f"mosquitto did not start with dangol.conf:\n{output}")
        yield {"plain": plain, "tls": tls, "ca": tmp_path / "certs" / "ca.crt", "store_a": store_a,
               "store_b": store_b, "a": ids["door-a"], "b": ids["door-b"]}
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


def test_example_mosquitto_config_enforces_credentials_tls_and_the_acl(dangol_broker):
    b = dangol_broker
    (device_a, user_a), (device_b, _user_b) = b["a"], b["b"]
    clients: list[_Client] = []

    def client(port, user, password, tls=False, client_id=None):
        c = _Client(port, user, password, ca=b["ca"] if tls else None, client_id=client_id)
        clients.append(c)
        return c

    try:
        # authentication: no anonymous access, wrong passwords refused, on both listeners
        assert not client(b["plain"], "", "").connected()
        assert not client(b["tls"], user_a, "wrong", tls=True).connected()
        cloud = client(b["plain"], "cloud", "cloud-secret")
        assert cloud.connected()
        # dynamic security: a device login is pinned to its own client id, so it cannot take the cloud
        # listener's persistent session (nor any other id)
        from dangol_protocol import device_client_id

        assert not client(b["tls"], user_a, "pw-a", tls=True, client_id="dangol-cloud-listener").connected()
        assert not client(b["tls"], user_a, "pw-a", tls=True).connected()
        door_a = client(b["tls"], user_a, "pw-a", tls=True, client_id=device_client_id(device_a))  # TLS, name checked
        assert door_a.connected()

        # retained menus of both stores; device A subscribes to B's first, then to its own
        menu_a = f"dangol/v1/stores/{b['store_a']}/menus/{uuid.uuid4()}"
        menu_b = f"dangol/v1/stores/{b['store_b']}/menus/{uuid.uuid4()}"
        cloud.publish(menu_b, b'{"retained": "b"}', retain=True)
        cloud.publish(menu_a, b'{"retained": "a"}', retain=True)
        denied = door_a.subscribe(f"dangol/v1/stores/{b['store_b']}/menus/+")
        granted = door_a.subscribe(f"dangol/v1/stores/{b['store_a']}/menus/+")
        assert not granted[0].is_failure
        assert door_a.wait(lambda: menu_a in door_a.topics()), "device A did not get its own store's menu"
        # then live messages: B's first, A's last; once A's is in, B's would have arrived before it
        cloud.publish(menu_b, b'{"live": "b"}')
        cloud.publish(menu_a, b'{"live": "a"}')
        assert door_a.wait(lambda: door_a.topics().count(menu_a) == 2)
        assert menu_b not in door_a.topics(), f"device A received store B's menu (SUBACK {denied})"

        # publishing: only on its own events topic; never as another device, never a menu
        # (the broker handles one connection's publishes in order: had a forbidden one been accepted, the
        # cloud would receive it before the allowed one that comes last)
        cloud.subscribe("dangol/v1/devices/+/events")
        cloud.subscribe("dangol/v1/stores/+/menus/+")  # also delivers the two retained menus: ignored
        forged_event = f"dangol/v1/devices/{device_b}/events"
        door_a.publish(forged_event, b'{"kind": "arrival", "forged": true}')
        door_a.publish(menu_a, b'{"forged": "menu"}')
        own_event = f"dangol/v1/devices/{device_a}/events"
        door_a.publish(own_event, b'{"kind": "arrival"}')
        assert cloud.wait(lambda: own_event in cloud.topics()), "the cloud did not get device A's own event"
        assert forged_event not in cloud.topics(), "device A published as device B"
        assert (menu_a, b'{"forged": "menu"}') not in cloud.messages, "device A published a menu"
    finally:
        for c in clients:
            c.close()
