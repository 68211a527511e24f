"""The catalogue and menus the cloud sends, into the state cache; held and saved later when they cannot be saved now.

:class:`DownlinkCache` saves what :class:`~dangol_edge.sync.MQTTSync` received — a ``catalogue/1``
(:meth:`~dangol_edge.state.StateStore.put_catalogue`), a ``menu/1`` (:meth:`~dangol_edge.state.StateStore.put_menu`:
refused for a customer erased here) or a menu's empty retained payload (:meth:`~dangol_edge.state.StateStore
.delete_menu`) — and calls ``on_change("catalogue" | "menu")`` when the cache changed.

When the state file cannot be written (disk full, read-only medium, locked by another writer) paho has already
acknowledged the message, and the broker would not send it again before the next (re)subscription. So it is **held in
memory** and saved again by every housekeeping pass (:meth:`DownlinkCache.retry`, through
:meth:`MQTTSync.retry_downlink <dangol_edge.sync.MQTTSync.retry_downlink>`), the pattern of the cloud's erasures
(:class:`~dangol_edge.held.HeldRetries`). Bounded: the newest catalogue (one: a newer version replaces the held one,
an older one arriving late does not) and at most :data:`MENUS_HELD_MAX` menus, keyed by customer (a newer menu or a
clear of the same customer replaces the held one; an older menu arriving late does not). Beyond, the oldest held menu
is dropped and counted (:attr:`DownlinkCache.dropped`); once nothing is held any more the sync subscribes to the
store's topics again, so the broker sends every retained catalogue and menu again and a dropped menu comes back.

Every failure is counted (:attr:`DownlinkCache.errors`) and sets ``stats.storage`` (``full`` or ``error``; ``ok``
again once one is saved). The first failure of a streak is logged as an error with its traceback, the next ones at
DEBUG, and the end of the streak once (INFO, with how many were dropped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Callable

from dangol_protocol import Catalogue, Menu

from .held import HELD, HeldRetries
from .workers.base import Stats

log = logging.getLogger(__name__)

#: Menus held at most while the state file cannot be written; beyond, the oldest is dropped (it comes again with the
#: broker's retained copy when the sync subscribes again).
MENUS_HELD_MAX = 1000


@dataclass(frozen=True)
class MenuCleared:
    """The cloud cleared a customer's retained menu (an empty payload: erasure, consent withdrawn)."""

    customer_id: str


Item = Catalogue | Menu | MenuCleared


class _Held(HeldRetries[str, Item]):
    """Catalogues (key ``catalogue``) or menus (key: the customer id) that could not be saved."""

    def __init__(self, cache: "DownlinkCache", stats: Stats, limit: int, what: str):
        super().__init__(stats, limit, log)
        self.cache = cache
        self.what = what
        self._streak = 0  # failures since nothing was held
        self._streak_dropped = 0

    def _carry_out(self, item: Item) -> str:
        return self.cache._save(item)

    def _merge(self, held: Item, new: Item) -> Item:
        if isinstance(held, Catalogue) and isinstance(new, Catalogue) and held.version > new.version:
            return held
        if isinstance(held, Menu) and isinstance(new, Menu) and held.generated_at > new.generated_at:
            return held
        return new

    def _describe(self, key: str, item: Item) -> str:
        if isinstance(item, Catalogue):
            return f"catalogue version {item.version}"
        return f"{'clearing of the menu' if isinstance(item, MenuCleared) else 'menu'} of customer {key}"

    def _done(self, key: str, item: Item, failures: int, result: str) -> None:
        self.cache._changed(result)
        if self._streak and not self.held:
            log.info("the %ss that could not be saved are saved again (%d failed attempt(s)%s)", self.what,
                     self._streak, f", {self._streak_dropped} dropped: sent again by the broker"
                     if self._streak_dropped else "")
            self._streak = self._streak_dropped = 0

    def _log_failure(self, key: str, item: Item, attempt: int, exc: Exception) -> None:
        self._streak += 1
        if self._streak == 1:
            log.error("the %s could not be saved (%s: %s); held (at most %d %ss, the newest of each) and saved "
                      "again by every housekeeping pass", self._describe(key, item), type(exc).__name__, exc,
                      self.limit, self.what, exc_info=exc)
        else:
            log.debug("%s could not be saved (attempt %d: %s)", self._describe(key, item), attempt, exc)

    def _log_dropped(self, key: str, item: Item) -> None:
        self._streak_dropped += 1
        self.cache.lost += 1
        (log.error if self._streak_dropped == 1 else log.debug)(
            "%s dropped: more than %d %ss could not be saved (%d dropped so far); the broker sends it again when the "
            "storage works again", self._describe(key, item), self.limit, self.what, self.dropped)


