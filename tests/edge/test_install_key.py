"""install-edge gives a fresh box a gallery key once, and never replaces one.

Without ``DANGOL_GALLERY_KEY`` (or the credential ``dangol-gallery-key``, or ``DANGOL_GALLERY_KEY_FILE``) the
daemon stops with GalleryKeyError, exit 2, which the unit does not restart. ``scripts/install-edge`` cannot run
for real here (root, apt, systemd), so its key functions are taken out of the script and run on a fake
``/etc/dangol`` in ``tmp_path`` (with this checkout's venv as the venv); the whole script is run with
``--dry-run`` for its plan.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.edge.test_systemd import FIRMWARE, INSTALL_EDGE, REPO, _tool

EXAMPLE_ENV = FIRMWARE / "edge.env.example"
VENV = Path(sys.executable).parent.parent  # this checkout's venv: bin/python imports dangol_edge
KEY_FUNCTIONS = ("log", "warn", "run", "gallery_key_source", "ensure_gallery_key")


def _function(script: str, name: str) -> str:
    """The definition of the shell function ``name`` in ``script`` (a one-liner, or up to the first ``}`` line)."""
    m = re.search(rf"^{re.escape(name)}\(\) \{{.*?(?:\}}$|^\}}$)", script, re.M | re.S)
    assert m, f"no function {name}() in scripts/install-edge"
    return m.group(0)


def _ensure_key(tmp_path: Path, *, dry_run: bool = False, venv: Path = VENV) -> subprocess.CompletedProcess:
    """Run install-edge's ensure_gallery_key on ``tmp_path/etc/edge.env`` (drop-ins in ``tmp_path/units``)."""
    script = INSTALL_EDGE.read_text()
    harness = "\n".join([
        "set -euo pipefail", "umask 022", 'B="" Y="" N=""',
        f"DRY_RUN={int(dry_run)} SRC={REPO} ETC={tmp_path / 'etc'} STATE={tmp_path / 'state'}",
        f"UNIT_DIR={tmp_path / 'units'} VENV={venv}",
        *(_function(script, name) for name in KEY_FUNCTIONS),
        'ensure_gallery_key "$ETC/edge.env"',
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANGOL_")}
    return subprocess.run([_tool("bash", "bash"), "-c", harness], capture_output=True, text=True, env=env,
                          timeout=60)


def _environment_file(path: Path) -> dict[str, str]:
    """The variables systemd's EnvironmentFile= takes from ``path`` (KEY=VALUE lines; a later line wins)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


def _load_key(env_file: Path) -> bytes:
    from dangol_edge.crypto import load_key

    return load_key(_environment_file(env_file))  # the daemon's own lookup, on what systemd would pass it


@pytest.fixture
def fresh(tmp_path) -> Path:
    """A first install's /etc/dangol/edge.env: the example, root-only."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "units").mkdir()
    env_file = tmp_path / "etc" / "edge.env"
    env_file.write_bytes(EXAMPLE_ENV.read_bytes())
    env_file.chmod(0o600)
    return env_file


def test_the_example_edge_env_has_no_key():
    """Otherwise every box installed from it would share one key."""
    assert "DANGOL_GALLERY_KEY" not in _environment_file(EXAMPLE_ENV)


def test_first_install_generates_a_key_the_daemon_accepts_and_a_rerun_keeps_it(fresh, tmp_path):
    from dangol_edge.crypto import GalleryKeyError

    with pytest.raises(GalleryKeyError):
        _load_key(fresh)  # the defect: the daemon would stop with exit 2
    proc = _ensure_key(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_load_key(fresh)) == 32
    first = fresh.read_bytes()
    assert first.startswith(EXAMPLE_ENV.read_bytes()), "edge.env was rewritten, not appended to"
    assert fresh.stat().st_mode & 0o777 == 0o600
    assert re.search(r"back.*up", proc.stdout, re.I) and "re-enrol" in proc.stdout, proc.stdout
    key = _environment_file(fresh)["DANGOL_GALLERY_KEY"]
    assert key not in proc.stdout + proc.stderr, "the key was printed"

    again = _ensure_key(tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert fresh.read_bytes() == first, "a re-run changed the key"
    assert "kept" in again.stdout and "never replaced" in again.stdout, again.stdout


def test_two_boxes_get_different_keys(tmp_path):
    keys = []
    for box in ("a", "b"):
        root = tmp_path / box
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "edge.env").write_bytes(EXAMPLE_ENV.read_bytes())
        assert _ensure_key(root).returncode == 0
        keys.append(_load_key(root / "etc" / "edge.env"))
    assert keys[0] != keys[1]


@pytest.mark.parametrize("setting", [
    "DANGOL_GALLERY_KEY={key}",
    "  DANGOL_GALLERY_KEY=\"{key}\"",
    "DANGOL_GALLERY_KEY_FILE=/media/usb/gallery.key",
])
def test_an_edge_env_with_a_key_is_untouched(fresh, tmp_path, setting):
    from dangol_edge.crypto import new_key

    text = EXAMPLE_ENV.read_text().replace("#DANGOL_GALLERY_KEY=\n", setting.format(key=new_key()) + "\n")
    assert text != EXAMPLE_ENV.read_text()
    fresh.write_text(text.rstrip("\n"))  # no final newline either
    before = fresh.read_bytes()
    proc = _ensure_key(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fresh.read_bytes() == before
    assert "kept" in proc.stdout, proc.stdout


@pytest.mark.parametrize("directive", [
    "LoadCredentialEncrypted=dangol-gallery-key:/etc/credstore.encrypted/dangol-gallery-key",
    "LoadCredential=dangol-gallery-key:/etc/credstore/dangol-gallery-key",
    "SetCredentialEncrypted=dangol-gallery-key: \\\n  k6iUCUh0RJCQyvL8k8q1UyAAAAABAAAADAAAABAAAAC1lFmbWAqWZ8dC",
    "Environment=DANGOL_GALLERY_KEY_FILE=/media/usb/gallery.key",
])
def test_a_key_configured_in_a_drop_in_is_not_shadowed(fresh, tmp_path, directive):
    """DANGOL_GALLERY_KEY in edge.env would win over the credential (load_key looks at it first)."""
    dropin = tmp_path / "units" / "dangol-edge.service.d"
    dropin.mkdir()
    (dropin / "gallery-key.conf").write_text(f"[Service]\n{directive}\n")
    before = fresh.read_bytes()
    proc = _ensure_key(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fresh.read_bytes() == before
    assert "gallery-key.conf" in proc.stdout and "kept" in proc.stdout, proc.stdout


def test_a_commented_or_empty_key_counts_as_none(fresh, tmp_path):
    fresh.write_text(EXAMPLE_ENV.read_text().replace("#DANGOL_GALLERY_KEY=\n", "DANGOL_GALLERY_KEY=\n"))
    (tmp_path / "units" / "dangol-edge.service.d").mkdir()
    (tmp_path / "units" / "dangol-edge.service.d" / "override.conf").write_text(
        "[Service]\n#LoadCredentialEncrypted=dangol-gallery-key:/etc/credstore.encrypted/dangol-gallery-key\n")
    proc = _ensure_key(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_load_key(fresh)) == 32


def test_an_existing_gallery_without_a_findable_key_gets_no_new_key(fresh, tmp_path):
    """The faces were sealed under a key that must be somewhere install-edge does not look: a new key in
    edge.env would shadow it. The owner decides (put it back, or remove the gallery)."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "gallery.sqlite").write_bytes(b"SQLite format 3\x00")
    before = fresh.read_bytes()
    proc = _ensure_key(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fresh.read_bytes() == before
    assert "gallery.sqlite" in proc.stderr and "DANGOL_GALLERY_KEY" in proc.stderr, proc.stderr


def test_a_failing_key_generator_stops_the_install_and_writes_nothing(fresh, tmp_path):
    broken = tmp_path / "broken-venv"
    (broken / "bin").mkdir(parents=True)
    (broken / "bin" / "python").write_text("#!/bin/sh\necho 'ModuleNotFoundError: dangol_edge' >&2\nexit 1\n")
    (broken / "bin" / "python").chmod(0o755)
    before = fresh.read_bytes()
    proc = _ensure_key(tmp_path, venv=broken)
    assert proc.returncode == 1
    assert fresh.read_bytes() == before
    assert "gallery key" in proc.stderr


def test_dry_run_of_the_function_writes_nothing(fresh, tmp_path):
    before = fresh.read_bytes()
    proc = _ensure_key(tmp_path, dry_run=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fresh.read_bytes() == before
    assert "would run:" in proc.stdout and "new_key" in proc.stdout and f">> {fresh}" in proc.stdout


def test_install_edge_dry_run_plans_the_key_after_edge_env_and_before_check_config():
    if os.path.exists("/etc/dangol/edge.env"):
        pytest.skip("/etc/dangol/edge.env exists on this machine: the plan depends on its content")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DANGOL_")}
    proc = subprocess.run([str(INSTALL_EDGE), "--dry-run", "--no-apt"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()

    def index(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert len(found) == 1, f"{pattern!r}: {len(found)} lines in the dry run:\n{proc.stdout}"
        return found[0]

    install_env = index(r"would run: install .*edge\.env\.example /etc/dangol/edge\.env$")
    chmod_env = index(r"would run: chmod 0600 /etc/dangol/edge\.env$")
    generate = index(r"would run: /opt/dangol/venv/bin/python -c .*from\\? dangol_edge\.crypto\\? import\\? new_key"
                     r".* >> /etc/dangol/edge\.env$")
    backup = index(r"gallery key: .*back.*up.*re-enrol")
    check = index(r"check-config /etc/dangol/edge\.toml$")
    assert install_env < chmod_env < generate < backup < check
