"""Train the recommender on the database's purchases, store a model version and write menus;
run the offline evaluation on the same data.

Uses helper API :mod:`dangol_cloud.recommend` (``train``, ``Recommender``, ``evaluate``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from dangol_cloud.db import Database
from dangol_cloud.models import (CatalogueItem, Customer, CustomerSegment, Menu, MenuDayparts, ModelVersion, Purchase,
                                 utcnow)
from dangol_cloud.sale_rules import MIN_SALE_TS, latest_sale_ts
from dangol_cloud.sale_zones import retime_naive_sales
from dangol_cloud.settings import Settings
from dangol_cloud.store_zones import local_times, store_zones
from dangol_cloud.training_menus import (choose_picks, daypart_menus, known_customers, origin_stores, pick_rows,
                                         refresh_menus, welcome_regulars)

__all__ = ["TRAIN_STEPS", "NotEnoughData", "TrainReport", "evaluate_database", "load_frames", "refresh_menus",
           "train_from_database", "welcome_regulars"]

log = logging.getLogger(__name__)

#: The ``CURRENCY`` setting's default (:class:`~dangol_cloud.settings.Settings`), for :func:`load_frames`' callers
#: without settings.
DEFAULT_CURRENCY = Settings.model_fields["currency"].default

#: Steps of :func:`train_from_database` in order (its ``progress`` callback gets each name); "clean" to
#: "history" are those of :func:`dangol_cloud.recommend.train` (``dangol_cloud.recommend.model.TRAIN_STEPS``).
TRAIN_STEPS = ("load", "clean", "re-ranker", "factors", "history", "save", "menus", "write")


class NotEnoughData(ValueError):
    """The database holds too few purchases to train or evaluate (message says what is missing)."""


def load_frames(session: Session, tz: str = "UTC", *, units: bool = False, timezone_set: bool = True,
                currency: str = DEFAULT_CURRENCY) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Purchases and catalogue as the recommender's frames.

    Args:
        tz: the ``TIMEZONE`` setting (the zone of the stores without one of their own).
        units: also give each purchase line its ``unit`` price (amount / quantity, NaN if unknown; the amounts are
            decrypted, so only the offline evaluation asks for them: it prices items from before its cut), in the
            catalogue's currency only (:func:`dangol_cloud.store_prices.read_catalogue_currency`): NaN for the
            lines of a store selling in another currency (:func:`~dangol_cloud.store_prices.store_currencies`;
            a line without a store, or of a removed one, sells in ``currency``), as the import prices items
            (:func:`~dangol_cloud.store_prices.price_imported_items`), so no median mixes won and euros.
        timezone_set: whether ``TIMEZONE`` was set (:attr:`~dangol_cloud.settings.Settings.door_timezone` is not
            None). Unset, a store without a zone of its own has no known clock: the doors read their own, so a
            sale time given with its offset (``read_zone`` NULL: the POS API's, an import's aware time) has no
            known local hour there (``timed`` False). A naive file time is the store's wall clock whatever the
            zone it was read in (:mod:`dangol_cloud.sale_zones`): its hour is known.
        currency: the ``CURRENCY`` setting.

    Returns:
        (interactions, items): interactions with ``customer`` (customer id), ``item`` (item id), ``ts``
        (datetime64[ns], local time in the store's own zone, else in ``tz``: :mod:`dangol_cloud.store_zones`),
        ``quantity`` (float), ``store`` (store id or ""), ``timed`` (bool: False where the line's hour of day
        is unknown, see ``timezone_set``; the recommender then leaves it out of the day-parts and the hourly
        popularity, :mod:`dangol_cloud.recommend.data`) [, ``unit``];
        items with ``item``, ``category``, ``price`` (NaN if unknown), ``tags`` (list[str]) and
        ``available`` (False for unavailable or retired items).

    Purchases dated outside the sale-time bounds (:mod:`dangol_cloud.sale_rules`: before 1990 or after tomorrow;
    only a database filled before imports checked them holds such rows) are left out, with a logged count: a
    year-1200 time cannot be a pandas time at all, and a 2205 one would make every real sale look ancient.
    """
    columns = [Purchase.customer_id, Purchase.item_id, Purchase.ts, Purchase.quantity, Purchase.store_id,
               Purchase.read_zone]
    plausible = Purchase.ts.between(MIN_SALE_TS, latest_sale_ts())
    rows = session.execute(select(*columns, *([Purchase.amount] if units else [])).where(plausible)).all()
    skipped = session.scalar(select(func.count()).select_from(Purchase).where(~plausible))
    if skipped:
        log.warning("left %d purchase(s) dated before %s or in the future out of training (stored before imports "
                    "checked sale times; correct or delete them)", skipped, f"{MIN_SALE_TS:%Y-%m-%d}")
    interactions = pd.DataFrame(rows, columns=["customer", "item", "ts", "quantity", "store", "read_zone"]
                                + (["amount"] if units else []))
    if units:
        amount = pd.to_numeric(interactions.pop("amount"), errors="coerce")
        quantity = pd.to_numeric(interactions["quantity"], errors="coerce")
        in_menu_currency = _in_catalogue_currency(session, interactions["store"], currency)
        interactions["unit"] = (amount / quantity).where((quantity > 0) & in_menu_currency)
    interactions["store"] = interactions["store"].fillna("")
    zones = store_zones(session)
    naive = interactions.pop("read_zone").notna()  # a file's wall clock (sale_zones), else an aware time
    interactions["timed"] = naive | timezone_set | interactions["store"].isin(set(zones))
    if not interactions["timed"].all():
        log.warning("%d purchase line(s) have no known hour of day: their sale times came with an offset, at a "
                    "store without a time zone while TIMEZONE is unset (the doors read their own clocks); the "
                    "day-parts leave them out (set the store's zone on the Stores page, or TIMEZONE)",
                    int((~interactions["timed"]).sum()))
    if len(interactions):
        interactions["ts"] = local_times(interactions["ts"], interactions["store"], zones, tz)
    items = pd.DataFrame([
        {"item": i.id, "category": i.category, "price": float("nan") if i.price is None else i.price,
         "tags": list(i.tags or []), "available": bool(i.available and not i.retired)}
        for i in session.scalars(select(CatalogueItem))
    ], columns=["item", "category", "price", "tags", "available"])
    return interactions, items