class DownlinkCache:
    """Saves the down-link's catalogue and menus into the state cache, holding what cannot be saved (see the module
    docstring). Thread-safe (paho's network thread and the housekeeping thread).

    Args:
        state: the :class:`~dangol_edge.state.StateStore`.
        stats: the daemon's counters (``storage`` is set on a storage error).
        on_change: called with ``"catalogue"`` or ``"menu"`` once the cache changed (also after a retry).

    Attributes:
        lost: menus dropped since the sync last subscribed again (the sync resets it when it does).
    """

    def __init__(self, state, stats: Stats, on_change: Callable[[str], None] | None = None):
        self.state = state
        self.on_change = on_change
        self.lost = 0
        self.catalogues = _Held(self, stats, 1, "catalogue")
        self.menus = _Held(self, stats, MENUS_HELD_MAX, "menu")

    @property
    def held(self) -> int:
        """Catalogues (0 or 1) and menus waiting to be saved."""
        return self.catalogues.held + self.menus.held

    @property
    def errors(self) -> int:
        """Attempts to save that failed (held ones are retried)."""
        return self.catalogues.errors + self.menus.errors

    @property
    def dropped(self) -> int:
        """Held menus dropped beyond :data:`MENUS_HELD_MAX`."""
        return self.menus.dropped

    def put_catalogue(self, catalogue: Catalogue) -> str:
        """Save a catalogue: ``catalogue`` (stored), ``stale`` (the cached one is newer or the same) or ``held``
        (it could not be saved: retried). Never raises."""
        return self._result(self.catalogues.attempt("catalogue", catalogue))

    def put_menu(self, menu: Menu) -> str:
        """Save a menu: ``menu`` (stored), ``stale``, ``erased`` (refused: its customer was erased here) or ``held``.
        Never raises."""
        return self._result(self.menus.attempt(str(menu.customer_id), menu))

    def clear_menu(self, customer_id) -> str:
        """Forget a customer's menu (the cloud cleared it; a held menu of theirs goes too): ``menu-cleared`` or
        ``held``. Never raises."""
        return self._result(self.menus.attempt(str(customer_id), MenuCleared(str(customer_id))))

    def forget(self, customer_ids) -> None:
        """Drop the held menus of erased customers (they would be refused anyway)."""
        for cid in customer_ids:
            self.menus.discard(str(cid))

    def retry(self) -> int:
        """Save the held catalogue and menus again (each housekeeping pass); returns how many are still held. Never
        raises."""
        return self.catalogues.retry() + self.menus.retry()

    @staticmethod
    def _result(result) -> str:
        return "held" if result is HELD else result

    def _save(self, item: Item) -> str:
        """Raises sqlite3.Error (or whatever the state raises) when the item cannot be saved."""
        if isinstance(item, Catalogue):
            return "catalogue" if self.state.put_catalogue(item) else "stale"
        if isinstance(item, MenuCleared):
            self.state.delete_menu(item.customer_id)
            return "menu-cleared"
        refused = self.state.refused_menus
        if self.state.put_menu(item):
            return "menu"
        return "erased" if self.state.refused_menus != refused else "stale"

    def _changed(self, result: str) -> None:
        if self.on_change is None or result not in ("catalogue", "menu", "menu-cleared"):
            return
        try:
            self.on_change("catalogue" if result == "catalogue" else "menu")
        except Exception:  # the display's refresh must not turn a saved item into a held one
            log.exception("refreshing after a %s failed", result)
