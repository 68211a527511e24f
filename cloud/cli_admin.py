"""``dangol-cloud`` administration commands: broker-config, erase, retention, rotate-key, create-user."""

from __future__ import annotations

import getpass
import sys

from dangol_cloud.cli_common import UsageError, log, out

__all__ = ["cmd_broker_config", "cmd_create_user", "cmd_erase", "cmd_retention", "cmd_rotate_key"]


def cmd_broker_config(args, settings, db) -> int:
    import os
    from urllib.parse import unquote, urlsplit

    from dangol_cloud.broker_auth import (acl_text, dynsec_config, find_dynsec_plugin, password_lines, plugin_conf,
                                          seed_dynsec_file)

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
    state = args.state_dir or args.out  # the plugin saves login changes there: Mosquitto's own folder
    if not state.is_dir():
        raise UsageError(f"--state-dir {state} does not exist: create it owned by the user Mosquitto runs as "
                         "(install -d -m 0700 -o mosquitto -g mosquitto /var/lib/mosquitto/dangol)")
    dynsec_path = (state / "dynamic-security.json").resolve()
    plugin = args.plugin or find_dynsec_plugin() or "/usr/lib/<arch>/mosquitto_dynamic_security.so"
    files = (("passwd", "\n".join(lines) + "\n"), ("acl", acl),
             ("dangol-dynsec.conf", plugin_conf(dynsec_path, plugin)))
    for name, text in files:
        path = args.out / name
        path.write_text(text)
        path.chmod(0o600)
    seed_dynsec_file(dynsec_path, dynsec)
    owner = state.stat().st_uid
    out.print(f"wrote {dynsec_path} ({len(lines)} users; each device pinned to its own client id; owned by the "
              f"folder's owner, uid {owner}, who must be the user Mosquitto runs as: the plugin saves every login "
              f"change there) and {args.out / 'dangol-dynsec.conf'}: include that file in mosquitto.conf and restart "
              f"mosquitto. Also {args.out / 'passwd'} and {args.out / 'acl'} for a broker without the plugin (any "
              "client id accepted).", highlight=False)
    if owner == 0 and os.geteuid() == 0:
        out.print(f"warning: {state} belongs to root: unless Mosquitto runs as root, it cannot save login changes "
                  "there, and a removed device's login would work again after a restart. Use --state-dir "
                  "/var/lib/mosquitto/dangol (firmware-config/mosquitto/README.md).", highlight=False)
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
    """Erase customers not seen for ``retention_days`` (telling the stores) and delete device events older than
    ``device_event_days``, as ``serve`` does daily; ``--dry-run`` only counts the customers."""
    from dangol_cloud.erasure import prune_device_events, retention_candidates, run_retention

    if args.dry_run:
        with db.sessions() as session:
            n = len(retention_candidates(session, settings.retention_days))
        out.print(f"{n} customers not seen for {settings.retention_days} days (dry run)", highlight=False)
        return 0
    with db.transaction() as session:
        ids = run_retention(session, settings.retention_days)
    with db.transaction() as session:
        pruned = prune_device_events(session, settings.device_event_days)
    text = _publish_erasures(settings, db) if ids else "nothing to tell the stores"
    out.print(f"erased {len(ids)} customers not seen for {settings.retention_days} days; {text}", highlight=False)
    out.print(f"{pruned} device event{'' if pruned == 1 else 's'} older than {settings.device_event_days} days "
              "deleted", highlight=False)
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
