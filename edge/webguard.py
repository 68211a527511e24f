"""Who may use the edge's web pages (:mod:`dangol_edge.web`), and how much.

* The kiosk page and its streams (``/``, ``/events``, ``/api/…``) answer loopback clients only: the HDMI
  kiosk runs on the Pi itself, and nobody on the shop's network needs a live feed of who walks in.
* The staff PIN is guarded per client address: after :data:`PIN_FREE_FAILS` wrong PINs that address
  waits :data:`PIN_BACKOFF_S` × 2^(failures − free) seconds (at most :data:`PIN_BACKOFF_MAX_S`) before
  the next try is even checked. Other addresses are not affected, so nobody can lock the staff out.
* At most :data:`MAX_EVENT_STREAMS` event streams are open at once (each holds a server thread); beyond
  that ``/events`` answers 503.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from typing import Callable

__all__ = ["MAX_EVENT_STREAMS", "PIN_BACKOFF_MAX_S", "PIN_BACKOFF_S", "PIN_FREE_FAILS", "PinThrottle", "Streams",
           "is_loopback"]

#: Wrong PINs one client may try before the back-off starts.
PIN_FREE_FAILS = 3
#: First wait after the free tries, seconds; doubled with each further wrong PIN, capped at the maximum.
PIN_BACKOFF_S = 5.0
PIN_BACKOFF_MAX_S = 15 * 60.0
#: Clients remembered by the PIN back-off (oldest forgotten first: bounded memory).
PIN_MAX_CLIENTS = 1024
#: Event streams served at once (the kiosk needs one, two during a reload).
MAX_EVENT_STREAMS = 4


def is_loopback(address: str | None) -> bool:
    """True for a loopback client address (``127.0.0.0/8``, ``::1``, ``::ffff:127.x.x.x``) or ``localhost``."""
    if not address:
        return False
    if address == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class PinThrottle:
    """Progressive back-off of wrong staff PINs, per client address (thread-safe, bounded).

    Args:
        free: wrong PINs allowed before waiting; base_s / max_s: first wait and longest wait, seconds.
        max_clients: addresses remembered (least recently failed forgotten first).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, *, free: int = PIN_FREE_FAILS, base_s: float = PIN_BACKOFF_S,
                 max_s: float = PIN_BACKOFF_MAX_S, max_clients: int = PIN_MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.base_s, self.max_s, self.max_clients, self.clock = free, base_s, max_s, max_clients, clock
        self._lock = threading.Lock()
        self._fails: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address → (wrong PINs, last at)

    def _delay(self, fails: int) -> float:
        return 0.0 if fails < self.free else min(self.max_s, self.base_s * 2 ** min(fails - self.free, 30))

    def wait(self, client: str) -> float:
        """Seconds ``client`` must still wait before its next PIN is checked (0.0: go ahead)."""
        with self._lock:
            fails, last = self._fails.get(client, (0, 0.0))
            if fails and self.clock() - last > 2 * self.max_s:  # long quiet: start afresh
                self._fails.pop(client, None)
                return 0.0
            return max(0.0, last + self._delay(fails) - self.clock()) if fails else 0.0

    def retry_after(self, client: str) -> int:
        """:meth:`wait` rounded up to whole seconds (for ``Retry-After``), at least 1."""
        return max(1, math.ceil(self.wait(client)))

    def failure(self, client: str) -> None:
        """Count a wrong PIN from ``client``."""
        with self._lock:
            fails, _ = self._fails.pop(client, (0, 0.0))
            self._fails[client] = (fails + 1, self.clock())
            while len(self._fails) > self.max_clients:
                self._fails.popitem(last=False)

    def success(self, client: str) -> None:
        """Forget ``client``'s wrong PINs after a right one."""
        with self._lock:
            self._fails.pop(client, None)


class Streams:
    """Open event streams (at most ``limit``) and the shutdown flag shared by the app and its server."""

    def __init__(self, limit: int = MAX_EVENT_STREAMS) -> None:
        self.limit = limit
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._open = 0
        self._idle = threading.Condition(self._lock)

    def try_enter(self) -> Callable[[], None] | None:
        """Take a slot: returns its release function (idempotent), or None when ``limit`` streams are open."""
        with self._lock:
            if self._open >= self.limit:
                return None
            self._open += 1
        held = [True]

        def release() -> None:
            with self._lock:
                if held[0]:
                    held[0] = False
                    self._open -= 1
                    self._idle.notify_all()

        return release

    @property
    def open(self) -> int:
        """Streams open now."""
        with self._lock:
            return self._open

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no stream is open; False after ``timeout`` seconds."""
        with self._lock:
            return self._idle.wait_for(lambda: self._open == 0, timeout=timeout)
