"""The whole loop (scripts/loop_demo.py) on a real slice of Complete Journey: broker, cloud, edge daemon, browser.
The welcome's picks carry readable names, and they are the data's own: Complete Journey ``product_category``
values from the real ``products.csv`` (never invented, never bare product codes)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_whole_loop(tmp_path, data_dir, models_dir, monkeypatch):
    cj = data_dir / "purchases" / "completejourney"
    (tmp_path / "cj").mkdir()
    part = tmp_path / "cj" / "transactions.csv"
    with (cj / "transactions.csv").open() as f, part.open("w") as out:
        for i, line in enumerate(f):
            if i > 30_000:
                break
            out.write(line)
    shutil.copy(cj / "products.csv", tmp_path / "cj" / "products.csv")  # the importer reads it beside the file
    with (cj / "products.csv").open() as fh:
        categories = {rec["product_category"].strip() for rec in csv.DictReader(fh)}
    env = {"DANGOL_MODELS_DIR": str(models_dir), "DANGOL_DATA": str(data_dir)}
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "loop_demo.py"), "--purchases", str(part),
                        "--format", "completejourney", "--work", str(tmp_path / "loop"), "--timeout", "120"],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["visits"] >= 1
    # the door screen keeps hyphenated names whole with a non-breaking hyphen (U+2011)
    assert "Welcome back, Lin\u2011Manuel" in summary["page"]
    assert Path(summary["screenshot"]).stat().st_size > 10_000
    # the owner's mapping step put products on the menu, so the welcome carries his picks ...
    assert summary["menu_items"] > 0 and "Your usual" in summary["page"]
    # ... with readable names: Complete Journey's own product categories, in US dollars
    picks = summary["picks"]
    assert len(picks) >= 3 and all(name in categories for name in picks), picks
    assert not any(name.replace(" ", "").isdigit() for name in picks) and any(c.isalpha() for c in "".join(picks))
    assert "$" in summary["page"] and "$0.00" not in summary["page"]  # no coupon line offered as a pick
