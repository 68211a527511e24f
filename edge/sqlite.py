"""The edge's SQLite connections: one place for the file settings both databases share."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils


def connect(path: Path) -> sqlite_utils.Database:
    """Open (creating its folder) an SQLite file for one long-lived, thread-shared connection.

    WAL journal (readers never block the writer; a crash mid-write leaves the last committed state),
    ``synchronous=NORMAL`` (durable at checkpoints, safe with WAL), foreign keys on, autocommit mode so
    transactions are explicit (``BEGIN IMMEDIATE``).

    Raises:
        OSError: the folder cannot be created.  sqlite3.DatabaseError: not a database / unreadable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = NORMAL")
    return db
