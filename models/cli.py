"""``dangol-models build`` and ``dangol-models evaluate --lfw DIR``.

Exit status: 0 success, 2 usage or input error (the message names the input), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
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
    b = sub.add_parser("build", help="build the float32 and int8 TFLite face embedders with their calibration")
    b.add_argument("--model", choices=["sface", "facenet", "all"], default="sface",
                   help="which embedder (default sface; all builds both)")
    b.add_argument("--out", type=Path, default=None, help="output folder (default $DANGOL_MODELS_DIR or <home>/models)")
    b.add_argument("--lfw", type=Path, default=None, help="LFW-format folder for calibration (default <data>/faces)")
    b.add_argument("--calibration", type=int, default=300, help="calibration crops (default 300)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument("--detector", choices=["yunet", "mediapipe"], default="yunet",
                   help="detector the open-set calibration is measured with; the edge runs the calibration only "
                        "behind that detector.backend (default yunet; build mediapipe into its own --out folder)")
    e = sub.add_parser("evaluate", help="accuracy of detect → align → embed on LFW-format data")
    e.add_argument("--lfw", type=Path, required=True, help="folder with pairs.txt and the identity folders")
    e.add_argument("--models", type=Path, default=None, help="folder with the built models (default as build --out)")
    e.add_argument("--margin", type=float, default=None, help="open-set margin (default: the edge config's)")
    e.add_argument("--model", choices=["sface", "facenet"], default="sface", help="which built model (default sface)")
    e.add_argument("--detector", choices=["mediapipe", "yunet"], default="yunet",
                   help="detector and landmarks used for alignment (default yunet, as the edge)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def cmd_build(args) -> int:
    from .build import MODELS, build_all
    from .lfw import data_root

    lfw = args.lfw or data_root() / "faces"
    out = args.out or default_out()
    models = MODELS if args.model == "all" else (args.model,)
    for res in build_all(out, lfw, models, calibration=args.calibration, force=args.force, detector=args.detector):
        state = "up to date" if res.skipped else "built"
        print(f"{state}: {res.float_path}\n{state}: {res.int8_path}\nmodel card: {res.card_path}")
    return 0


def cmd_evaluate(args) -> int:
    from .report import evaluate_command

    return evaluate_command(args, default_out())


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dangol-models``; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .common import BuildError
    from .lfw import LFWError

    try:
        return {"build": cmd_build, "evaluate": cmd_evaluate}[args.command](args)
    except (BuildError, LFWError, FileNotFoundError) as exc:
        print(f"dangol-models: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
