"""Starting again after the state file was damaged (SD-card damage after a power cut, say).

``state.sqlite`` holds a cache the broker sends again (the retained catalogue and menus) and two things it does not:
the queued events (``outbox``) and the customers erased on this box (``erased``). A damaged file used to keep the
daemon from ever starting (every start failed on it until systemd gave up: no door screen, no recognition). The
daemon's :meth:`~dangol_edge.state.StateStore.open` with ``recover=True`` moves the file aside
(:func:`move_aside`), opens a fresh one and copies what can still be read of those two tables into it
(:func:`salvage`). The damaged file stays beside it for a person to look at; nothing is deleted.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["SALVAGED", "move_aside", "salvage"]

#: The tables of a damaged state file worth copying: what the broker does not send again.
SALVAGED = ("outbox", "erased")


def move_aside(path: Path) -> Path:
    """Rename the damaged ``path`` and its ``-wal``/``-shm`` files to ``<name>.damaged-<UTC time>`` (the WAL may
    hold committed rows); returns the new path of the database file.

    Raises:
        StateError: a file cannot be renamed (the message names it).
    """
    from .state import StateError

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
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
    :class:`~dangol_edge.state.StateStore`), the columns both have, keeping rows the new file already has.

    Returns:
        ``({table: rows copied}, {table: why it could not be read})``; never raises for the damaged file.
    """
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
