"""Starting again after the state file was damaged (SD-card damage after a power cut, say).

``state.sqlite`` holds a cache the broker sends again (the retained catalogue and menus) and two things it does not:
the queued events (``outbox``) and the customers erased on this box (``erased``). A damaged file used to keep the
daemon from ever starting (every start failed on it until systemd gave up: no door screen, no recognition). The
daemon's :meth:`~dangol_edge.state.StateStore.open` with ``recover=True`` moves the file aside
(:func:`move_aside`), opens a fresh one and copies what can still be read of those two tables into it
(:func:`salvage`), then deletes the damaged copy with its ``-wal``/``-shm`` files (:func:`remove_asides`): it holds
the same sealed events, names and consent records, and erasures, retention and ``rotate-key`` would never reach it.
The log keeps only SQLite's error and the counts. A copy whose salvage failed (a table that could not be read or
copied) is kept for a person to try, at most :data:`ASIDE_KEPT`: each housekeeping pass deletes the older ones
(:meth:`~dangol_edge.state_outbox.OutboxTable.prune_sent`), and every erasure deletes all of them at once
(:meth:`~dangol_edge.state_outbox.OutboxTable.erase_customers`: they cannot be searched for the customer).

Deleting is a plain unlink: on an SD card or eMMC, overwriting a file first would not reach the old flash blocks (the
card's controller writes elsewhere and maps the blocks), so it would buy nothing; what stays in unmapped flash is
what the file held, every value about a customer sealed under the gallery key.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

__all__ = ["ASIDE_KEPT", "SALVAGED", "move_aside", "remove_asides", "salvage"]

log = logging.getLogger(__name__)

#: The tables of a damaged state file worth copying: what the broker does not send again.
SALVAGED = ("outbox", "erased")

#: How long a damaged copy whose salvage failed is kept at most (an erasure deletes it at once).
ASIDE_KEPT = timedelta(hours=24)

_STAMP = "%Y%m%dT%H%M%S"  # the UTC time a copy was moved aside, in its name: ``<name>.damaged-<stamp>``


def move_aside(path: Path) -> Path:
    """Rename the damaged ``path`` and its ``-wal``/``-shm`` files to ``<name>.damaged-<UTC time>`` (the WAL may
    hold committed rows); returns the new path of the database file.

    Raises:
        StateError: a file cannot be renamed (the message names it).
    """
    from .state import StateError

    stamp = datetime.now(timezone.utc).strftime(_STAMP)
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    try:
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
    except OSError as exc:
        raise StateError(f"{path}: damaged, and cannot be moved aside: {exc}") from exc
    return aside


def salvage(aside: Path, store) -> tuple[dict[str, int], dict[str, str]]:
    """Copy the readable rows of the damaged file's :data:`SALVAGED` tables into ``store`` (an open
    :class:`~dangol_edge.state.StateStore`), the columns both have, keeping rows the new file already has; then
    delete the damaged file (:func:`remove_asides`), unless a table could not be read or copied: then it is kept
    (logged) at most :data:`ASIDE_KEPT`.

    Returns:
        ``({table: rows copied}, {table: why it could not be read})``; never raises for the damaged file (a copy that
        cannot be deleted is logged, and tried again by the housekeeping pass once it is :data:`ASIDE_KEPT` old).
    """
    saved, lost = _copy(aside, store)
    if lost:
        log.error("%s: kept for at most %g hours (the next erasure deletes it): not everything in it could be "
                  "copied", aside.name, ASIDE_KEPT / timedelta(hours=1))
        return saved, lost
    try:
        gone = remove_asides(store.path, only=aside)
    except OSError as exc:
        log.error("%s: its rows were copied but it cannot be deleted (%s); tried again later", aside.name, exc)
    else:
        log.info("%s: deleted (%s) once its rows were copied", aside.name, ", ".join(gone))
    return saved, lost


def remove_asides(path: Path, older_than: timedelta | None = None, *, only: Path | None = None,
                  now: datetime | None = None) -> list[str]:
    """Delete the damaged copies of ``path`` moved aside (:func:`move_aside`) with their ``-wal``/``-shm`` files: all
    of them, those moved at least ``older_than`` before ``now``, or ``only`` that one. A plain unlink (see the module's
    notes on flash). Returns the names of the files deleted.

    Raises:
        OSError: a file cannot be deleted (the files before it are gone).
    """
    now = now or datetime.now(timezone.utc)
    prefix = f"{path.name}.damaged-"
    gone: list[str] = []
    for f in sorted(path.parent.glob(f"{prefix}*")):
        stamp = f.name[len(prefix):len(prefix) + 15]
        if only is not None and not f.name.startswith(only.name):
            continue
        if older_than is not None:
            try:
                moved = datetime.strptime(stamp, _STAMP).replace(tzinfo=timezone.utc)
            except ValueError:
                continue  # not a copy this module made: left alone
            if now - moved < older_than:
                continue
        f.unlink()
        gone.append(f.name)
    return gone


def _copy(aside: Path, store) -> tuple[dict[str, int], dict[str, str]]:
    """:func:`salvage`'s copy of the rows; never raises for the damaged file."""
    saved: dict[str, int] = {}
    lost: dict[str, str] = {}
    try:
        src = sqlite3.connect(aside)
    except sqlite3.Error as exc:
        return saved, {", ".join(SALVAGED): str(exc)}
    try:
        for table in SALVAGED:
            try:
                have = {r[1] for r in src.execute(f"PRAGMA table_info({table})")}
                cols = [c for c in store.db[table].columns_dict if c in have]
                if not cols:
                    continue
                rows = src.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
                with store._lock, store.db.conn:
                    store.db.execute("BEGIN IMMEDIATE")
                    store.db.conn.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) "
                                              f"VALUES ({', '.join('?' * len(cols))})", rows)
                saved[table] = len(rows)
            except sqlite3.Error as exc:
                lost[table] = str(exc)
    finally:
        src.close()
    return saved, lost
