"""``dangol-cloud`` commands on purchases and the model: import-purchases, train, evaluate, publish."""

from __future__ import annotations

import argparse
import time

from dangol_cloud.cli_common import UsageError, err, out

__all__ = ["cmd_evaluate", "cmd_import", "cmd_publish", "cmd_train"]


def cmd_import(args, settings, db) -> int:
    from tqdm import tqdm

    from dangol_cloud.import_text import check_encoding
    from dangol_cloud.importers import count_data_lines, parse_purchases
    from dangol_cloud.ingest import import_rows

    total = count_data_lines(args.path)
    note = check_encoding(args.path).note  # how a file not in UTF-8 is read (it is refused when unsure)
    if note:
        out.print(note, highlight=False, soft_wrap=True)
    rows = parse_purchases(args.path, args.format)
    with tqdm(rows, total=total, unit="row", unit_scale=True, disable=args.no_progress or None,
              desc=f"importing {args.path.name}") as progress, db.transaction() as session:
        report = import_rows(session, progress, source=args.format, key_prefix=args.format, tz=settings.timezone,
                             batch_size=settings.import_batch_size, currency=settings.currency)
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
    filed = f" ({report.filed} store-less filed under the store)" if report.filed else ""
    out.print(f"{args.path}: {report.rows} rows, {report.inserted} purchases imported, {report.duplicates} already "
              f"present{filed}, {len(report.errors)} bad rows skipped; {report.customers_created} new customers, "
              f"{report.items_created} new POS products ({report.seconds:.1f} s)", highlight=False, soft_wrap=True)
    if report.store_note():  # Complete Journey store numbers no store has as its code
        out.print(report.store_note() + ".", highlight=False, soft_wrap=True)
    if report.items_created:  # an import never changes the menu: say where the products are mapped to it
        out.print("New POS products are not on the menu: map them to menu items on the dashboard "
                  "(Menu catalogue → POS products).", highlight=False, soft_wrap=True)
    if args.train and report.inserted:
        return cmd_train(argparse.Namespace(no_publish=False), settings, db)
    return 0


def cmd_train(args, settings, db) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dangol_cloud.background import record_run
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
    if not (args.no_publish and settings.mqtt_url):  # the picks reached the stores (or there is no broker)
        record_run(db, "training-run", "cli", f"model {result.model_version}; {result.menus} menus; "
                                              "dangol-cloud train")
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
                               photo_url=photo_url_builder(settings.photos_dir))
        report = publish(session, settings.mqtt_url, store_id=args.store, currency=settings.currency,
                         timezone=settings.door_timezone)
    out.print(f"published to {report.stores} store(s): {report.catalogue} catalogue, {report.menus} menus, "
              f"{report.erasures} erasure messages", highlight=False)
    return 0