def _in_catalogue_currency(session: Session, stores: pd.Series, default: str) -> pd.Series:
    """``(n,)`` bool on ``stores``' index: the store (None: a line without one) sells in the catalogue's currency
    (:func:`dangol_cloud.store_prices.read_catalogue_currency`, read without writing; a store's own currency, else
    ``default``, the ``CURRENCY`` setting; also for a removed store's id)."""
    from dangol_cloud.store_prices import read_catalogue_currency, store_currencies

    menu = read_catalogue_currency(session, default)
    code_of = {sid: code for sid, _name, code in store_currencies(session, default)}
    return pd.Series([code_of.get(store, default) == menu for store in stores], index=stores.index, dtype=bool)


@dataclass
class TrainReport:
    """Result of :func:`train_from_database`: the model version, sizes and menus written; the folders of the
    model versions it replaced (``replaced_paths``), how many old folders were deleted and how many could not be."""

    version: str
    path: str
    customers: int
    items: int
    interactions: int
    menus: int
    replaced_paths: list[str] = field(default_factory=list)
    old_models_deleted: int = 0
    delete_failures: int = 0


def train_from_database(db: Database, settings: Settings, progress: Callable[[str], None] | None = None
                        ) -> TrainReport:
    """Train on every purchase, save the model under ``{cloud_home}/models/<version>``, record a
    :class:`ModelVersion` and replace every customer's :class:`Menu` with its new top-N in one transaction:
    ``settings.menu_size`` picks of distinct menu items the door can show (available, not retired), or fewer
    only if the menu has fewer; the picks are the products sold as them (:mod:`dangol_cloud.training_menus`).
    Customers with consent but no purchases yet get the model's cold-start list; customers whose consent was
    withdrawn get no picks (their purchases still train the model).

    Imported sales whose naive times were read in another zone than the one their store reads them in now (a
    ``TIMEZONE`` changed since the last import) first move to the same hours in it
    (:func:`dangol_cloud.sale_zones.retime_naive_sales`), so the day-parts are learnt at the right hours. A sale
    whose local hour is unknown — one given with its offset (the POS API's) at a store without a zone of its own
    while ``TIMEZONE`` is unset (the doors read their own clocks), or a date without a time — counts in the history
    but not in the day-parts or the hourly cold-start popularity (:func:`load_frames`, :mod:`dangol_cloud.recommend.
    data`).

    Feedback (:mod:`dangol_cloud.feedback`): purchases of picks shown at the visit before are credited
    first; likes and credited picks are added as positive interactions of ``kind`` "feedback" (the model learns
    from them; they are no purchases or visits in its history, day-parts or reasons); the products' menu items
    (:func:`dangol_cloud.menu_mapping.menu_item_map`) go to the recommender, so "you often buy this (k of your N
    visits)" counts a menu item over all its products and a menu item sold through its products is never "new on
    the menu". An item a customer disliked is never in that customer's menu, nor any menu item or product it is
    sold as or that is sold as it under the current mapping (:func:`dangol_cloud.menu_mapping.expand_dislikes`).
    Customers without purchases whose segment (age group, area) was recorded get the segment-aware cold-start
    list.

    ``progress`` is called with the name of each step as it starts (:data:`TRAIN_STEPS`, for a progress bar).

    Fault tolerance: the model folder is written atomically and only referenced by the database once the
    version row and all menus commit together; a crash or ``kill -9`` at any point before that commit leaves
    the previous model version current with its menus intact (tests/cloud/test_cloud_faults.py), and a
    failed commit deletes the new folder. A customer erased or merged away while the run was going gets no
    menu and is removed from the saved model before the commit.

    Only the current model is kept: the commit deletes every other :class:`ModelVersion` row (all menus now
    name the new one), then their folders, and older folders no row names, are deleted (a saved model holds
    customer ids and purchase histories; see the README's privacy section).

    Raises:
        NotEnoughData: no purchases in the database.
    """
    from dangol_cloud.feedback import credit_shown_picks, ignored_as_products, training_feedback
    from dangol_cloud.menu_mapping import menu_item_map
    from dangol_cloud.recommend import train

    step = progress or (lambda name: None)
    step("load")
    timezone_set = settings.door_timezone is not None  # else imported sale times are wall clock, not UTC
    with db.transaction() as session:
        moved = retime_naive_sales(session, settings.timezone)  # a TIMEZONE changed since the last import
        if moved.lines:
            log.info("training: %s", moved.describe())
        credit_shown_picks(session, timezone_set=timezone_set)
    with db.sessions() as session:
        interactions, items = load_frames(session, settings.timezone, timezone_set=timezone_set)
        feedback = training_feedback(session, settings.timezone, timezone_set=timezone_set)
        segments = _segments(session)
        menu_item_of = menu_item_map(session)  # POS product -> the menu item it is sold as
    if interactions.empty:
        raise NotEnoughData("no purchases in the database; run dangol-cloud import-purchases first")
    n_purchases = len(interactions)
    if len(feedback.positives):  # positives for the model, never purchases (recommend.data: the "kind" column)
        interactions = pd.concat([interactions.assign(kind="purchase"), feedback.positives.assign(kind="feedback")],
                                 ignore_index=True)
    model = train(interactions, items, progress=step, segments=segments, menu_item_of=menu_item_of,
                  shown_ignored=ignored_as_products(feedback.ignored, menu_item_of, interactions))
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    base, n = model.version, 1
    while (settings.models_dir / model.version).exists():  # same data retrained within the same second
        n += 1
        model.version = f"{base}-{n}"
    step("save")
    path = model.save(settings.models_dir)
    try:
        report = _menus_and_commit(db, settings, model, path, interactions, items, feedback, segments, n_purchases,
                                   step)
    except BaseException:  # nothing references the folder: never leave it behind (nor what it holds)
        shutil.rmtree(path, ignore_errors=True)
        raise
    report.old_models_deleted, report.delete_failures = _delete_old_models(settings, report.version,
                                                                            report.replaced_paths)
    return report


