"""Work the edge received and could not carry out (a storage error above all), held in memory and retried.

:class:`HeldRetries` is the one pattern behind the cloud's erasures (:mod:`dangol_edge.erasures`) and the catalogue
and menus that could not be saved (:mod:`dangol_edge.downlink`): an item is carried out at once
(:meth:`HeldRetries.attempt`); when that raises it is *held* by its key — the same key arriving again replaces it in
its place, or keeps the held one when that is newer (:meth:`HeldRetries._merge`) — and every housekeeping pass
carries the held items out again, oldest first (:meth:`HeldRetries.retry`), until they succeed. At most ``limit`` are
held; beyond, the oldest is dropped and counted (:attr:`HeldRetries.dropped`). Every failure is counted
(:attr:`HeldRetries.errors`); a storage error (``sqlite3.Error``) sets ``stats.storage`` (``full`` or ``error``),
which the first success afterwards sets back to ``ok``. Nothing here raises: it runs on paho's network thread and the
housekeeping thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from .workers.base import Stats, storage_state

K = TypeVar("K")
T = TypeVar("T")

#: What :meth:`HeldRetries.attempt` returns when the item failed and is held.
HELD = object()


class HeldRetries(Generic[K, T]):
    """Items of one kind carried out now or held and retried (see the module docstring). Subclasses implement
    :meth:`_carry_out` and may override :meth:`_merge`, :meth:`_describe`, :meth:`_done` and :meth:`_log_failure`.

    Args:
        stats: the daemon's counters (``storage`` is set on a storage error).
        limit: items held at most (≥ 1).
        log: the logger of the subclass's module.

    Attributes:
        errors: attempts that failed (each one held is retried).
        dropped: held items dropped beyond ``limit``.
    """

    #: appended to the log of a first failure: what happens to the item
    held_note = "held and retried on every housekeeping pass"
    #: appended to the log of a dropped item: why that is acceptable
    drop_note = ""

    def __init__(self, stats: Stats, limit: int, log: logging.Logger):
        self.stats = stats
        self.limit = max(1, int(limit))
        self.log = log
        self.errors = 0
        self.dropped = 0
        self._held: OrderedDict[K, T] = OrderedDict()
        self._failures: dict[K, int] = {}  # failed attempts of each held item
        self._lock = threading.Lock()  # the two dicts
        self._applying = threading.Lock()  # one item at a time (paho's thread, the housekeeping thread)
        self._flagged = False  # stats.storage was set by a failure here (reset once an item succeeds)

    @property
    def held(self) -> int:
        """Items waiting for a retry."""
        return len(self._held)

    # --- hooks -----------------------------------------------------------------------------------------------------
    def _carry_out(self, item: T) -> Any:
        """Carry the item out; returns what :meth:`attempt` returns. Raises on failure (the item is then held)."""
        raise NotImplementedError

    def _merge(self, held: T, new: T) -> T:
        """The item to carry out when ``new`` arrives while ``held`` (same key) waits: by default the new one."""
        return new

    def _describe(self, key: K, item: T) -> str:
        """The item in a log line."""
        return f"{key}"

    def _done(self, key: K, item: T, failures: int, result: Any) -> None:
        """Called once an item was carried out (``failures``: its failed attempts before); logs a success after
        failures."""
        if failures:
            self.log.info("%s carried out after %d failed attempt(s)", self._describe(key, item), failures)

    def _log_failure(self, key: K, item: T, attempt: int, exc: Exception) -> None:
        """Log a failed attempt: the first of an item as an error with its traceback, the next ones as warnings."""
        if attempt == 1:
            self.log.error("%s could not be carried out (%s: %s); %s", self._describe(key, item), type(exc).__name__,
                           exc, self.held_note, exc_info=exc)
        else:
            self.log.warning("%s still cannot be carried out (attempt %d: %s: %s); retried on the next pass",
                             self._describe(key, item), attempt, type(exc).__name__, exc)

    def _log_dropped(self, key: K, item: T) -> None:
        self.log.error("%s dropped: more than %d are waiting for a retry (%d dropped so far)%s",
                       self._describe(key, item), self.limit, self.dropped, self.drop_note)

    # --- the pattern -----------------------------------------------------------------------------------------------
    def attempt(self, key: K, item: T) -> Any:
        """Carry out ``item`` (merged with the one held under ``key``, if any); returns :meth:`_carry_out`'s result,
        or :data:`HELD` when it failed and is held for a retry. Never raises."""
        with self._applying:
            with self._lock:
                held = self._held.get(key)
            return self._attempt(key, item if held is None else self._merge(held, item))

    def retry(self) -> int:
        """Carry out the held items again, oldest first, until one fails (it then goes to the back, so one that keeps
        failing does not block the others). Returns how many are still held. Never raises."""
        with self._lock:
            waiting = list(self._held)
        for key in waiting:
            with self._applying:
                with self._lock:
                    item = self._held.get(key)  # (replaced by a newer one meanwhile: that one)
                if item is None:  # carried out meanwhile (it came again)
                    continue
                if self._attempt(key, item) is HELD:
                    with self._lock:
                        if key in self._held:
                            self._held.move_to_end(key)
                    break
        return self.held

    def discard(self, key: K) -> bool:
        """Forget a held item (e.g. its customer was erased); True if one was held."""
        with self._lock:
            self._failures.pop(key, None)
            return self._held.pop(key, None) is not None

    def _attempt(self, key: K, item: T) -> Any:
        try:
            result = self._carry_out(item)
        except Exception as exc:  # a storage error above all; whatever it is, the item must not be lost
            self._hold(key, item, exc)
            return HELD
        with self._lock:
            self._held.pop(key, None)
            failures = self._failures.pop(key, 0)
        if self._flagged:
            self._flagged, self.stats.storage = False, "ok"
        self._done(key, item, failures, result)
        return result

    def _hold(self, key: K, item: T, exc: Exception) -> None:
        self.errors += 1
        if isinstance(exc, sqlite3.Error):
            self.stats.storage, self._flagged = storage_state(exc), True
        with self._lock:
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
            self._held[key] = item  # the same key again keeps its place
            lost = []
            while len(self._held) > self.limit:
                old_key, old = self._held.popitem(last=False)
                self._failures.pop(old_key, None)
                lost.append((old_key, old))
        self._log_failure(key, item, n, exc)
        for old_key, old in lost:
            self.dropped += 1
            self._log_dropped(old_key, old)
