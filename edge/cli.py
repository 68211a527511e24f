"""``dangol-edge``: enrol, identify, inspect the gallery, check a config (see README.md, "Edge command line").

Exit status: 0 success, 2 usage or input error (the message names the input), 1 anything else.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("dangol_edge")

EXIT_OK, EXIT_ERROR, EXIT_INPUT = 0, 1, 2


class InputError(Exception):
    """A usage or input error: printed and exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dangol-edge", description="Dangol edge: recognise regulars at the door.")
    p.add_argument("--config", type=Path, help="config file (TOML or JSON); env DANGOL_* overrides it")
    p.add_argument("--home", type=Path, help="data folder (beats $DANGOL_HOME and the config file)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("enroll", help="enrol a customer from photos or a live source")
    e.add_argument("--name", required=True, help="the customer's name; the door greets them by its first word, a "
                   "Hangul or CJK name whole, 'Dr. Lee' as 'Dr. Lee' (dangol_protocol.greeting_name)")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--image", type=Path, nargs="+", help="one or more photos, each with exactly one face")
    g.add_argument("--source", help="camera/video/folder to capture good frames from")
    e.add_argument("--pending", action="store_true",
                   help="create a pending customer (activated once consent is recorded on the staff page)")
    e.add_argument("--consent-text-version",
                   help="version of the consent text the customer agreed to (default: display.consent_version)")
    e.add_argument("--customer-id", help="use this UUID (the customer's id in the cloud) instead of a new one")

    i = sub.add_parser("identify", help="run recognition on a source and print decisions")
    i.add_argument("--source", required=True)
    i.add_argument("--json", action="store_true", help="one JSON object per line")
    i.add_argument("--all-frames", action="store_true", help="also print every matched face (JSON only)")

    c = sub.add_parser("customers", help="inspect and erase the local gallery")
    csub = c.add_subparsers(dest="action", required=True)
    csub.add_parser("list")
    s = csub.add_parser("show")
    s.add_argument("id")
    d = csub.add_parser("delete")
    d.add_argument("id")

    rk = sub.add_parser("rotate-key", help="re-encrypt the gallery and the cached menus' names under a new key "
                                           "(then switch the key)")
    g2 = rk.add_mutually_exclusive_group(required=True)
    g2.add_argument("--new-key-file", type=Path, help="file holding the new key (base64 of 32 bytes)")
    g2.add_argument("--new-key-env", metavar="VAR", help="environment variable holding the new key")
    rk.add_argument("--state-only", action="store_true", help="re-seal only the state file (after a rotation whose "
                    "state step failed; the current key is still the old one)")

    r = sub.add_parser("run", help="the appliance daemon")
    r.add_argument("--source", help="override the camera source")
    r.add_argument("--config", dest="run_config", type=Path, help="config file (same as the global --config)")
    k = sub.add_parser("check-config", help="validate a config file and exit")
    k.add_argument("path", type=Path)
    return p


def _config(args):
    from .config import load_config

    if getattr(args, "run_config", None):
        args.config = args.run_config
    overrides = {"home": args.home} if args.home else {}
    return load_config(args.config, **overrides)


def _open(args):
    from .embed import Embedder
    from .gallery import Gallery

    cfg = _config(args)
    emb = Embedder(cfg.model_path, threads=cfg.embedder.threads)
    gallery = Gallery(cfg.gallery_path, emb.sha256).open()
    return cfg, emb, gallery


def _customer_dict(c, models: dict[str, int] | None = None) -> dict:
    d = {"id": c.id, "name": c.display_name, "greet_as": c.first_name or None, "status": c.status,
         "templates": c.templates,
         "created_at": c.created_at, "consent": c.consent.model_dump(mode="json") if c.consent else None,
         "short_code": c.short_code}
    if c.consent_error:
        d["consent_error"] = c.consent_error
    if models is not None:
        d["template_models"] = {sha[:12]: n for sha, n in sorted(models.items())}
    return d


def cmd_enroll(args) -> int:
    from .cli_enrol import PreviousCrops, upgrade_previous
    from .detect import FaceDetector
    from .enrol import EnrolmentError, enroll, samples_from_photos, samples_from_source
    from .faces import FacePipeline
    from .signup_previous import embed_samples, keep_previous_or_erase
    from .sources import SourceError, open_source

    cfg, emb, gallery = _open(args)
    old = upgrade_previous(cfg, gallery)  # a model upgrade runs: its previous model sees the faces too (cli_enrol)
    pipeline = PreviousCrops(FacePipeline(FaceDetector.beside(cfg.model_path, cfg.detector), emb), old)
    try:
        if args.image:
            samples = samples_from_photos(args.image, pipeline)  # all checked, and one person, before any write
        else:
            with open_source(args.source) as src:
                samples = samples_from_source(src, pipeline, cfg.enrol.templates, cfg.enrol.max_frames)
        previous = embed_samples(old, pipeline.attach(samples))
    except (EnrolmentError, SourceError) as exc:
        raise InputError(str(exc)) from exc
    finally:
        pipeline.close()
    _refuse_a_regular(cfg, gallery, samples, args.image or args.source, previous)
    consent = None
    if not args.pending:
        from pydantic import ValidationError

        from dangol_protocol import Consent

        version = args.consent_text_version or cfg.display.consent_version
        try:
            consent = Consent(recorded_by=f"cli:{getpass.getuser()}"[:120],
                              recorded_at=datetime.now(timezone.utc).replace(microsecond=0), text_version=version)
        except ValidationError as exc:
            raise InputError(f"--consent-text-version {version!r}: must be 1-40 characters") from exc
    if args.customer_id:
        import uuid

        try:
            args.customer_id = str(uuid.UUID(args.customer_id))
        except ValueError as exc:
            raise InputError(f"--customer-id {args.customer_id!r}: not a UUID") from exc
    c = enroll(gallery, args.name, samples, status="pending" if args.pending else "active", consent=consent,
               keep_photos=cfg.enrol.keep_photos, customer_id=args.customer_id,
               pending_ttl_s=cfg.enrol.pending_ttl_h * 3600 if args.pending else None)
    if previous is not None:  # for a later "already a regular" check; the customer erased if they cannot be written
        keep_previous_or_erase(gallery, c.id, previous)
    if args.customer_id:  # an id erased here before: its menus are accepted again (dangol_edge.state_erased)
        from .state import StateStore

        with StateStore(cfg.state_path) as st:
            if st.lift_erasure([args.customer_id]):
                log.info("customer %s was erased on this box before: their menus are cached again", c.id)
    print(json.dumps({"enrolled": _customer_dict(c)}))
    return EXIT_OK


def _refuse_a_regular(cfg, gallery, samples, what, previous=None) -> None:
    """Raise :class:`InputError` when the faces to enrol are an active customer's by the door's rule
    (:class:`~dangol_edge.enrol.DoorRule`): a second record of one face keeps the door from greeting either. While a
    model upgrade runs, ``previous`` (:class:`~dangol_edge.signup_previous.PreviousSamples`) are the faces embedded by
    its previous model, also searched among a regular's templates the upgrade has not migrated yet."""
    import numpy as np

    from .enrol import DoorRule

    rule = DoorRule.or_none(cfg, gallery.model_sha256)
    found = rule.find(gallery, np.stack([s.embedding for s in samples]),
                      previous.pair if previous is not None else None) if rule else None
    if found is not None:
        c = gallery.customer(found.customer_id)
        shown = " ".join(map(str, what)) if isinstance(what, list) else what
        raise InputError(f"{shown}: already enrolled as {c.display_name!r} (customer {c.id}; {found.votes} of "
                         f"{found.templates} faces matched): nothing saved. To enrol them again, erase that customer "
                         f"first (dangol-edge customers delete {c.id})")


def cmd_identify(args) -> int:
    from .recognition import Recognizer
    from .sources import SourceError, open_source

    cfg, emb, gallery = _open(args)
    if gallery.stale_templates:
        log.warning("%d templates were made by a different model and are ignored; run the daemon with "
                    "embedder.previous_model_path set to migrate them, or re-enrol those customers",
                    gallery.stale_templates)
    rec = Recognizer.from_config(cfg, gallery=gallery, embedder=emb)
    names = {c.id: c.display_name for c in gallery.customers()}
    frames = arrivals = 0
    try:
        with open_source(args.source) as src:
            for frame in src.frames():
                frames += 1
                res = rec.process(frame)
                if args.json and args.all_frames:
                    for f, m in zip(res.faces, res.matches):
                        if m is not None:
                            print(json.dumps({"type": "face", "frame": res.frame_index, "ts": round(res.ts, 3),
                                              "customer_id": m.customer_id if m.accepted else None,
                                              "score": round(m.score, 4), "second": round(m.second, 4)}))
                for d in res.decisions:
                    arrivals += d.arrival
                    out = {"type": "arrival" if d.arrival else "decision", "kind": d.kind, "track": d.track_id,
                           "ts": round(d.ts, 3), "frame": res.frame_index, "customer_id": d.customer_id,
                           "name": names.get(d.customer_id) if d.customer_id else None,
                           "score": round(d.score, 4), "votes": d.votes, "frames": d.frames}
                    if d.reason:
                        out["reason"] = d.reason
                    if args.json:
                        print(json.dumps(out), flush=True)
                    else:
                        who = f"{out['name']} ({d.customer_id})" if d.customer_id else "unknown face"
                        print(f"{d.ts:8.2f}s  {'ARRIVAL ' if d.arrival else 'decision'}  {who}  "
                              f"score={d.score:.3f} votes={d.votes}/{d.frames}", flush=True)
    except SourceError as exc:
        raise InputError(str(exc)) from exc
    finally:
        rec.close()
    counts = dict(rec.pipeline.gate.counts)
    log.info("%d frames, %d arrivals, quality gates: %s", frames, arrivals, counts)
    return EXIT_OK


def cmd_customers(args) -> int:
    from .gallery import UnknownCustomer

    _, _, gallery = _open(args)
    try:
        if args.action == "list":
            models = gallery.template_models()
            for c in gallery.customers():
                print(json.dumps(_customer_dict(c, models.get(c.id, {}))))
        elif args.action == "show":
            c = gallery.customer(args.id)
            d = _customer_dict(c)
            d["templates_detail"] = [{"id": t["id"], "quality": t["quality"], "model_sha256": t["model_sha256"],
                                      "created_at": t["created_at"]} for t in gallery.templates(c.id)]
            print(json.dumps(d, indent=2))
        else:
            gallery.delete(args.id)
            queued = _queue_erasure_event(args, args.id)
            print(json.dumps({"deleted": args.id, "cloud_notified": queued}))
    except UnknownCustomer as exc:
        raise InputError(str(exc)) from exc
    return EXIT_OK


def cmd_rotate_key(args) -> int:
    import os

    from .crypto import FieldCipher, parse_key

    if args.new_key_file:
        try:
            text, source = args.new_key_file.read_text(), str(args.new_key_file)
        except OSError as exc:
            raise InputError(f"{args.new_key_file}: {exc.strerror or exc}") from exc
    else:
        text, source = os.environ.get(args.new_key_env, ""), args.new_key_env
        if not text:
            raise InputError(f"{args.new_key_env}: environment variable is empty or unset")
    new = FieldCipher(parse_key(text, source))
    if args.state_only:
        cfg, n = _config(args), 0
    else:
        cfg, _, gallery = _open(args)
        n = gallery.rotate_key(new)  # first: it refuses a wrong current key before anything is changed
    try:
        names, dropped = _rotate_state_key(cfg.state_path, new)
    except StateNotResealed as exc:
        print(json.dumps({"resealed": n, "key_id": new.key_id.hex(), "error": str(exc)}))
        log.error("%s", exc)
        return EXIT_ERROR
    print(json.dumps({"resealed": n, "resealed_menu_names": names, "dropped_menu_names": dropped,
                      "key_id": new.key_id.hex(),
                      "next": "set DANGOL_GALLERY_KEY (or the systemd credential) to the new key"}))
    return EXIT_OK


class StateNotResealed(RuntimeError):
    """The gallery is under the new key but the state file could not be re-sealed (see the message)."""


def _rotate_state_key(path: Path, new) -> tuple[int, int]:
    """Re-seal the cached menus' first names and the queued events in the state file under ``new``
    (:meth:`~dangol_edge.state.StateStore.rotate_key`); a missing file is left alone. Returns (re-sealed, dropped).

    Raises:
        StateNotResealed: the file cannot be written: the gallery is already under the new key, the file's names
            and queued events are still under the old one (the command exits 1, saying what to do).
    """
    import sqlite3

    from .state import StateError, StateStore

    if not path.exists():
        return 0, 0
    try:
        with StateStore(path) as st:
            return st.rotate_key(new)
    except (sqlite3.Error, StateError) as exc:
        raise StateNotResealed(
            f"{path}: could not be re-sealed ({exc}); the gallery is under the new key already, this file's queued "
            "events (enrolments, visits) and cached names still under the old one (kept, not sent under the new "
            "key). Keep the old key set, free the storage or stop the daemon, and run `dangol-edge rotate-key "
            "--state-only` with the same new key; then switch the key") from exc


def _queue_erasure_event(args, customer_id: str) -> bool:
    """Take the erased customer out of the state file — their cached menu and every queued event about them, sent
    or not — and, in the same transaction, queue an ``erasure-done`` event (no erasure id: erased here), which the
    daemon delivers; the cloud records it as a request an owner confirms or dismisses
    (:meth:`~dangol_edge.events.Outbox.erase`). Returns False when this box has no device id (nothing is queued)."""
    import sqlite3
    import uuid

    from .events import EventFactory, Outbox
    from .state import StateError, StateStore

    cfg = _config(args)
    device = cfg.device.id
    if device is None:
        log.warning("no device id configured: the cloud is not told about this erasure")
    try:
        with StateStore(cfg.state_path) as st:
            Outbox(device or uuid.UUID(int=0), st).erase(
                [customer_id], [EventFactory(device).erasure_done([customer_id])] if device else [])
    except sqlite3.Error as exc:
        raise StateError(f"{cfg.state_path}: customer {customer_id} was erased from the gallery, but its queued "
                         f"events and the report to the cloud could not be written: {exc}") from exc
    return device is not None


def cmd_check_config(args) -> int:
    from .config import check_daemon_settings, load_config

    cfg = load_config(args.path, **({"home": args.home} if args.home else {}))
    check_daemon_settings(cfg, str(args.path))
    print(f"{args.path}: ok (home={cfg.home}, model={cfg.model_path})")
    return EXIT_OK


def cmd_run(args) -> int:
    from .daemon import Appliance

    cfg = _config(args)  # Appliance.start checks the settings first (check_daemon_settings, --source included)
    return Appliance(cfg, source=args.source).run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dangol-edge``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .config import ConfigError
    from .crypto import GalleryKeyError
    from .embed import ModelError
    from .gallery import GalleryError
    from .state import StateError

    handlers = {"enroll": cmd_enroll, "identify": cmd_identify, "customers": cmd_customers,
                "check-config": cmd_check_config, "run": cmd_run, "rotate-key": cmd_rotate_key}
    try:
        return handlers[args.command](args)
    except (InputError, ConfigError, ModelError, GalleryKeyError, ValueError) as exc:  # incl. a malformed broker URL
        print(f"dangol-edge: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (GalleryError, StateError) as exc:
        print(f"dangol-edge: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
