"""Imported sales whose naive file time was read in another zone than their store's now: moved to the new hours.

A purchase file's naive sale times are the shop's wall clock: the import reads them in the store's own zone (Stores
page) or else in the ``TIMEZONE`` setting (:func:`dangol_cloud.store_zones.store_zones`), stores them in UTC, and
records the zone on the line (``purchases.read_zone``; NULL for a time that came with its offset, as POS sales do).
The line's idempotency key hashes that UTC time (:mod:`dangol_cloud.purchase_keys`). When the zone a store's naive
times are read in changes — ``TIMEZONE`` set after a first import (an env setting: noticed at the next start, import
or training), or a store's own zone changed on the Stores page (:func:`change_store_zone`, run by a background job
once the owner confirms: :mod:`dangol_cloud.zone_jobs`) — :func:`retime_naive_sales` moves each of its lines read in
the old zone to the same wall-clock time in the new one and re-keys it, in the caller's transaction: the hours are
right, and a re-import of the same export finds every line again instead of storing the history a second time.
Each line's ``read_zone`` says which zone its stored time was read in, so a move that did not finish (a failed or
interrupted transaction rolls back) is simply still pending: the next call moves it.

Most calls move nothing (every start, import and training calls it): :func:`pending_stores` answers that with two
seeks of the index ``ix_purchases_store_read_zone`` (revision 0014) per store, without a write.

The wall time is read back from the stored instant (:func:`wall_time`). A daylight-saving gap makes two wall times
read as one instant (in Europe/Berlin 02:30 on the night the clocks skip 02:00–03:00 is read with the offset before
the change, as 01:30 UTC: the instant of 03:30); the clock's own time is taken, except for a midnight in the gap (a
date without a time, in a zone that skips midnight), which is what a file of dates wrote. Each moved line keeps its
occurrence; a new key another line already holds (two identical sale lines, one read in each zone) takes the next
free occurrence (:func:`dangol_cloud.purchase_keys.changed_keys`), so no line is lost.

Lines imported before revision 0013 carry :data:`SETTING_AT_IMPORT` (the migration could not know ``TIMEZONE``):
:func:`retime_naive_sales` first takes them as read in the zone their store reads naive times in at that moment.

Moving and re-keying lines while an import keys the same export with the zones it read would store that history
twice (the import's ``ON CONFLICT DO NOTHING`` misses the moved keys), so both hold the sale-keys lock of
:mod:`dangol_cloud.sale_locks` for their whole transaction, whatever process runs them: an import shared
(:func:`import_zones`), a move exclusive (:func:`retime_naive_sales` once it finds lines to move,
:func:`change_store_zone` always) — a move waits for the running imports, and an import starting meanwhile for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import bindparam, case, func, inspect, literal, or_, select, update
from sqlalchemy.orm import Session

from dangol_cloud.crypto import keyring_of
from dangol_cloud.models import Purchase, Store
from dangol_cloud.purchase_keys import IMPORT_KEY, changed_keys, content_of, keyed
from dangol_cloud.sale_locks import hold_sale_keys, share_sale_keys

__all__ = ["SETTING_AT_IMPORT", "Retimed", "change_store_zone", "import_zones", "naive_lines", "pending_stores",
           "retime_naive_sales", "wall_time"]

log = logging.getLogger(__name__)

#: ``read_zone`` of the lines migration 0013 found: read in the ``TIMEZONE`` of their import, not known then.
SETTING_AT_IMPORT = "TIMEZONE"
BATCH = 1000
#: Lines moved at a time (whole customers: a few more), to bound the memory of a long history's move.
CHUNK_LINES = 20_000
#: Stores whose lines :func:`pending_stores` looks at in one statement (two index seeks each).
PROBED = 100


@dataclass
class Retimed:
    """Imported lines moved to another zone's hours: ``moves`` ``{(zone read in, zone now): lines}``. ``recorded``:
    False on a schema from before revision 0013 (no ``read_zone``: nothing is recorded or moved; only tests of the
    older migrations import into one)."""

    moves: dict[tuple[str, str], int] = field(default_factory=dict)
    recorded: bool = True

    @property
    def lines(self) -> int:
        """Lines moved."""
        return sum(self.moves.values())

    def describe(self) -> str:
        """What moved, for the owner ("" when nothing did)."""
        return "; ".join(f"{n:,} imported sales whose file times were read as {old} time moved to the same hours "
                         f"in {new}" for (old, new), n in sorted(self.moves.items()))


def wall_time(instant: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall time an import read as ``instant`` in ``zone`` (fold 0, as
    :func:`dangol_cloud.ingest.import_rows` reads one): its local time, or — the instant of a wall time in a skipped
    hour — that midnight when it is one (a date without a time), see the module docstring."""
    shown = instant.astimezone(zone).replace(tzinfo=None)
    offsets = {(instant + days).astimezone(zone).utcoffset() for days in (timedelta(days=-1), timedelta(days=1))}
    for offset in offsets:
        skipped = (instant + offset).replace(tzinfo=None)
        if skipped != shown and skipped.time() == time(0) \
                and skipped.replace(tzinfo=zone).astimezone(timezone.utc) == instant:
            return skipped
    return shown


