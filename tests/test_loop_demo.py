"""The whole loop (scripts/loop_demo.py) on a real slice of Ta-Feng: broker, cloud, edge daemon, browser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_whole_loop(tmp_path, data_dir, models_dir, monkeypatch):
    src = data_dir / "purchases" / "ta-feng" / "ta_feng_transactions.csv"
    part = tmp_path / "ta_feng_slice.csv"
    with src.open() as f, part.open("w") as out:
        for i, line in enumerate(f):
            if i > 30_000:
                break
            out.write(line)
    env = {"DANGOL_MODELS_DIR": str(models_dir), "DANGOL_DATA": str(data_dir)}
    import os

    r = subprocess.run([sys.executable, str(REPO / "scripts" / "loop_demo.py"), "--purchases", str(part),
                        "--work", str(tmp_path / "loop"), "--timeout", "120"],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["visits"] >= 1
    # the door screen keeps hyphenated names whole with a non-breaking hyphen (U+2011)
    assert "Welcome back, Lin\u2011Manuel" in summary["page"]
    assert Path(summary["screenshot"]).stat().st_size > 10_000
    # the owner's mapping step put products on the menu, so the welcome carries his picks
    assert summary["menu_items"] > 0 and "Your usual" in summary["page"]
