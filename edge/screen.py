"""What the HDMI menu page shows right now: a small thread-safe state machine with change notification.

Screens: ``house`` (the house menu from the catalogue), ``welcome`` (a customer's first name and picks,
until ``until`` then back to house) and ``enrol`` (staff enrolment progress with the pending short code, or that
the person is already a regular: never who).
No face image is ever part of a screen. Every change bumps ``version``; the web page's server-sent
events stream waits on :meth:`Screen.wait` and pushes each new snapshot at once.

Apart from the screen, it keeps how the last sign-up ended (:meth:`Screen.last_signup`, one value, replaced by the
next ending and forgotten when a new sign-up is asked for or starts), for the staff page: the door shows a failure
for a few seconds only.
"""

from __future__ import annotations

import threading
import time
from typing import Any

#: Enrolment stages that end a sign-up (see :meth:`Screen.show_enrolment`).
SIGNUP_ENDINGS = ("pending", "already", "cancelled", "failed", "not-saved")


class Screen:
    """Thread-safe current screen.

    Args:
        clock: seconds clock (``time.monotonic``); tests may pass their own.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._version = 0
        self._state: dict[str, Any] = {"screen": "house"}
        self._until: float | None = None
        self._signup: dict[str, Any] | None = None  # how the last sign-up ended, "at" on the clock (seconds)
        self.changed_at = clock()

    def _set(self, state: dict[str, Any], until: float | None = None) -> int:
        with self._cond:
            self._version += 1
            self._state = state
            self._until = until
            self.changed_at = self._clock()
            self._cond.notify_all()
            return self._version

    def show_house(self) -> int:
        """Back to the house menu; returns the new version."""
        return self._set({"screen": "house"})

    def forget(self, customer_id: str) -> bool:
        """An erased customer leaves the screen at once: if their welcome is showing, back to the house menu (checked
        and changed in one step, so another customer's welcome set meanwhile stays). Returns True if it was theirs."""
        with self._cond:
            if self._state.get("screen") != "welcome" or self._state.get("customer_id") != customer_id:
                return False
            self._set({"screen": "house"})
            return True

    def show_welcome(self, first_name: str, picks: list[dict], customer_id: str, seconds: float,
                     arrival_ts: float | None = None) -> int:
        """Welcome a customer for ``seconds``.

        Args:
            picks: items to show, each ``{"id", "name", "price", "category", "description"}``
                (available items only; the caller filters).
            arrival_ts: monotonic time of the decision, for the latency benchmark.
        """
        return self._set({"screen": "welcome", "first_name": first_name, "picks": picks,
                          "customer_id": customer_id, "arrival_ts": arrival_ts}, self._clock() + seconds)

    def show_enrolment(self, stage: str, code: str | None = None, seconds: float | None = None,
                       samples: int = 0, wanted: int = 0, why: str | None = None, regular: str | None = None) -> int:
        """Enrolment progress: ``stage`` is ``capturing`` (``samples`` good faces of ``wanted`` taken so
        far), ``pending`` (with ``code``), ``already`` (the face is an active customer's, ``regular``, their id),
        ``cancelled``, ``failed`` (``why``: ``none``, ``several``
        or ``few``, :meth:`dangol_edge.enrol.SampleCollector.shortfall_kind`) or ``not-saved`` (the gallery could
        not be written); shown for ``seconds`` (None: until the next change). A failure gives ``samples`` and
        ``wanted`` too: the good snapshots taken and the pool needed.

        ``regular`` is kept for the staff page only (:meth:`last_signup`), never put on the door
        screen (:meth:`snapshot`), which is public. ``capturing`` forgets the last sign-up's ending; an ending
        (:data:`SIGNUP_ENDINGS`) replaces it."""
        with self._cond:
            if stage == "capturing":
                self._signup = None
            elif stage in SIGNUP_ENDINGS:
                self._signup = {"stage": stage, "why": why, "samples": samples, "wanted": wanted, "code": code,
                                "regular": regular, "at": self._clock()}
            return self._set({"screen": "enrol", "stage": stage, "code": code, "samples": samples,
                              "wanted": wanted, "why": why}, None if seconds is None else self._clock() + seconds)

    def forget_signup(self) -> None:
        """Forget how the last sign-up ended (a new one was asked for); the screen itself does not change."""
        with self._cond:
            self._signup = None

    def last_signup(self) -> dict[str, Any] | None:
        """How the last sign-up ended, or None (none ended since this process started, or one was asked for since).

        Returns:
            ``{"stage", "why", "samples", "wanted", "code", "regular", "age_s"}``: the arguments of the
            ending's :meth:`show_enrolment` and ``age_s``, seconds since it ended (on this screen's clock).
        """
        with self._cond:
            if self._signup is None:
                return None
            last = dict(self._signup)
        last["age_s"] = max(0.0, self._clock() - last.pop("at"))
        return last

    def tick(self) -> None:
        """Return to the house menu when a timed screen has expired (call regularly)."""
        with self._cond:
            expired = self._until is not None and self._clock() >= self._until
        if expired:
            self.show_house()

    def snapshot(self) -> dict[str, Any]:
        """The current state with its ``version``."""
        with self._cond:
            return {"version": self._version, **self._state}

    def wait(self, version: int, timeout: float) -> dict[str, Any]:
        """Block until the version differs from ``version`` or ``timeout`` seconds pass; return the snapshot."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != version, timeout=timeout)
            return {"version": self._version, **self._state}