def _zone_now(store_column, zones: dict[str, str], default: str):
    """SQL: the zone the naive times of the line's store are read in now (its own, else ``default``)."""
    return case(zones, value=store_column, else_=literal(default)) if zones else literal(default)


def naive_lines(session: Session, store_id: str) -> int:
    """The imported lines of ``store_id`` whose file time was naive (read in a zone: moved when it changes)."""
    return session.scalar(select(func.count()).select_from(Purchase)
                          .where(Purchase.store_id == store_id, Purchase.read_zone.is_not(None))) or 0


def import_zones(session: Session, default_zone: str) -> tuple[dict[str | None, ZoneInfo], Retimed]:
    """For an import (:func:`dangol_cloud.ingest.import_rows`): ``({store id: its own zone, None: default_zone},
    the lines moved first by retime_naive_sales)``. Then holds the sale-keys lock shared until the caller's
    transaction ends (:func:`dangol_cloud.sale_locks.share_sale_keys`; waits while a zone change runs), the zones
    read under it: no zone change commits before the import does.

    Raises:
        ValueError: a store's own zone is unknown. ZoneInfoNotFoundError: ``default_zone`` is.
        sqlalchemy.exc.OperationalError: SQLite stayed busy past its timeout
            (:func:`dangol_cloud.sale_locks.busy_message`).
    """
    from dangol_cloud.store_zones import store_zones

    retimed = retime_naive_sales(session, default_zone)
    share_sale_keys(session)  # no zone change commits before the import does (dangol_cloud.sale_locks) ...
    zones = {None: ZoneInfo(default_zone)} | {store: ZoneInfo(name) for store, name in store_zones(session).items()}
    return zones, retimed  # ... so these are the zones of its whole transaction


def pending_stores(session: Session, zones: dict[str, str], default_zone: str) -> list[str | None]:
    """The stores (None: lines without a store) holding an imported line whose naive time was read in another zone
    than the one the store reads naive times in now (``zones``: :func:`~dangol_cloud.store_zones.store_zones`; else
    ``default_zone``), lines from before revision 0013 (:data:`SETTING_AT_IMPORT`) included.

    Read-only and cheap on any history: the smallest and the largest ``read_zone`` of each store's lines, each a
    min/max seek of the index on ``(store_id, read_zone)`` (revision 0014) that SQLite and PostgreSQL answer without
    reading the store's lines, :data:`PROBED` stores a statement; a store has nothing to move when both are its zone
    now (or it has no naive line). An aggregate rather than a range test (``read_zone < zone``): PostgreSQL plans
    either but, without statistics across the two columns, may scan the table for a range it expects to hold rows."""
    table = Purchase.__table__
    stores: list[str | None] = [None, *session.scalars(select(Store.id).order_by(Store.id))]
    found: list[str | None] = []
    for start in range(0, len(stores), PROBED):
        batch = stores[start:start + PROBED]
        probes = []
        for store in batch:
            mine = table.c.store_id.is_(None) if store is None else table.c.store_id == store
            probes += [select(func.min(table.c.read_zone)).where(mine).scalar_subquery(),
                       select(func.max(table.c.read_zone)).where(mine).scalar_subquery()]
        seen = session.execute(select(*probes)).one()
        for n, store in enumerate(batch):
            low, high = seen[2 * n], seen[2 * n + 1]
            zone = default_zone if store is None else zones.get(store, default_zone)
            if low is not None and not low == high == zone:
                found.append(store)
    return found


def _of_stores(column, stores: list[str | None]):
    """SQL: the line's store is one of ``stores`` (None: no store)."""
    named = [store for store in stores if store is not None]
    terms = ([column.in_(named)] if named else []) + ([column.is_(None)] if None in stores else [])
    return or_(*terms)


