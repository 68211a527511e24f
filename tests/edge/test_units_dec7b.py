"""The installed box as its docs describe it (review of 2026-12-07): a bad config stops the daemon for good, the
opening hours a shell sees, the packages ``scripts/setup`` installs, and the one way to run ``dangol-edge`` on a box.

* A config error must end the **main** process with exit 2: ``RestartPreventExitStatus=2`` applies to it only, not to
  an ``ExecStartPre=`` (systemd issue #11868), so a check there that fails was restarted every ``RestartSec`` until
  ``start-limit-hit``.
* ``/opt/dangol/bin/dangol-hours status`` from a shell reads ``/etc/dangol/hours.env`` (the units load it
  themselves); ``DANGOL_HOURS_FILE`` points it elsewhere for these tests.
* ``/opt/dangol/bin/dangol-edge`` (``systemd/dangol-edge``, installed by ``scripts/install-edge``) runs the command as
  the service does: as the ``dangol`` user, with ``/etc/dangol/edge.env``, ``DANGOL_HOME=/var/lib/dangol``, umask
  0077 and ``--config /etc/dangol/edge.toml``. ``DANGOL_ETC_DIR``, ``DANGOL_STATE_DIR``, ``DANGOL_VENV_DIR`` and
  ``DANGOL_RUN_AS`` point it at this test's folders and user (switching users needs root, as on a box).

Needs the Debian packages ``systemd`` and ``bash`` and, for the wrapper, root (``runuser``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SYSTEMD = REPO / "systemd"
FIRMWARE = REPO / "firmware-config"
HOURS = SYSTEMD / "dangol-hours"
WRAPPER = SYSTEMD / "dangol-edge"
INSTALL_EDGE = REPO / "scripts" / "install-edge"
SETUP = REPO / "scripts" / "setup"
DANGOL_EDGE = Path(sys.executable).parent / "dangol-edge"


def _directives(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", (SYSTEMD / name).read_text())
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _unit_env(home: Path) -> dict[str, str]:
    """The environment the unit gives the daemon (no DANGOL_* of this test process, DANGOL_HOME set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANGOL_")}
    env["DANGOL_HOME"] = str(home)
    return env


# --- 1. a config error stops the daemon --------------------------------------------------------------------
def test_no_exec_start_pre_can_fail_the_start():
    """Only the main process's exit 2 is kept from restarting (RestartPreventExitStatus=, systemd #11868): a
    failing ExecStartPre= (the former ``check-config``) made systemd retry a bad edge.toml every 5 s."""
    d = _directives("dangol-edge.service")
    pre = [cmd for cmd in d.get("ExecStartPre", []) if not cmd.startswith("-")]  # "-": a failure is ignored
    assert pre == [], f"ExecStartPre= that can fail the start (and is then restarted): {pre}"
    assert d["ExecStart"] == ["/opt/dangol/venv/bin/dangol-edge run --config /etc/dangol/edge.toml"]
    assert d["Restart"] == ["on-failure"]
    assert "2" in " ".join(d["RestartPreventExitStatus"]).split()


@pytest.mark.parametrize("old, new, named", [
    ("min_score = 0.6 ", "min_score = 7 ", "detector.min_score"),   # out of range
    ('source = "picamera2:0"', 'source = "/nonexistent/door.mp4"', "camera.source"),  # a camera that is not there
])
def test_run_itself_exits_2_on_a_config_error(tmp_path, old, new, named):
    """What the ExecStartPre used to refuse, the main process (``run``) refuses with exit 2, naming the field."""
    text = (FIRMWARE / "edge.toml").read_text()
    assert old in text, f"{old!r} not in the example edge.toml (update this test)"
    bad = tmp_path / "edge.toml"
    bad.write_text(text.replace(old, new, 1))
    proc = subprocess.run([str(DANGOL_EDGE), "run", "--config", str(bad)], capture_output=True, text=True,
                          env=_unit_env(tmp_path / "home"), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr


def test_run_exits_2_without_the_model(tmp_path):
    """The example config on a box whose models/ is empty: exit 2 naming the model file (not restarted)."""
    home = tmp_path / "home"
    proc = subprocess.run([str(DANGOL_EDGE), "run", "--config", str(FIRMWARE / "edge.toml")], capture_output=True,
                          text=True, env=_unit_env(home), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(home / "models" / "sface-int8.tflite") in proc.stderr


def test_edge_toml_says_how_to_check_it():
    toml_head = (FIRMWARE / "edge.toml").read_text().split("\n[", 1)[0]
    assert "not the model file" not in toml_head, "edge.toml says check-config does not check the model; it does"
    assert "sudo -u dangol" not in toml_head, "check-config as dangol without edge.env checks another home"
    assert "sudo /opt/dangol/bin/dangol-edge check-config /etc/dangol/edge.toml" in toml_head


# --- 2. opening hours from a shell -------------------------------------------------------------------------
def _hours(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), bash, str(HOURS), *args],
                          capture_output=True, text=True, timeout=10)


def test_hours_status_from_a_shell_reads_the_hours_file(tmp_path):
    hours = tmp_path / "hours.env"
    hours.write_text("# Opening hours of this café\nDANGOL_OPEN=08:30\nDANGOL_CLOSE=21:00\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DANGOL_HOURS_FILE": str(hours),
           "DANGOL_HOURS_NOW": "21:30"}
    status = _hours("status", env=env)
    assert status.returncode == 0, status.stderr
    assert "hours 08:30-21:00" in status.stdout and "closed" in status.stdout, status.stdout
    assert _hours("is-open", env=env).returncode == 1
    assert _hours("is-closed", env=env).returncode == 0
    # the environment (what the units pass) wins over the file
    env_wins = _hours("status", env={**env, "DANGOL_OPEN": "07:00", "DANGOL_CLOSE": "22:00"})
    assert "hours 07:00-22:00" in env_wins.stdout and ": open" in env_wins.stdout, env_wins.stdout


def test_hours_file_quoted_values_and_errors(tmp_path):
    hours = tmp_path / "hours.env"
    hours.write_text('DANGOL_OPEN="18:00"\nDANGOL_CLOSE=\'02:00\'\n')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DANGOL_HOURS_FILE": str(hours), "DANGOL_HOURS_NOW": "01:00"}
    assert "hours 18:00-02:00" in _hours("status", env=env).stdout
    hours.write_text("DANGOL_OPEN=7\nDANGOL_CLOSE=22:00\n")
    bad = _hours("status", env=env)
    assert bad.returncode == 255 and "DANGOL_OPEN=7" in bad.stderr and str(hours) in bad.stderr
    missing = _hours("status", env={**env, "DANGOL_HOURS_FILE": str(tmp_path / "none.env")})
    assert missing.returncode == 0 and "hours 07:00-22:00" in missing.stdout
    assert "none.env" in missing.stdout, "the default hours must say that no hours file was found"


# --- 5. scripts/setup's packages ---------------------------------------------------------------------------
def test_setup_installs_what_a_fresh_debian_lacks():
    """``python3 -m venv`` needs python3-venv on Debian, the LightFM sdist Python.h (python3-dev) and a compiler."""
    bash = shutil.which("bash") or "/bin/bash"
    line = re.search(r"^APT_PACKAGES=\(.*?\)", SETUP.read_text(), re.M | re.S).group(0)
    proc = subprocess.run([bash, "-c", f'{line}\nprintf "%s\\n" "${{APT_PACKAGES[@]}}"'], capture_output=True,
                          text=True, timeout=10)
    packages = set(proc.stdout.split())
    assert {"python3-venv", "python3-dev", "build-essential"} <= packages, packages
    readme = (REPO / "README.md").read_text()
    assert "DANGOL_TEST_POSTGRES_URL" in readme.split("## Layout")[0]
    for name in ("python3-venv", "python3-dev", "build-essential", "postgresql"):
        assert name in readme.split("## Layout")[0], f"README.md's setup section does not name {name}"


# --- 6. dangol-edge on an installed box -------------------------------------------------------------------
def test_install_edge_installs_the_wrapper():
    proc = subprocess.run([str(INSTALL_EDGE), "--dry-run", "--no-apt"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"would run: install -m 0755 \S*/systemd/dangol-edge /opt/dangol/bin/dangol-edge$",
                     proc.stdout, re.M), proc.stdout
    assert os.access(WRAPPER, os.X_OK)
    assert subprocess.run(["bash", "-n", str(WRAPPER)], capture_output=True, timeout=10).returncode == 0


@pytest.fixture
def box(tmp_path):
    """/etc/dangol and /var/lib/dangol of a box, in a folder other users can enter (the wrapper switches users)."""
    if os.geteuid() != 0:
        pytest.skip("the wrapper switches to the service user with runuser, which needs root")
    root = Path(tempfile.mkdtemp(prefix="dangol-box-", dir="/tmp"))
    root.chmod(0o755)
    etc, state = root / "etc", root / "state"
    etc.mkdir()
    state.mkdir()
    shutil.copy(FIRMWARE / "edge.toml", etc / "edge.toml")
    (etc / "edge.env").write_text("# secrets\nDANGOL_GALLERY_KEY=a2V5LWZvci10aGUtd3JhcHBlci10ZXN0LTMyLWJ5dGVz\n"
                                  "  DANGOL_MATCHER__THRESHOLD = \"0.61\"\n;DANGOL_IGNORED=1\n")
    (etc / "edge.env").chmod(0o600)
    yield root, etc, state
    shutil.rmtree(root)


def _wrapper(box_root: Path, etc: Path, state: Path, venv: Path, user: str, *args: str, as_user: str | None = None):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DANGOL_ETC_DIR": str(etc), "DANGOL_STATE_DIR": str(state),
           "DANGOL_VENV_DIR": str(venv), "DANGOL_RUN_AS": user,
           "DANGOL_HOME": "/elsewhere", "DANGOL_GALLERY_KEY": "not-this-one"}  # the caller's are not used
    cmd = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(WRAPPER), *args]
    if as_user:
        cmd = ["runuser", "-u", as_user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=box_root)


