"""``dangol-models build`` and ``dangol-models evaluate --lfw DIR``.

Exit status: 0 success, 2 usage or input error (the message names the input), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("dangol_models")


def default_out() -> Path:
    """Where models are built: ``$DANGOL_MODELS_DIR`` or ``<DANGOL_HOME>/models``."""
    if os.environ.get("DANGOL_MODELS_DIR"):
        return Path(os.environ["DANGOL_MODELS_DIR"])
    from dangol_edge.config import default_home

    return default_home() / "models"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dangol-models", description="Build and evaluate Dangol's face models.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the float32 and int8 TFLite FaceNet embedders")
    b.add_argument("--out", type=Path, default=None, help="output folder (default $DANGOL_MODELS_DIR or <home>/models)")
    b.add_argument("--lfw", type=Path, default=None, help="LFW-format folder for calibration (default <data>/faces)")
    b.add_argument("--calibration", type=int, default=300, help="calibration crops (default 300)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    e = sub.add_parser("evaluate", help="accuracy of detect → align → embed on LFW-format data")
    e.add_argument("--lfw", type=Path, required=True, help="folder with pairs.txt and the identity folders")
    e.add_argument("--models", type=Path, default=None, help="folder with the built models (default as build --out)")
    e.add_argument("--margin", type=float, default=None, help="open-set margin (default: the edge config's)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def cmd_build(args) -> int:
    from .build import build
    from .lfw import data_root

    lfw = args.lfw or data_root() / "faces"
    out = args.out or default_out()
    res = build(out, lfw, calibration=args.calibration, force=args.force)
    state = "up to date" if res.skipped else "built"
    print(f"{state}: {res.float_path}\n{state}: {res.int8_path}\nmodel card: {res.card_path}")
    return 0


def cmd_evaluate(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from dangol_edge.config import DetectorConfig, load_config
    from dangol_edge.detect import FaceDetector

    from .build import CARD_NAME, FLOAT_NAME, INT8_NAME
    from .evaluate import evaluate_model
    from .lfw import LFWDataset

    folder = args.models or default_out()
    models = [folder / FLOAT_NAME, folder / INT8_NAME]
    for m in models:
        if not m.is_file():
            print(f"dangol-models: error: {m}: model not found (run `dangol-models build`)", file=sys.stderr)
            return 2
    cfg = load_config()
    margin = cfg.matcher.margin if args.margin is None else args.margin
    lfw = LFWDataset(args.lfw)
    reports = []
    with FaceDetector(DetectorConfig(model="short", min_score=0.5)) as det:
        for m in models:
            reports.append(evaluate_model(m, lfw, det, margin=margin, progress=not args.json))
    # open-set figures for both models at the int8 model's FAR=1e-3 threshold (what the edge ships)
    shipped = reports[1].threshold_far_1e3
    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        t = Table(title=f"LFW ({lfw.root}): detect → align → embed")
        t.add_column("metric")
        for r in reports:
            t.add_column(r.model, justify="right")
        rows = [
            ("verification accuracy (10-fold, pairs.txt)", lambda r: f"{r.accuracy * 100:.2f} % ± {r.accuracy_std * 100:.2f}"),
            ("best threshold (cosine)", lambda r: f"{r.best_threshold:.3f}"),
            ("TAR @ FAR=1e-3 (pairs.txt, FaceNet protocol)", lambda r: f"{r.val_at_far_1e3 * 100:.2f} % (FAR {r.val_far * 1000:.2f}e-3)"),
            ("TAR @ FAR=1e-3 (all pairs, BLUFR-style)", lambda r: f"{r.tar_at_far_1e3 * 100:.2f} %"),
            ("threshold @ FAR=1e-3", lambda r: f"{r.threshold_far_1e3:.3f}"),
            ("genuine / impostor pairs", lambda r: f"{r.genuine_pairs:,} / {r.impostor_pairs:,}"),
            ("images without a detection", lambda r: str(r.undetected)),
            ("open set: enrolled / probes / strangers", lambda r: f"{r.open_set.enrolled} / {r.open_set.probes} / {r.open_set.strangers}"),
            ("open set: rank-1", lambda r: f"{r.open_set.rank1 * 100:.2f} %"),
            ("open set: threshold / margin", lambda r: f"{r.open_set.threshold:.3f} / {r.open_set.margin:.2f}"),
            ("open set: correct and accepted (DIR)", lambda r: f"{r.open_set.dir * 100:.2f} %"),
            ("open set: strangers accepted (FAR)", lambda r: f"{r.open_set.far * 100:.2f} %"),
        ]
        for name, f in rows:
            t.add_row(name, *[f(r) for r in reports])
        Console().print(t)
        print(f"edge default threshold (int8, FAR=1e-3): {shipped:.3f}; configured: {cfg.matcher.threshold:.3f}")
    card = folder / CARD_NAME
    if card.is_file():
        data = json.loads(card.read_text())
        data["evaluation"] = {"lfw": str(lfw.root), "reports": [asdict(r) for r in reports]}
        card.write_text(json.dumps(data, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dangol-models``; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .build import BuildError
    from .lfw import LFWError

    try:
        return {"build": cmd_build, "evaluate": cmd_evaluate}[args.command](args)
    except (BuildError, LFWError, FileNotFoundError) as exc:
        print(f"dangol-models: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
