"""The edge's SQLite connections: one place for the file settings both databases share."""

from __future__ import annotations

import sqlite3
import threading
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


class SQLiteFile:
    """Base of the edge's two databases: one connection shared by threads under one lock, opened on
    first use (subclasses implement :meth:`open`), closed by :meth:`close`; also a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db: sqlite_utils.Database | None = None
        self._lock = threading.RLock()

    def open(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Close the file (safe to call twice)."""
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    @property
    def db(self) -> sqlite_utils.Database:
        """The open sqlite-utils database (opens it on first use)."""
        return self.open()._db

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
