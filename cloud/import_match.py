"""One sale never stored both as history (no store) and under a store (:mod:`dangol_cloud.ingest`).

An upload into a store *files* the store-less purchases it repeats under that store, and an upload as history skips
the sales a store already holds. The two copies of a sale are told apart by their idempotency keys, which hash the
store and the UTC time (:mod:`dangol_cloud.purchase_keys`); a naive file time is read in the zone of the line's
store — its own (Stores page), else ``TIMEZONE`` — and a store-less line's in ``TIMEZONE``
(:func:`dangol_cloud.sale_zones.import_zones`, which first moves every line read in another zone than its store's now,
so every store-less naive line was read in ``TIMEZONE`` when an import compares). So a row is compared with the
other copy under the key *that copy* has: a store's row under the store-less key of its naive time read in
``TIMEZONE``; a store-less row under each store's key of its naive time read in that store's zone. A time the file
gave with its offset is the same instant either way. A filed line takes the store's time, zone and key (as if it had
been uploaded into the store), and remembers the import that filed it (``filed_import_id``: undoing that import
returns it to history, :mod:`dangol_cloud.import_undo`). Filed by an import that records none (the CLI's
``import-purchases``, ``import_id`` None), it is no upload's any more (``import_id`` None): undoing the history upload
that wrote it leaves the store's sale.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, inspect, select, update
from sqlalchemy.orm import Session

from dangol_cloud.models import Purchase
from dangol_cloud.purchase_keys import purchase_key

__all__ = ["MAX_PROBED_STORES", "importing_stores", "match_other_copies", "probe_keys"]

#: A store-less row is looked up under at most this many stores holding imports (the first by id); a sale of a
#: chain's later stores uploaded again as history is not recognised. The look-up goes on past the first batch only
#: when a store held some of its rows (a file uploaded before into a store): other history files pay it once.
MAX_PROBED_STORES = 20

log = logging.getLogger(__name__)


def importing_stores(session: Session) -> list[str]:
    """Ids of the stores (at most :data:`MAX_PROBED_STORES`) that hold imported (not POS) purchases."""
    return list(session.scalars(select(Purchase.store_id).where(Purchase.store_id.is_not(None),
                                                                Purchase.source != "pos")
                                .distinct().order_by(Purchase.store_id).limit(MAX_PROBED_STORES)))


def probe_keys(ring, key_prefix: str, values: dict, occurrence: int, written: datetime,
               zones: dict[str | None, ZoneInfo], others: list[str | None], key=purchase_key) -> list[str]:
    """The keys (``key``: the importer's :func:`~dangol_cloud.purchase_keys.purchase_key`) the row ``values`` (a
    purchase line's content, its ``ts`` in UTC) would have under each of
    ``others`` (None: no store), its naive file time ``written`` read in that filing's zone (``zones``: as
    :func:`~dangol_cloud.sale_zones.import_zones`; a store without its own zone, or None, reads in ``zones[None]``);
    a ``written`` with an offset keeps ``values["ts"]``. A time that cannot be read in another zone (beyond what UTC
    can express) gives no key for that filing, logged as a warning naming the row (the sale may then be stored
    both as history and under a store)."""
    keys = []
    for other in others:
        ts = values["ts"]
        if written.tzinfo is None:
            try:
                ts = written.replace(tzinfo=zones.get(other, zones[None])).astimezone(timezone.utc)
            except (OverflowError, ValueError) as exc:
                log.warning("%s row (customer %s, item %s, sale time %s) not compared with its copy %s: its time "
                            "cannot be read in %s (%s: %s); the sale may be stored twice", key_prefix,
                            values.get("customer_id"), values.get("item_id"), written.isoformat(sep=" "),
                            f"in store {other}" if other is not None else "as history",
                            zones.get(other, zones[None]).key, type(exc).__name__, exc)
                continue
        keys.append(key(ring, key_prefix, **values | {"store_id": other, "ts": ts}, occurrence=occurrence))
    return keys


def match_other_copies(session: Session, batch: list[dict], probes: list[list[str]]) -> int:
    """The same sale stored under a store / as history (see the module docstring), for each row of ``batch``:
    ``probes[n]`` holds the keys ``batch[n]`` would have had without its store (a row with a store) or under each
    store holding imports (a row without one), from :func:`probe_keys`. A store-less purchase found for a row with a
    store is filed under it (store, time, zone read in and key of the row; ``filed_import_id`` the row's
    ``import_id``); a row without a store whose sale a store holds is dropped from ``batch``. Returns how many
    purchases were filed; either way the row is counted as already present."""
    row_of = {key: n for n, keys in enumerate(probes) for key in keys}
    keys, found = list(row_of), []
    for start in range(0, len(keys), 1000):
        found += session.execute(select(Purchase.id, Purchase.idempotency_key, Purchase.store_id).where(
            Purchase.idempotency_key.in_(keys[start:start + 1000]))).all()
    filed = [(pid, batch[row_of[key]]) for pid, key, store in found
             if store is None and batch[row_of[key]]["store_id"] is not None]
    if filed:  # a sale stored both ways already (doubled by an older version): its store copy stays, history too
        own = [row["idempotency_key"] for _pid, row in filed]
        taken = set()
        for start in range(0, len(own), 1000):
            taken.update(session.scalars(select(Purchase.idempotency_key).where(
                Purchase.idempotency_key.in_(own[start:start + 1000]))))
        filed = [(pid, row) for pid, row in filed if row["idempotency_key"] not in taken]
    if filed:
        table = Purchase.__table__  # core executemany (the ORM's bulk update takes no WHERE of its own)
        first = filed[0][1]
        extra = {"read_zone": bindparam("zone")} if "read_zone" in first else {}  # as the row's (0013 on)
        if "import_id" in first:  # the import that filed it (0016 on): its undo returns the line to history
            extra["filed_import_id"] = bindparam("by")
        elif _records_imports(session):  # filed by an unrecorded import: no longer the history upload's line
            extra["import_id"] = None
        session.execute(update(table).where(table.c.id == bindparam("pid")).values(
            store_id=bindparam("store"), idempotency_key=bindparam("key"), ts=bindparam("at"), **extra),
            [{"pid": pid, "store": row["store_id"], "key": row["idempotency_key"], "at": row["ts"],
              "zone": row.get("read_zone"), "by": row.get("import_id")} for pid, row in filed])
    held = {row_of[key] for _pid, key, store in found if store is not None and batch[row_of[key]]["store_id"] is None}
    batch[:] = [row for n, row in enumerate(batch) if n not in held]
    return len(filed)


def _records_imports(session: Session) -> bool:
    """Whether the schema records the upload of each line (``purchases.import_id``, revision 0016)."""
    return any(column["name"] == "import_id" for column in inspect(session.connection()).get_columns("purchases"))
