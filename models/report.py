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
        ("open set: correct and accepted (DIR) per probe / per person",
         lambda r: f"{pct(r.open_set.dir)} / {pct(r.open_set.dir_per_person)}"),
        ("open set: strangers accepted per photo (FPIR; in-sample if calibrated)", lambda r: pct(r.open_set.far)),
        *_holdout_rows(pct),
    ]


def _holdout_rows(pct):
    """Rows of :func:`dangol_models.holdout.holdout_check` (``extra["holdout"]``)."""
    h = lambda r: r.extra["holdout"]  # noqa: E731
    return [
        ("held-out (splits; calibrate / enrol / strangers, ≤ cap photos each)",
         lambda r: f"{h(r)['splits']} splits, cap {h(r)['cap']}, N ≈ {h(r)['enrolled_mean']:.0f} enrolled"),
        ("held-out: threshold min / mean / max", lambda r: " / ".join(f"{t:.3f}" for t in h(r)["thresholds"])),
        ("held-out: strangers accepted per photo, mean [95 % CI]",
         lambda r: f"{pct(h(r)['fpir_per_photo'])} [{pct(h(r)['fpir_ci95'][0])} – {pct(h(r)['fpir_ci95'][1])}]"),
        ("held-out: 95 % CI, strangers' sample only", lambda r: f"{pct(h(r)['fpir_ci95_strangers_only'][0])} – "
         f"{pct(h(r)['fpir_ci95_strangers_only'][1])}"),
        ("held-out: per split min – max; splits above target",
         lambda r: f"{pct(h(r)['fpir_split_range'][0])} – {pct(h(r)['fpir_split_range'][1])}; "
                   f"{h(r)['splits_over_target']} of {h(r)['splits']}"),
        ("held-out: strangers accepted, all splits",
         lambda r: f"{h(r)['strangers_accepted']} of {h(r)['strangers']:,}"),
        ("held-out: DIR per probe / per person",
         lambda r: f"{pct(h(r)['dir_per_photo'])} / {pct(h(r)['dir_per_person'])}"),
        ("held-out: 3-photo tracks, DIR", lambda r: f"{pct(h(r)['dir_per_track'])} (of {h(r)['mated_tracks']})"),
        ("held-out: 3-photo stranger tracks accepted (unseen people)",
         lambda r: f"{h(r)['stranger_tracks_accepted']} of {h(r)['stranger_tracks']}"),
    ]


def _pct_or_dash(v: float) -> str:
    return "— (too few strangers)" if v != v else f"{v * 100:.2f} %"


def evaluate_detector(backend: str):
    """The :class:`dangol_edge.config.DetectorConfig` ``dangol-models evaluate --detector backend`` runs: the build's
    (:func:`.common.detector_config`), so a calibration built with ``--detector mediapipe`` is the one evaluated."""
    from .common import detector_config

    return detector_config(backend)


def evaluate_command(args, default_out: Path) -> int:
    """Entry of ``dangol-models evaluate``; returns the exit status (2 when a model file is missing)."""
    from rich.console import Console
    from rich.table import Table

    from dangol_edge.config import load_config
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
    with FaceDetector.beside(models[1], evaluate_detector(args.detector)) as det:
        reports = [evaluate_model(m, lfw, det, margin=margin, progress=not args.json,
                                  target_fpir=cfg.matcher.target_fpir, min_votes=cfg.tracker.min_votes,
                                  vote_share=cfg.tracker.vote_share) for m in models]
    for r in reports:
        if "calibration_note" in r.extra:
            print(f"dangol-models: note: {r.model}: {r.extra['calibration_note']}", file=sys.stderr)
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