def _menus_and_commit(db: Database, settings: Settings, model, path, interactions: pd.DataFrame,
                      items: pd.DataFrame, feedback, segments: pd.DataFrame, n_purchases: int,
                      step: Callable[[str], None]) -> TrainReport:
    """The menus of the saved ``model`` and the commit of :func:`train_from_database` (its docstring).

    In the write transaction, customers erased or merged away since the purchases were read get no menu and
    are removed from the saved model (:func:`dangol_cloud.recommend.persist.scrub_customers`); every other
    :class:`ModelVersion` row is deleted with the old menus (their folders are deleted after the commit).
    """
    from dangol_cloud.menu_mapping import expand_dislikes, menu_scope
    from dangol_cloud.recommend.persist import scrub_customers
    from dangol_cloud.recommend.segments import segment_values

    with db.sessions() as session:  # enrolled regulars without purchases yet get the cold-start list
        enrolled = set(session.scalars(select(Customer.id).where(Customer.consent_at.is_not(None))))
        withdrawn = set(session.scalars(select(Customer.id).where(Customer.status == "withdrawn")))
        scope = menu_scope(session)  # picks: products sold as a menu item the door can show (training_menus)
        stores = origin_stores(session)  # a cold-start list is that of the customer's store
    exclude = expand_dislikes(feedback.dislikes, scope.mapping)  # a disliked menu item: all its products
    # consent withdrawn: the picks were deleted with it and are never made again (the history still trains)
    customers = sorted((set(interactions["customer"].unique()) | enrolled) - withdrawn)
    step("menus")
    seg = segment_values(segments)
    picks = choose_picks(model, customers, settings.menu_size, scope, exclude, segments=seg, stores=stores)
    now = utcnow()
    known = known_customers(model)  # the others (enrolled, nothing bought yet) get the cold-start list, marked so
    rows = [{"customer_id": c, "model_version": model.version, "generated_at": now,
             "picks": pick_rows(ps, cold_start=c not in known)} for c, ps in picks.items()]
    step("write")
    daypart_rows = daypart_menus(model, customers, settings.menu_size, scope, exclude, segments=seg, stores=stores)
    with db.transaction() as session:
        existing = set(session.scalars(select(Customer.id)))
        gone = (set(customers) | {str(c) for c in model.customers}) - existing
        if gone:  # erased or merged while training ran (their purchases were read before)
            log.info("%d customer(s) erased while training; no menu, removed from model %s", len(gone),
                     model.version)
            scrub_customers(path, gone)
            customers = [c for c in customers if c not in gone]
            rows = [r for r in rows if r["customer_id"] not in gone]
            daypart_rows = [r for r in daypart_rows if r["customer_id"] not in gone]
        session.add(ModelVersion(version=model.version, path=str(path), created_at=now,
                                 n_customers=len(customers), n_items=int(interactions["item"].nunique()),
                                 n_interactions=n_purchases))
        session.flush()
        session.execute(delete(MenuDayparts))
        session.execute(delete(Menu))
        replaced = list(session.scalars(select(ModelVersion.path).where(ModelVersion.version != model.version)))
        session.execute(delete(ModelVersion).where(ModelVersion.version != model.version))
        for start in range(0, len(rows), 5000):
            session.execute(insert(Menu), rows[start:start + 5000])
        for start in range(0, len(daypart_rows), 5000):
            session.execute(insert(MenuDayparts), [{**r, "model_version": model.version}
                                                   for r in daypart_rows[start:start + 5000]])
    log.info("trained model %s on %d purchases (+%d feedback positives); %d menus", model.version, n_purchases,
             len(interactions) - n_purchases, len(rows))
    return TrainReport(version=model.version, path=str(path), customers=len(customers),
                       items=int(interactions["item"].nunique()), interactions=n_purchases, menus=len(rows),
                       replaced_paths=replaced)


