"""A reserve of disk space in the daemon's home, so that it can start on a full disk.

Opening an SQLite file in WAL mode creates its ``-wal`` and ``-shm`` files; on a full disk that fails (``disk I/O
error``) and the daemon could not start at all, while a running daemon rides out a full disk (it greets from the
cache and reports ``storage: full``). So the daemon keeps :data:`RESERVE_BYTES` allocated in
``<home>/space-reserve`` whenever the disk has room for it and as much again (:meth:`SpaceReserve.ensure`, at start and
at each housekeeping pass); a start whose databases cannot be opened for lack of space deletes the reserve and tries
again (:meth:`SpaceReserve.release`), and health reads ``storage: full`` until housekeeping could allocate the reserve
again (:attr:`SpaceReserve.spent`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

#: Size of the reserve, bytes: the ``-shm`` files (32 KiB each) and first ``-wal`` pages of both databases need far
#: less; the rest leaves the outbox room for thousands of events while the disk is full.
RESERVE_BYTES = 2 * 1024 * 1024
#: The reserve is (re)allocated only while the disk has this many bytes free besides it (never filling the disk).
HEADROOM_BYTES = RESERVE_BYTES
#: The reserve's file name in the daemon's home.
RESERVE_NAME = "space-reserve"


def free_bytes(folder: Path) -> int:
    """Bytes free for this user on the file system of ``folder``."""
    return shutil.disk_usage(folder).free


class SpaceReserve:
    """``<home>/space-reserve``: :data:`RESERVE_BYTES` held back for a start on a full disk.

    Attributes:
        spent: the reserve was given back to start the daemon (:meth:`release`) and is not allocated again yet:
            the disk is full (health reports ``storage: full``).
    """

    def __init__(self, home: Path, size: int = RESERVE_BYTES):
        self.path = Path(home) / RESERVE_NAME
        self.size = size
        self.spent = False
        self._warned: str | None = None  # the error last logged as a warning (logged once until it changes or ends)

    def ensure(self) -> bool:
        """Allocate the reserve when it is missing and the disk has room for it and :data:`HEADROOM_BYTES` more.
        Returns True when the reserve is in place. Never raises: a full disk (``ENOSPC``, expected: retried at the
        next housekeeping pass) is logged at debug level; any other failure (``EACCES``, ``EROFS``, something else
        under the reserve's name...) means there is no reserve for the day the disk fills, and is logged as a
        warning naming the file and the error, once until the error changes or the reserve is allocated."""
        try:
            if self.path.exists() and self.path.stat().st_size >= self.size:
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if free_bytes(self.path.parent) < self.size + HEADROOM_BYTES:
                return False
            tmp = self.path.with_name(RESERVE_NAME + ".tmp")
            try:
                fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
                try:
                    try:
                        os.posix_fallocate(fd, 0, self.size)  # real blocks, not a sparse file
                    except (AttributeError, OSError) as exc:
                        if getattr(exc, "errno", None) == errno.ENOSPC:
                            raise
                        os.write(fd, bytes(self.size))  # a file system without fallocate
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                log.debug("cannot allocate the space reserve %s: %s", self.path, exc)
            elif str(exc) != self._warned:
                self._warned = str(exc)
                log.warning("cannot allocate the space reserve %s (%s): the daemon may not start once the disk is "
                            "full; fix the cause (retried at each housekeeping pass)", self.path, exc)
            return False
        if self._warned is not None:
            log.info("the space reserve %s is allocated now", self.path)
            self._warned = None
        if self.spent:
            log.info("disk space is back: the space reserve %s is allocated again", self.path)
        self.spent = False
        return True

    def release(self) -> bool:
        """Delete the reserve (a start could not open its databases: the disk is full); True when there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        self.spent = True
        return True