def test_wrapper_runs_the_command_as_the_service_does(box):
    """User, umask, DANGOL_HOME, edge.env (quotes and spaces as systemd reads them) and --config edge.toml."""
    root, etc, state = box
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "dangol-edge"  # prints what it was given instead of running the real command
    stub.write_text('#!/bin/sh\necho "user=$(id -un)"\necho "umask=$(umask)"\nenv\necho "args=$*"\n')
    stub.chmod(0o755)
    proc = _wrapper(root, etc, state, venv, "nobody", "customers", "list")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert "user=nobody" in out and "umask=0077" in out
    assert f"DANGOL_HOME={state}" in out and "DANGOL_HOME=/elsewhere" not in out
    assert "DANGOL_GALLERY_KEY=a2V5LWZvci10aGUtd3JhcHBlci10ZXN0LTMyLWJ5dGVz" in out
    assert "DANGOL_MATCHER__THRESHOLD=0.61" in out
    assert not any(line.startswith(("DANGOL_IGNORED", ";")) for line in out)
    assert f"args=--config {etc / 'edge.toml'} customers list" in out


def test_wrapper_check_config_sees_the_box(box):
    """The real command through the wrapper reads edge.env and checks the box's home and its model (where
    ``sudo -u dangol dangol-edge check-config`` checked ~/.local/share/dangol, skipping the model's checks)."""
    root, etc, state = box
    (etc / "edge.env").write_text(f"DANGOL_CAMERA__SOURCE={root}/no-such-clip.mp4\n")
    proc = _wrapper(root, etc, state, DANGOL_EDGE.parent.parent, "root", "check-config", str(etc / "edge.toml"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "camera.source" in proc.stderr and "no-such-clip.mp4" in proc.stderr  # edge.env was read
    (etc / "edge.env").write_text("")
    ok = _wrapper(root, etc, state, DANGOL_EDGE.parent.parent, "root", "check-config", str(etc / "edge.toml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"home={state}" in ok.stdout and str(state / "models" / "sface-int8.tflite") in ok.stdout


def test_wrapper_refuses_without_root(box):
    root, etc, state = box
    proc = _wrapper(root, etc, state, DANGOL_EDGE.parent.parent, "nobody", "customers", "list", as_user="nobody")
    assert proc.returncode == 2 and "sudo" in proc.stderr, proc.stdout + proc.stderr