#: A folder under ``models_dir`` that no :class:`ModelVersion` names is deleted once older than this (a crashed
#: run's leftovers); younger ones may belong to a training still running in another process.
ORPHAN_AGE_SECONDS = 24 * 3600


def _delete_old_models(settings: Settings, current: str, replaced: list[str]) -> tuple[int, int]:
    """After a commit: delete the folders of the replaced model versions and old orphans under ``models_dir``
    (never anything outside it, never the current one).

    Returns:
        (folders deleted, folders that could not be deleted: logged with their count, retried next time).
    """
    root = settings.models_dir.resolve()
    folders = {p.resolve() for p in map(Path, replaced) if p.resolve().parent == root}
    cut = time.time() - ORPHAN_AGE_SECONDS
    for p in root.iterdir():
        try:
            if p.is_dir() and p.name != current and p.stat().st_mtime < cut:
                folders.add(p)
        except OSError:  # vanished meanwhile
            continue
    folders.discard(root / current)
    deleted = failed = 0
    for folder in sorted(folders):
        if not folder.exists():
            continue
        try:
            shutil.rmtree(folder)
            deleted += 1
        except OSError as exc:
            failed += 1
            log.warning("could not delete old model folder %s (%d so far): %s", folder.name, failed, exc)
    if deleted or failed:
        log.info("deleted %d old model folder(s), %d could not be deleted", deleted, failed)
    return deleted, failed


