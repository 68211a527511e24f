"""The daemon starts on a full disk: the door greets and health reports ``storage: full``.

Opening an SQLite file in WAL mode creates its ``-wal``/``-shm`` files, which fails on a full disk ("disk I/O error").
Two ways: a real full file system (a 6 MiB tmpfs, when this process may mount one: root), and, everywhere, an emulated
one — the databases' open raises ``sqlite3.OperationalError('disk I/O error')`` while their ``-wal`` file is missing
and the disk is full, and the disk counts as full until a file that was in the home when it filled up is deleted.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest

from dangol_edge.daemon import Appliance
from tests.edge.test_daemon import LIN, config, home  # noqa: F401
from tests.edge.test_sync import wait_for


def _door(home, model_path, clips):  # noqa: F811
    return Appliance(config(home, model_path, clips, camera={"source": str(clips / "lin-manuel-miranda.png"),
                                                             "loop": True, "realtime": True}))


def _greets_and_reports_full(app: Appliance) -> None:
    assert app.health().storage == "full"
    assert wait_for(lambda: app.stats.arrivals >= 1, timeout=120)
    assert app.screen.snapshot()["screen"] == "welcome"
    assert app.screen.snapshot()["customer_id"] == LIN
    assert app.health().storage == "full"  # a write that fits in the freed reserve does not make it "ok"


def test_starts_on_an_emulated_full_disk(home, model_path, clips, monkeypatch):  # noqa: F811
    import dangol_edge.gallery
    import dangol_edge.state

    app = _door(home, model_path, clips)
    app.start()  # space free: the databases are created (and the daemon keeps its reserve)
    app.stop()
    disk = {"full": True}
    reserve = home / "space-reserve"
    files = {p.name for p in home.iterdir()}  # the disk fills up: space comes back only when one of them goes

    def full() -> bool:
        return disk["full"] and files <= {p.name for p in home.iterdir()}

    for module in (dangol_edge.state, dangol_edge.gallery):
        real = module.connect

        def connect(path, real=real):
            if full() and not path.with_name(path.name + "-wal").exists():
                raise sqlite3.OperationalError("disk I/O error")
            return real(path)

        monkeypatch.setattr(module, "connect", connect)
    try:
        import dangol_edge.reserve

        monkeypatch.setattr(dangol_edge.reserve, "free_bytes", lambda folder: 0 if disk["full"] else 1 << 30)
    except ImportError:  # before the fix
        pass

    app = _door(home, model_path, clips)
    app.start()
    try:
        _greets_and_reports_full(app)
        disk["full"] = False  # space comes back: housekeeping allocates the reserve again, storage is ok
        assert wait_for(lambda: reserve.exists() and app.health().storage == "ok", timeout=15)
    finally:
        app.stop()


def _mount_tmpfs(where) -> bool:
    where.mkdir()
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def test_starts_on_a_real_full_disk(tmp_path, home, model_path, clips):  # noqa: F811
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        box = disk / "home"
        box.mkdir()
        (box / "gallery.sqlite").write_bytes((home / "gallery.sqlite").read_bytes())
        app = _door(box, model_path, clips)
        app.start()
        time.sleep(2)
        app.stop()
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        app = _door(box, model_path, clips)
        app.start()
        try:
            _greets_and_reports_full(app)
            filler.unlink()
            assert wait_for(lambda: (box / "space-reserve").exists() and app.health().storage == "ok", timeout=15)
        finally:
            app.stop()
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:  # a file left open: fail, unmounted
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
            pytest.fail("a file on the full disk was left open after the daemon stopped")
