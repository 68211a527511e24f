"""The edge's SQLite connections: one place for the file settings both databases share, and for wiping what a
deletion leaves in the ``-wal`` file (:meth:`SQLiteFile.wipe_deleted`)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import sqlite_utils

log = logging.getLogger(__name__)


def connect(path: Path) -> sqlite_utils.Database:
    """Open (creating its folder) an SQLite file for one long-lived, thread-shared connection.

    WAL journal (readers never block the writer; a crash mid-write leaves the last committed state),
    ``synchronous=NORMAL`` (durable at checkpoints, safe with WAL), foreign keys on, autocommit mode so
    transactions are explicit (``BEGIN IMMEDIATE``). ``secure_delete`` on, set here rather than left to the SQLite
    build's default: a deleted or overwritten row's bytes are zeroed in its page, and a freed page is zeroed, so a
    customer's sealed values do not stay in the file's free space. ``journal_size_limit=0``: whenever the WAL starts
    again from its beginning, the file is cut to what was just written (the older frames beyond it, old page versions,
    go).

    Raises:
        OSError: the folder cannot be created.  sqlite3.DatabaseError: not a database / unreadable.
        sqlite3.OperationalError: this SQLite cannot turn ``secure_delete`` on.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        if db.execute("PRAGMA secure_delete = ON").fetchone()[0] != 1:
            raise sqlite3.OperationalError(f"{path}: this SQLite cannot zero deleted rows (PRAGMA secure_delete)")
        db.execute("PRAGMA journal_size_limit = 0")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA synchronous = NORMAL")
    except BaseException:  # e.g. the -wal file cannot be created (a full disk): no connection left open
        conn.close()
        raise
    return db


class SQLiteFile:
    """Base of the edge's two databases: one connection shared by threads under one lock, opened on
    first use (subclasses implement :meth:`open`), closed by :meth:`close`; also a context manager.

    A deletion of customer data commits into the ``-wal`` file, whose older frames keep the page versions from
    before it (the deleted rows in them) until a checkpoint cuts the file; SQLite's automatic checkpoint never does,
    and the daemon's connection stays open for days. So every such deletion calls :meth:`wipe_deleted` (or, where a
    checkpoint must not slow the caller, marks one due), and each housekeeping pass calls :meth:`wipe_if_due`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db: sqlite_utils.Database | None = None
        self._lock = threading.RLock()
        self._wipe_due = False  # a deletion's old pages may still be in the -wal file
        self._wipe_failures = 0  # wipes in a row that could not finish (the first is logged as a warning)
        self._wipe_seen = None  # (connection, PRAGMA data_version) at the last wipe: other processes' commits

    def open(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Close the file (safe to call twice), first trying once more a wipe that is due (:meth:`wipe_deleted`)."""
        if self._db is not None:
            if self._wipe_due:
                self.wipe_deleted()
            self._db.conn.close()
            self._db, self._wipe_seen = None, None

    @property
    def db(self) -> sqlite_utils.Database:
        """The open sqlite-utils database (opens it on first use)."""
        return self.open()._db

    @property
    def wipe_due(self) -> bool:
        """Whether a deletion's old page versions may still be in the ``-wal`` file (a wipe did not finish)."""
        return self._wipe_due

    def wipe_deleted(self) -> bool:
        """After a deletion of customer data: move every committed page into the database file and cut the ``-wal``
        file to zero bytes (``PRAGMA wal_checkpoint(TRUNCATE)``), so the page versions from before the deletion leave
        it (in the database file ``secure_delete`` has zeroed the deleted rows). Returns True when done.

        It cannot finish while another connection — the daemon beside the command line, or the reverse — is reading
        (SQLite's result row says *busy* once the busy timeout has passed), nor on a storage error: then it is logged
        (a warning at the first failure in a row), stays due (:attr:`wipe_due`) and is tried again by
        :meth:`wipe_if_due` (each housekeeping pass) and :meth:`close`. Never raises for the checkpoint itself.
        """
        with self._lock:
            self._wipe_due = True
            try:
                busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                why = "another connection is reading the file" if busy else None
            except sqlite3.Error as exc:
                why = str(exc)
            if why is None:
                if self._wipe_failures:
                    log.info("%s: deleted rows removed from the -wal file after %d failed attempt(s)", self.path,
                             self._wipe_failures)
                self._wipe_due, self._wipe_failures = False, 0
                self._wipe_seen = self._data_version()
                return True
            (log.debug if self._wipe_failures else log.warning)(
                "%s: the -wal file still holds deleted rows: checkpoint not finished (%s); tried again at the next "
                "housekeeping pass", self.path, why)
            self._wipe_failures += 1
            return False

    def wipe_if_due(self) -> bool:
        """:meth:`wipe_deleted` when one is due, or when another process committed to the file since the last wipe
        (``PRAGMA data_version``: the command line's erasure may have found this process reading; also on the first
        call after opening); returns True when nothing is left to do. For the housekeeping pass."""
        with self._lock:
            if not self._wipe_due and self._wipe_seen == self._data_version():
                return True
            return self.wipe_deleted()

    def _data_version(self) -> tuple:
        """(this connection, ``PRAGMA data_version``): changes with other connections' commits only."""
        db = self.db
        return db, db.execute("PRAGMA data_version").fetchone()[0]

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