def retime_naive_sales(session: Session, default_zone: str,
                       progress: Callable[[int, int], None] | None = None) -> Retimed:
    """Move every imported line whose naive time was read in another zone than the one its store reads naive times
    in now (its own zone, else ``default_zone``, the ``TIMEZONE`` setting; a line without a store: ``default_zone``)
    to the same wall-clock time in that zone, and re-key it; in the caller's transaction (see the module
    docstring). A line whose time cannot be moved (a zone no longer known, a time outside what UTC can express) is
    left as it is and logged. Cheap when nothing moves: a look-up of the schema, the stores and their zones, and
    the read-only index seeks of :func:`pending_stores` (no write, no lock); else it holds the sale-keys lock
    exclusive until the caller's transaction ends (:func:`dangol_cloud.sale_locks.hold_sale_keys`: waits for the
    running imports), looks again, and the stores found are looked at — one UPDATE (their lines from before
    revision 0013) and one grouped SELECT — and their lines move :data:`CHUNK_LINES` at a time.

    ``progress`` (optional) is called with ``(lines moved so far, lines to move)``: once when the lines to move are
    counted (0 done), then after each chunk; not called when nothing moves.

    Raises:
        ValueError: a store's own zone is unknown (:func:`~dangol_cloud.store_zones.store_zones`).
        sqlalchemy.exc.OperationalError: SQLite stayed busy past its timeout
            (:func:`dangol_cloud.sale_locks.busy_message`).
    """
    from dangol_cloud.store_zones import store_zones  # (pandas: imported when used, as ingest did)

    if not any(column["name"] == "read_zone" for column in inspect(session.connection()).get_columns("purchases")):
        return Retimed(recorded=False)
    zones = store_zones(session)
    report = Retimed()
    if not pending_stores(session, zones, default_zone):
        return report
    hold_sale_keys(session)  # no import keys lines meanwhile (dangol_cloud.sale_locks); then read again, as it left
    zones = store_zones(session)
    stores = pending_stores(session, zones, default_zone)
    if not stores:  # moved meanwhile (a zone change, another process's start)
        return report
    table = Purchase.__table__
    now = _zone_now(table.c.store_id, zones, default_zone)
    of_stores = _of_stores(table.c.store_id, stores)
    session.execute(update(table).where(of_stores, table.c.read_zone == SETTING_AT_IMPORT).values(read_zone=now))
    elsewhere = (of_stores, table.c.read_zone.is_not(None), table.c.read_zone != now)
    counts = session.execute(select(table.c.customer_id, func.count()).where(*elsewhere)
                             .group_by(table.c.customer_id).order_by(table.c.customer_id)).all()
    total, done = sum(count for _customer, count in counts), 0
    if progress is not None and total:
        progress(0, total)
    chunk, size = [], 0
    for n, (customer, count) in enumerate(counts):  # a customer's lines together: their keys name the customer
        chunk.append(customer)
        size += count
        if size >= CHUNK_LINES or len(chunk) >= BATCH or n == len(counts) - 1:
            lines = session.execute(select(table.c.id, table.c.idempotency_key, table.c.store_id, table.c.customer_id,
                                           table.c.item_id, table.c.product_id, table.c.ts, table.c.quantity,
                                           table.c.amount, table.c.read_zone)
                                    .where(*elsewhere, table.c.customer_id.in_(chunk)).order_by(table.c.id)).all()
            _move(session, lines, zones, default_zone, report)
            done += size
            if progress is not None:
                progress(done, total)
            chunk, size = [], 0
    if report.lines:
        log.info("%s", report.describe())
    return report


def change_store_zone(session: Session, store_id: str, zone: str | None, default_zone: str,
                      progress: Callable[[int, int], None] | None = None) -> tuple[Retimed, Retimed]:
    """Give ``store_id`` its own time zone ``zone`` (an IANA name; None: the ``TIMEZONE`` setting, ``default_zone``)
    and move its imported lines read in the zone before to the same hours in the new one, re-keyed, all in the
    caller's transaction — commit it for both, roll it back for neither. First every line as read so far
    (:func:`retime_naive_sales` with the zones before the change: lines from before revision 0013 take the zone in
    force), then the change, then the move (``progress`` as for :func:`retime_naive_sales`, of this move only).
    First of all it holds the sale-keys lock exclusive (:func:`dangol_cloud.sale_locks.hold_sale_keys`): it waits
    for the imports running (in any process) to commit, and imports starting meanwhile wait for it.

    Returns:
        ``(lines moved before the change — a TIMEZONE changed since the last start, import or training —, lines
        moved by the change)``.

    Raises:
        LookupError: no such store. ValueError: ``zone`` is not a known IANA zone, or a store's own zone is unknown.
        sqlalchemy.exc.OperationalError: SQLite stayed busy past its timeout (nothing changed).
    """
    from dangol_protocol import check_zone

    from dangol_cloud.models import StoreSetting

    if zone is not None:
        check_zone(zone)
    hold_sale_keys(session)  # waits for the running imports: they keyed their lines in the zones before
    if session.get(Store, store_id) is None:
        raise LookupError(f"store {store_id} does not exist (removed meanwhile?)")
    before = retime_naive_sales(session, default_zone)
    row = session.get(StoreSetting, store_id) or StoreSetting(store_id=store_id)
    row.timezone = zone
    session.add(row)
    session.flush()
    return before, retime_naive_sales(session, default_zone, progress)