def _segments(session: Session) -> pd.DataFrame:
    """Recorded customer segments as a frame (``customer``, ``age_group``, ``area``) for the recommender."""
    rows = session.execute(select(CustomerSegment.customer_id, CustomerSegment.age_group, CustomerSegment.area)).all()
    return pd.DataFrame(rows, columns=["customer", "age_group", "area"])


def evaluate_database(db: Database, settings: Settings, *, cut: datetime | None = None,
                      top_items: int | None = None, k: int = 10):
    """Offline evaluation (precision@k etc. against baselines) on the database's purchases.

    Args:
        cut: train on purchases before ``cut`` (local time), test on those after; default: the day that
            leaves the last 20 % of purchase days for testing.
        top_items: restrict to the N most sold items (a menu-sized catalogue).

    With recorded customer segments the report has cold-start rows (popularity vs segment-aware, on the
    customers whose first purchase is after ``cut``).

    Returns:
        The recommender's EvaluationReport (``.to_table()``, ``.to_markdown()``).

    Raises:
        NotEnoughData: no purchases, none on one side of ``cut``, or no customer left to measure (each bought after
            ``cut`` only items first sold then).
    """
    from dangol_cloud.recommend import evaluate

    with db.sessions() as session:
        interactions, items = load_frames(session, settings.timezone, units=True,
                                          timezone_set=settings.door_timezone is not None, currency=settings.currency)
        segments = _segments(session)
    if interactions.empty:
        raise NotEnoughData("no purchases in the database; run dangol-cloud import-purchases first")
    if cut is None:
        days = interactions["ts"].dt.normalize().drop_duplicates().sort_values()
        cut = days.iloc[int(len(days) * 0.8)].to_pydatetime()
    before = (interactions["ts"] < pd.Timestamp(cut)).sum()
    if before == 0 or before == len(interactions):
        first, last = interactions["ts"].min(), interactions["ts"].max()
        raise NotEnoughData(f"--cut {cut:%Y-%m-%d} leaves no purchases on one side (data spans {first:%Y-%m-%d}"
                            f" to {last:%Y-%m-%d})")
    from dangol_cloud.recommend.evaluate import NothingToEvaluate

    try:
        return evaluate(interactions, items, cut=cut, top_items=top_items, k=k,
                        segments=segments if len(segments) else None)
    except NothingToEvaluate as exc:
        raise NotEnoughData(str(exc)) from exc
