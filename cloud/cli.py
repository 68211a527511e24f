"""``dangol-cloud`` command line: serve, import-purchases, train, evaluate, publish, listen, create-user,
broker-config, erase, retention, gen-key, rotate-key.

Exit status: 0 success, 2 usage or input error (the message names the input), 1 anything else.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console

__all__ = ["main"]

log = logging.getLogger("dangol_cloud")
err = Console(stderr=True)
out = Console()


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""


def _date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dangol-cloud", description="Dangol cloud service")
    parser.add_argument("--config", type=Path, help="TOML config file (also DANGOL_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the web service, dashboard and MQTT consumer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=4, help="worker threads of the WSGI server (waitress)")

    p = sub.add_parser("import-purchases", help="load purchase history from a file")
    p.add_argument("path", type=Path)
    p.add_argument("--format", required=True, choices=["ta-feng", "completejourney", "csv"])
    p.add_argument("--train", action="store_true", help="train (and publish) after a successful import")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--errors", type=Path, metavar="FILE", help="write every bad row (line, message, raw) to this CSV")

    p = sub.add_parser("train", help="train the recommender, write menus, publish them")
    p.add_argument("--no-publish", action="store_true", help="do not publish even if a broker is configured")

    p = sub.add_parser("evaluate", help="offline metrics against baselines on the database's purchases")
    p.add_argument("--cut", type=_date, help="train before this date, test after (default: last 20%% of days)")
    p.add_argument("--top-items", type=int, help="restrict to the N most sold items")
    p.add_argument("--k", type=int, default=10, help="cut-off of precision@k/recall@k")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")

    p = sub.add_parser("publish", help="push catalogue (a new version if it changed) and menus to the stores now")
    p.add_argument("--store", help="only this store id")

    sub.add_parser("listen", help="run only the MQTT consumer of device events and status")

    p = sub.add_parser("broker-config", help="write a Mosquitto password file and ACL for the cloud and every device")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for 'dynamic-security.json' + 'dangol-dynsec.conf' (and 'passwd', 'acl')")
    p.add_argument("--plugin", help="path of mosquitto_dynamic_security.so (default: found under /usr/lib)")

    p = sub.add_parser("erase", help="erase a customer everywhere (cloud data now; devices over MQTT)")
    p.add_argument("customer_id", metavar="CUSTOMER_ID")

    p = sub.add_parser("retention", help="erase customers not seen for retention_days (DANGOL_RETENTION_DAYS)")
    p.add_argument("--dry-run", action="store_true", help="only count them")

    sub.add_parser("gen-key", help="print a new random data key (base64) for DANGOL_DATA_KEY / dangol-data-key")

    p = sub.add_parser("rotate-key", help="re-encrypt every personal field under a new data key (one transaction)")
    p.add_argument("--new-key-file", type=Path, help="file with the new base64 key (else $DANGOL_NEW_DATA_KEY)")

    p = sub.add_parser("create-user", help="create a dashboard user (the first owner)")
    p.add_argument("email")
    p.add_argument("--role", choices=["owner", "staff"], default="owner")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--store", action="append", default=[], metavar="STORE_ID",
                   help="a store a staff user works at (repeat for several); staff see only their stores' customers")
    return parser


def _context(args):
    from dangol_cloud.db import Database
    from dangol_cloud.settings import load_settings

    settings = load_settings(args.config)
    db = Database.from_settings(settings)
    db.migrate()
    db.require_key()
    return settings, db


def cmd_import(args, settings, db) -> int:
    from tqdm import tqdm

    from dangol_cloud.importers import count_data_lines, parse_purchases
    from dangol_cloud.ingest import import_rows

    total = count_data_lines(args.path)
    rows = parse_purchases(args.path, args.format)
    with tqdm(rows, total=total, unit="row", unit_scale=True, disable=args.no_progress or None,
              desc=f"importing {args.path.name}") as progress, db.transaction() as session:
        report = import_rows(session, progress, source=args.format, key_prefix=args.format, tz=settings.timezone,
                             batch_size=settings.import_batch_size)
    for error in report.errors[:50]:
        err.print(f"{args.path}:{error.line}: {error.message}", markup=False, highlight=False, soft_wrap=True)
    if len(report.errors) > 50:
        hint = f" (all in {args.errors})" if args.errors else " (use --errors FILE for all)"
        err.print(f"... and {len(report.errors) - 50} more bad rows{hint}", markup=False, soft_wrap=True)
    if args.errors:
        import csv

        with args.errors.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["line", "message", "raw"])
            writer.writerows((e.line, e.message, e.raw) for e in report.errors)
    out.print(f"{args.path}: {report.rows} rows, {report.inserted} purchases imported, {report.duplicates} already "
              f"present, {len(report.errors)} bad rows skipped; {report.customers_created} new customers, "
              f"{report.items_created} new POS products ({report.seconds:.1f} s)", highlight=False, soft_wrap=True)
    if report.items_created:  # an import never changes the menu: say where the products are mapped to it
        out.print("New POS products are not on the menu: map them to menu items on the dashboard "
                  "(Menu catalogue → POS products).", highlight=False, soft_wrap=True)
    if args.train and report.inserted:
        return cmd_train(argparse.Namespace(no_publish=False), settings, db)
    return 0


def cmd_train(args, settings, db) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dangol_cloud.services import PublishFailed, retrain_and_publish
    from dangol_cloud.training import TRAIN_STEPS

    steps = TRAIN_STEPS + (("publish",) if settings.mqtt_url and not args.no_publish else ())
    columns = (TextColumn("training: {task.description:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("start", total=len(steps))
        done: list[tuple[str, float]] = []

        def step(name: str) -> None:
            if done:
                bar.advance(task)
            done.append((name, time.perf_counter()))
            bar.update(task, description=name)

        try:
            result = retrain_and_publish(db, settings, progress=step, published_by="dangol-cloud train",
                                         publish=not args.no_publish)
        except PublishFailed as exc:
            result = exc.result
            _print_trained(result, done)
            raise
        done.append(("end", time.perf_counter()))
        bar.update(task, completed=len(steps), description="done")
    _print_trained(result, done)
    if result.messages_published is not None:
        out.print(f"published to {result.stores} store(s): {result.catalogue_messages} catalogue, "
                  f"{result.menu_messages} menus, {result.erasure_messages} erasure messages", highlight=False)
    return 0


def _print_trained(result, done: list[tuple[str, float]]) -> None:
    seconds = ", ".join(f"{a} {t1 - t0:.1f}" for (a, t0), (_, t1) in zip(done, done[1:]))
    out.print(f"trained in {result.seconds:.1f} s ({seconds} s)", highlight=False)
    out.print(f"model {result.model_version}: {result.interactions} purchases, {result.customers} customers, "
              f"{result.items} items; {result.menus} menus written to the database", highlight=False)


def cmd_evaluate(args, settings, db) -> int:
    from dangol_cloud.training import evaluate_database

    if args.top_items is not None and args.top_items < 1:
        raise UsageError(f"--top-items {args.top_items}: must be at least 1")
    with err.status("evaluating ..."):
        report = evaluate_database(db, settings, cut=args.cut, top_items=args.top_items, k=args.k)
    print(report.to_markdown() if args.markdown else report.to_table())
    return 0


def cmd_publish(args, settings, db) -> int:
    from dangol_cloud.models import Store
    from dangol_cloud.publishing import ensure_current_version, photo_url_builder, publish

    if not settings.mqtt_url:
        raise UsageError("no broker configured: set DANGOL_MQTT_URL (mqtt://user:password@host:port)")

    with db.transaction() as session:  # one transaction: a failed publish leaves no new version behind
        if args.store is not None and session.get(Store, args.store) is None:
            raise UsageError(f"--store {args.store}: no such store")
        ensure_current_version(session, published_by="dangol-cloud publish",
                               photo_url=photo_url_builder(settings.public_url))
        report = publish(session, settings.mqtt_url, store_id=args.store, currency=settings.currency)
    out.print(f"published to {report.stores} store(s): {report.catalogue} catalogue, {report.menus} menus, "
              f"{report.erasures} erasure messages", highlight=False)
    return 0


def cmd_listen(args, settings, db) -> int:
    from dangol_cloud.events import Listener

    if not settings.mqtt_url:
        raise UsageError("no broker configured: set DANGOL_MQTT_URL (mqtt://user:password@host:port)")
    from dangol_cloud.publishing import republish_erasures
    from dangol_cloud.services import welcome

    listener = Listener(db, settings.mqtt_url, client_id=f"{settings.mqtt_client_id}-listener",
                        on_activated=lambda customer_id: welcome(db, settings, [customer_id]),
                        on_erasures=lambda device_id: republish_erasures(db, settings, device_id=device_id)).start()
    out.print("listening for device events and status; Ctrl-C to stop")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
    return 0


def cmd_broker_config(args, settings, db) -> int:
    import json
    from urllib.parse import unquote, urlsplit

    from dangol_cloud.broker_auth import acl_text, dynsec_config, find_dynsec_plugin, password_lines, plugin_conf

    parts = urlsplit(settings.mqtt_url or "")
    if not parts.username:
        raise UsageError("DANGOL_MQTT_URL must name the cloud's broker user (mqtt://user:password@host:port)")
    user, password = unquote(parts.username), unquote(parts.password or "")
    with db.sessions() as session:
        lines = password_lines(session, cloud_user=user, cloud_password=password)
        acl = acl_text(session, cloud_user=user)
        try:
            dynsec = dynsec_config(session, cloud_user=user, cloud_password=password)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    dynsec_path = (args.out / "dynamic-security.json").resolve()
    plugin = args.plugin or find_dynsec_plugin() or "/usr/lib/<arch>/mosquitto_dynamic_security.so"
    files = (("passwd", "\n".join(lines) + "\n"), ("acl", acl), ("dynamic-security.json", json.dumps(dynsec, indent=1)),
             ("dangol-dynsec.conf", plugin_conf(dynsec_path, plugin)))
    for name, text in files:
        path = args.out / name
        path.write_text(text)
        path.chmod(0o600)
    out.print(f"wrote {args.out / 'dynamic-security.json'} ({len(lines)} users; each device pinned to its own client id) "
              f"and {args.out / 'dangol-dynsec.conf'}: include that file in mosquitto.conf and restart mosquitto. "
              f"Also {args.out / 'passwd'} and {args.out / 'acl'} for a broker without the plugin (any client id "
              "accepted).", highlight=False)
    return 0


def cmd_serve(args, settings, db) -> int:
    from dangol_cloud.app import create_app
    from dangol_cloud.background import start_background

    from waitress import serve

    app = create_app(settings, db=db)
    stop = start_background(app)
    out.print(f"Dangol dashboard on http://{args.host}:{args.port}/ (POS API /api/v1/purchases)", highlight=False)
    try:
        serve(app, host=args.host, port=args.port, threads=args.threads, ident="dangol")
    finally:
        stop()
    return 0


def _publish_erasures(settings, db) -> str:
    from dangol_cloud.mqtt import MqttError
    from dangol_cloud.publishing import republish_erasures

    if not settings.mqtt_url:
        return "no broker configured: the devices are told by the next publish / serve"
    try:
        return f"{republish_erasures(db, settings)} erasure messages published; devices confirm with erasure-done"
    except MqttError as exc:  # the erasure is committed and stays pending: serve re-publishes it
        log.warning("erasure not yet sent to the stores: %s", exc)
        return f"not yet sent to the stores ({exc}); serve re-publishes it until every device confirms"


def cmd_erase(args, settings, db) -> int:
    from dangol_cloud.erasure import erase_customer

    try:
        with db.transaction() as session:
            erasure = erase_customer(session, args.customer_id, actor="cli")
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    out.print(f"customer {args.customer_id} erased (erasure {erasure.id}); {_publish_erasures(settings, db)}",
              highlight=False)
    return 0


def cmd_retention(args, settings, db) -> int:
    from dangol_cloud.erasure import retention_candidates, run_retention

    if args.dry_run:
        with db.sessions() as session:
            n = len(retention_candidates(session, settings.retention_days))
        out.print(f"{n} customers not seen for {settings.retention_days} days (dry run)", highlight=False)
        return 0
    with db.transaction() as session:
        ids = run_retention(session, settings.retention_days)
    text = _publish_erasures(settings, db) if ids else "nothing to tell the stores"
    out.print(f"erased {len(ids)} customers not seen for {settings.retention_days} days; {text}", highlight=False)
    return 0


def cmd_rotate_key(args, settings, db) -> int:
    import os

    from dangol_cloud.crypto import decode_key, load_key_file
    from dangol_cloud.rotation import rotate_key

    if args.new_key_file is not None:
        new_key = load_key_file(args.new_key_file)
    elif os.environ.get("DANGOL_NEW_DATA_KEY"):
        new_key = decode_key(os.environ["DANGOL_NEW_DATA_KEY"], "DANGOL_NEW_DATA_KEY")
    else:
        raise UsageError("give the new key: --new-key-file PATH or DANGOL_NEW_DATA_KEY (make one with gen-key)")
    report = rotate_key(db, new_key)
    total = sum(report.values.values())
    out.print(f"re-encrypted {total} values under data key {report.new_key_id} (was {report.old_key_id}); now "
              "configure the new key (DANGOL_DATA_KEY or the dangol-data-key credential), restart the service "
              "and destroy the old key", highlight=False)
    return 0


def cmd_create_user(args, settings, db) -> int:
    from sqlalchemy import select

    from dangol_cloud.models import User
    from dangol_cloud.security import hash_password

    if "@" not in args.email:
        raise UsageError(f"{args.email!r} is not an e-mail address")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("repeat: ") != password:
            raise UsageError("the passwords differ")
    if len(password) < 8:
        raise UsageError("password: use at least 8 characters")
    from dangol_cloud.models import Store, UserStore

    if args.store and args.role != "staff":
        raise UsageError("--store: only staff users are limited to stores (owners see every store)")
    with db.transaction() as session:
        if session.scalar(select(User).where(User.email == args.email.lower())):
            raise UsageError(f"user {args.email} already exists")
        unknown = [ref for ref in args.store if session.get(Store, ref) is None]
        if unknown:
            raise UsageError(f"--store: no store with id {', '.join(unknown)}")
        user = User(email=args.email.lower(), password_hash=hash_password(password), role=args.role)
        session.add(user)
        session.flush()
        session.add_all(UserStore(user_id=user.id, store_id=ref) for ref in dict.fromkeys(args.store))
    out.print(f"created {args.role} {args.email}")
    return 0


COMMANDS = {"serve": cmd_serve, "import-purchases": cmd_import, "train": cmd_train, "evaluate": cmd_evaluate,
            "publish": cmd_publish, "listen": cmd_listen, "create-user": cmd_create_user,
            "broker-config": cmd_broker_config, "erase": cmd_erase, "retention": cmd_retention,
            "rotate-key": cmd_rotate_key}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 usage/input error, 1 other failure)."""
    from dangol_cloud.importers import ImportFormatError
    from dangol_cloud.mqtt import MqttError
    from dangol_cloud.settings import ConfigError
    from dangol_cloud.training import NotEnoughData

    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints its own message; keep its status (2 for usage)
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "gen-key":
        from dangol_cloud.crypto import generate_key

        print(generate_key())
        return 0
    try:
        settings, db = _context(args)
        try:
            return COMMANDS[args.command](args, settings, db)
        finally:
            db.dispose()
    except (UsageError, ConfigError, ImportFormatError, NotEnoughData) as exc:
        err.print(f"dangol-cloud {args.command}: {exc}", markup=False, highlight=False)
        return 2
    except MqttError as exc:
        err.print(f"dangol-cloud {args.command}: {exc}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: report and exit 1
        log.exception("dangol-cloud %s failed", args.command)
        err.print(f"dangol-cloud {args.command}: {type(exc).__name__}: {exc}", markup=False, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
