"""The dangol-edge wrapper (``/opt/dangol/bin/dangol-edge``, run as root) gives the dangol user no way into root
(security review R7, dec 7):

* the command it starts as ``dangol`` gets a terminal of its own (``runuser --pty``): on root's terminal, code running
  as ``dangol`` in it (a compromised daemon can write into the memory of any process of its user) typed a command
  into root's shell (TIOCSTI; the CVE-2016-2779 pattern);
* edge.env's names act only on the command, never on the root wrapper: a ``PATH`` (or ``LD_*``) there chose the
  ``runuser`` that ran as root. Only ``DANGOL_*`` names are passed on; others are named and left out.
"""

from __future__ import annotations

import os
import pty
import select
import time
from pathlib import Path

import pytest

from .test_units_dec7b import WRAPPER, _wrapper, box  # noqa: F401 - the box fixture


def _tiocsti_allowed() -> bool:
    knob = Path("/proc/sys/dev/tty/legacy_tiocsti")
    return not knob.exists() or knob.read_text().strip() == "1"


def _drain(fd: int, seconds: float) -> str:
    end, buf = time.monotonic() + seconds, b""
    while time.monotonic() < end:
        try:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                buf += os.read(fd, 4096)
        except OSError:
            break
    return buf.decode(errors="replace")


def test_the_command_cannot_type_into_roots_terminal(box):  # noqa: F811
    if not _tiocsti_allowed():
        pytest.skip("this kernel refuses TIOCSTI (dev.tty.legacy_tiocsti = 0): nothing to type with")
    root, etc, state = box
    pwned = root / "pwned.txt"
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "dangol-edge"  # stands for code running as the daemon's user inside the command
    stub.write_text("#!/usr/bin/python3\nimport fcntl, os, termios\ntry:\n    fd = os.open('/dev/tty', os.O_RDWR)\n"
                    f"    for ch in 'id > {pwned}\\n':\n        fcntl.ioctl(fd, termios.TIOCSTI, ch.encode())\n"
                    "    print('typed', flush=True)\nexcept OSError as exc:\n    print('refused', exc, flush=True)\n")
    stub.chmod(0o755)
    pid, fd = pty.fork()
    if pid == 0:  # root's interactive shell on a terminal
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
    try:
        _drain(fd, 1)
        os.write(fd, (f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DANGOL_ETC_DIR={etc} DANGOL_STATE_DIR={state} "
                      f"DANGOL_VENV_DIR={venv} DANGOL_RUN_AS=nobody {WRAPPER} customers list\n").encode())
        _drain(fd, 4)
        os.write(fd, b"exit\n")
        _drain(fd, 1)
    finally:
        os.waitpid(pid, 0)
    assert not pwned.exists(), f"the command typed into root's shell: {pwned.read_text()}"


def test_edge_env_names_other_than_dangol_never_reach_the_root_wrapper(box):  # noqa: F811
    root, etc, state = box
    planted = root / "planted"
    planted.mkdir()
    ran = root / "ran-as.txt"
    (planted / "runuser").write_text(f"#!/bin/sh\nid -un > {ran}\nexec /usr/sbin/runuser \"$@\"\n")
    (planted / "runuser").chmod(0o755)
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "dangol-edge").write_text('#!/bin/sh\nenv\n')
    (venv / "bin" / "dangol-edge").chmod(0o755)
    (etc / "edge.env").write_text(f"PATH={planted}:/usr/sbin:/usr/bin:/sbin:/bin\nLD_PRELOAD=/nonexistent.so\n"
                                  "DANGOL_MQTT_URL=mqtt://127.0.0.1:1883\n")
    proc = _wrapper(root, etc, state, venv, "nobody", "customers", "list")
    assert not ran.exists(), f"edge.env's PATH chose the runuser that ran as {ran.read_text().strip()}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert "DANGOL_MQTT_URL=mqtt://127.0.0.1:1883" in out
    assert not any(line.startswith("LD_PRELOAD") for line in out) and f"PATH={planted}" not in proc.stdout
    assert "PATH" in proc.stderr and "LD_PRELOAD" in proc.stderr and "not passed on" in proc.stderr
