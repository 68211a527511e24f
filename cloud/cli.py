"""``dangol-cloud`` command line: serve, import-purchases, train, evaluate, publish, listen, create-user,
broker-config, erase, retention, gen-key, rotate-key.

This module parses the arguments, runs ``serve`` and ``listen`` and maps errors to exit statuses; the other
commands live by concern in :mod:`dangol_cloud.cli_data` (purchases and the model) and
:mod:`dangol_cloud.cli_admin` (broker, erasure, keys, users).

Exit status: 0 success, 2 usage or input error (the message names the input), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from datetime import datetime
from pathlib import Path

from dangol_cloud.cli_admin import cmd_broker_config, cmd_create_user, cmd_erase, cmd_retention, cmd_rotate_key
from dangol_cloud.cli_common import UsageError, err, log, out
from dangol_cloud.cli_data import cmd_evaluate, cmd_import, cmd_publish, cmd_train

__all__ = ["main"]


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

    p = sub.add_parser("broker-config", help="write Mosquitto's dynamic-security config for the cloud and every device "
                                                "(and a classic password file + ACL as a fallback)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for 'dangol-dynsec.conf', 'passwd', 'acl' (and 'dynamic-security.json' without "
                        "--state-dir)")
    p.add_argument("--plugin", help="path of mosquitto_dynamic_security.so (default: found under /usr/lib)")
    p.add_argument("--state-dir", type=Path,
                   help="folder for 'dynamic-security.json', owned by the user Mosquitto runs as (e.g. "
                        "/var/lib/mosquitto/dangol): the plugin saves every login change there (default: --out)")

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


def cmd_listen(args, settings, db) -> int:
    from dangol_cloud.events import Listener

    if not settings.mqtt_url:
        raise UsageError("no broker configured: set DANGOL_MQTT_URL (mqtt://user:password@host:port)")
    from dangol_cloud.publishing import republish_erasures
    from dangol_cloud.services import welcome

    listener = Listener(db, settings.mqtt_url, client_id=f"{settings.mqtt_client_id}-listener",
                        on_activated=lambda customer_id: welcome(db, settings, [customer_id]),
                        on_erasures=lambda device_id: republish_erasures(db, settings, device_id=device_id),
                        erasure_interval=settings.erasure_republish_minutes * 60).start()  # as serve's listener
    out.print("listening for device events and status; Ctrl-C to stop")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
    return 0


def cmd_serve(args, settings, db) -> int:
    from dangol_cloud.app import create_app
    from dangol_cloud.background import start_background

    from waitress import serve

    from dangol_cloud.store_prices import catalogue_currency

    app = create_app(settings, db=db)
    with db.transaction() as session:  # stored now if not yet (the stores' currency today): no page (GET) writes it
        catalogue_currency(session, settings.currency)
    stop = start_background(app)
    out.print(f"Dangol dashboard on http://{args.host}:{args.port}/ (POS API /api/v1/purchases)", highlight=False)
    from dangol_cloud.web.auth import FIRST_ACCOUNT_HINT, no_accounts

    from dangol_cloud.sale_zones import retime_naive_sales

    with db.transaction() as session:  # a TIMEZONE changed since the last start: the imported hours follow it now
        if (moved := retime_naive_sales(session, settings.timezone)).lines:
            out.print(moved.describe(), markup=False, highlight=False, soft_wrap=True)
    with db.sessions() as session:
        if no_accounts(session):  # a fresh install: nobody can sign in yet
            out.print(FIRST_ACCOUNT_HINT, markup=False, highlight=False, soft_wrap=True)
    try:
        serve(app, host=args.host, port=args.port, threads=args.threads, ident="dangol")
    finally:
        stop()
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
