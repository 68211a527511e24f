"""``dangol-models evaluate``: run the protocols of :mod:`.evaluate` and :mod:`.openset` on one model's
float32 and int8 files and print them (a table, or JSON), recording them in the model card."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path


def _rows():
    pct = lambda v: f"{v * 100:.2f} %"  # noqa: E731
    return [
        ("verification accuracy (10-fold, pairs.txt)", lambda r: f"{pct(r.accuracy)} ± {r.accuracy_std * 100:.2f}"),
        ("TAR @ FAR=1e-3 (pairs.txt, FaceNet protocol)", lambda r: f"{pct(r.val_at_far_1e3)} (FAR {r.val_far * 1000:.2f}e-3)"),
        ("TAR @ FAR=1e-3 (all pairs, BLUFR-style)", lambda r: pct(r.tar_at_far_1e3)),
        ("threshold @ FAR=1e-3 (cosine)", lambda r: f"{r.threshold_far_1e3:.3f}"),
        ("genuine / impostor pairs", lambda r: f"{r.genuine_pairs:,} / {r.impostor_pairs:,}"),
        ("images without a detection", lambda r: str(r.undetected)),
        ("ms per image (decode, detect, align, embed)", lambda r: f"{r.extra['ms_per_image']:.1f}"),
        ("open set: enrolled / probes / strangers", lambda r: f"{r.open_set.enrolled} / {r.open_set.probes} / {r.open_set.strangers}"),
        ("open set: rank-1", lambda r: pct(r.open_set.rank1)),
        ("open set: threshold / margin", lambda r: f"{r.open_set.threshold:.3f} / {r.open_set.margin:.2f} "
                                                    f"({r.extra.get('threshold_rule', 'FAR=1e-3 point')})"),
        ("open set: correct and accepted (DIR)", lambda r: pct(r.open_set.dir)),
        ("open set: strangers accepted per photo (FPIR)", lambda r: pct(r.open_set.far)),
        ("held-out rule: FPIR per photo (strangers)", lambda r: f"{pct(r.extra['holdout']['fpir_per_photo'])} "
         f"({r.extra['holdout']['strangers_accepted']} of {r.extra['holdout']['strangers']})"),
        ("held-out rule: DIR per photo", lambda r: pct(r.extra["holdout"]["dir_per_photo"])),
        ("held-out rule: 3-photo tracks, DIR", lambda r: f"{pct(r.extra['holdout']['dir_per_track'])} "
         f"(of {r.extra['holdout']['mated_tracks']})"),
        ("held-out rule: 3-photo stranger tracks accepted", lambda r: f"{r.extra['holdout']['stranger_tracks_accepted']} "
         f"of {r.extra['holdout']['stranger_tracks']}"),
    ]


def _pct_or_dash(v: float) -> str:
    return "— (too few strangers)" if v != v else f"{v * 100:.2f} %"


def evaluate_command(args, default_out: Path) -> int:
    """Entry of ``dangol-models evaluate``; returns the exit status (2 when a model file is missing)."""
    from rich.console import Console
    from rich.table import Table

    from dangol_edge.config import DetectorConfig, load_config
    from dangol_edge.detect import FaceDetector

    from .build import file_names
    from .evaluate import evaluate_model
    from .lfw import LFWDataset

    folder = args.models or default_out
    fname, iname, cname = file_names(args.model)
    models = [folder / fname, folder / iname]
    for m in models:
        if not m.is_file():
            print(f"dangol-models: error: {m}: model not found (run `dangol-models build --model {args.model}`)",
                  file=sys.stderr)
            return 2
    cfg = load_config()
    margin = cfg.matcher.margin if args.margin is None else args.margin
    lfw = LFWDataset(args.lfw)
    det_cfg = DetectorConfig(model="short", min_score=0.5, backend=args.detector)
    with FaceDetector.beside(models[1], det_cfg) as det:
        reports = [evaluate_model(m, lfw, det, margin=margin, progress=not args.json,
                                  target_fpir=cfg.matcher.target_fpir, min_votes=cfg.tracker.min_votes) for m in models]
    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        console = Console(width=140)
        t = Table(title=f"LFW ({lfw.root}): {args.detector} → align → {args.model}")
        t.add_column("metric")
        for r in reports:
            t.add_column(r.model, justify="right")
        for name, f in _rows():
            t.add_row(name, *[f(r) for r in reports])
        console.print(t)
        d = Table(title="open-set DET per photo (FNIR at FPIR; people enrolled with one photo)")
        for col in ("model", "gallery", "mated", "non-mated", "FNIR@FPIR=10%", "FNIR@1%", "FNIR@0.1%"):
            d.add_column(col, justify="right")
        for r in reports:
            for row in r.extra["det"]:
                d.add_row(r.model, str(row["gallery"]), str(row["mated"]), str(row["non_mated"]),
                          *(_pct_or_dash(row[f"fnir@fpir={f:g}"]) for f in (0.1, 0.01, 0.001)))
        console.print(d)
    card = folder / cname
    if card.is_file():
        data = json.loads(card.read_text())
        data["evaluation"] = {"lfw": str(lfw.root), "detector": args.detector, "reports": [asdict(r) for r in reports]}
        card.write_text(json.dumps(data, indent=2))
    return 0