def _move(session: Session, lines: list, zones: dict[str, str], default_zone: str, report: Retimed) -> None:
    """Move ``lines`` (``(id, key, store, customer, item, product, ts, quantity, amount, zone read in)``, id order,
    every line of their customers that moves) to their store's zone now; count them in ``report``."""
    table = Purchase.__table__
    moved: dict[int, tuple[datetime, str]] = {}  # purchase id -> (new UTC time, zone now)
    groups: dict[str, list] = {}  # zone read in -> [(id, stored key, content)] of its import lines
    after: dict[str, dict] = {}  # zone read in -> {content: content at the new time}
    for pid, stored, store, customer, item, product, ts, quantity, amount, read in lines:
        new_zone = zones.get(store, default_zone)
        try:
            ts_now = wall_time(ts, ZoneInfo(read)).replace(tzinfo=ZoneInfo(new_zone)).astimezone(timezone.utc)
        except (OverflowError, ValueError, ZoneInfoNotFoundError) as exc:
            log.warning("purchase %s keeps its time %s (read as %s time): %s", pid, ts.isoformat(), read, exc)
            continue
        moved[pid] = (ts_now, new_zone)
        report.moves[(read, new_zone)] = report.moves.get((read, new_zone), 0) + 1
        if IMPORT_KEY.match(stored):
            fields = {"store_id": store, "customer_id": customer, "item_id": item, "product_id": product,
                      "quantity": quantity, "amount": amount}
            content = content_of(**fields, ts=ts)
            groups.setdefault(read, []).append((pid, stored, content))
            after.setdefault(read, {})[content] = content_of(**fields, ts=ts_now)
    keys = _new_keys(session, groups, after, set(moved))
    for start in range(0, len(keys), BATCH):  # first out of the way: a moved line may take another's current key
        session.execute(update(table).where(table.c.id == bindparam("pid"))
                        .values(idempotency_key=bindparam("new_key")),
                        [{"pid": pid, "new_key": f"retime:{pid}"} for pid in list(keys)[start:start + BATCH]])
    rows = [{"pid": pid, "new_ts": ts_now, "zone": zone, "new_key": keys.get(pid)}
            for pid, (ts_now, zone) in moved.items()]
    for rekeyed in (True, False):
        stmt = update(table).where(table.c.id == bindparam("pid")).values(
            ts=bindparam("new_ts"), read_zone=bindparam("zone"),
            **({"idempotency_key": bindparam("new_key")} if rekeyed else {}))
        chosen = [row for row in rows if (row["new_key"] is not None) == rekeyed]
        for start in range(0, len(chosen), BATCH):
            session.execute(stmt, chosen[start:start + BATCH])


def _new_keys(session: Session, groups: dict[str, list], after: dict[str, dict], moving: set[int]) -> dict[int, str]:
    """``{purchase id: new key}`` of the moving import lines (``groups``/``after`` of :func:`retime_naive_sales`),
    none of them a key another stored line (not in ``moving``) holds."""
    key = keyed(keyring_of(session.get_bind().dialect))
    taken: set[str] = set()
    while True:
        keys: dict[int, str] = {}
        for read, rows in groups.items():  # one zone read in at a time: a content's new time depends on it
            keys |= changed_keys(rows, after[read].__getitem__, key, taken | set(keys.values()))
        wanted, held = list(keys.values()), set()
        for start in range(0, len(wanted), BATCH):
            held.update(stored for pid, stored in session.execute(
                select(Purchase.id, Purchase.idempotency_key)
                .where(Purchase.idempotency_key.in_(wanted[start:start + BATCH]))) if pid not in moving)
        if not held - taken:
            return keys
        taken |= held
