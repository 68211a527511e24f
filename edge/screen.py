"""What the HDMI menu page shows right now: a small thread-safe state machine with change notification.

Screens: ``house`` (the house menu from the catalogue), ``welcome`` (a customer's first name and picks,
until ``until`` then back to house) and ``enrol`` (staff enrolment progress with the pending short code, or that
the person is already a regular: never who). A welcome shown over a pending sign-up's code does not end it: when the
welcome is over the code comes back for the rest of its time, unless its sign-up is no longer pending (activated,
discarded, expired: asked with the ``still_pending`` check the enrolment worker gives, which also takes a code on show
down within :data:`CODE_CHECK_S` once it answers False). While a sign-up is being captured, a welcome does not replace
"look at the camera": the customer signing up stands at the door, and a welcome for a regular decided on a frame before
the press (the recognizer does not run during a capture) would turn them away from the camera and then leave the door on
the house menu while the capture went on unseen; the regular's visit is still recorded, with no items shown.
No face image is ever part of a screen. Every change bumps ``version``; the web page's server-sent
events stream waits on :meth:`Screen.wait` and pushes each new snapshot at once.

Apart from the screen, it keeps, for the staff page, the sign-up being captured (:meth:`Screen.capture`, as the
enrolment reports it, whatever the door shows) and how the last sign-up ended (:meth:`Screen.last_signup`, one value,
replaced by the next ending and forgotten when a new sign-up is asked for or starts): the door shows a failure for a
few seconds only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Enrolment stages that end a sign-up (see :meth:`Screen.show_enrolment`).
SIGNUP_ENDINGS = ("pending", "already", "cancelled", "failed", "not-saved")

#: Seconds between two ``still_pending`` checks of a code on show (one gallery read each, on the thread calling
#: :meth:`Screen.tick`): a sign-up discarded on the staff page leaves the door within about this time.
CODE_CHECK_S = 1.0


@dataclass(eq=False)
class _Code:
    """A pending sign-up's code screen while it has time left: on show, or displaced by a welcome."""

    state: dict[str, Any]
    until: float | None  # on the screen's clock, seconds; None: until the next change
    still_pending: Callable[[], bool] | None
    checked: float  # when ``still_pending`` last answered (or the code was shown), on the screen's clock
    failed: bool = False  # ``still_pending`` raised (logged once per code)


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
        self._code: _Code | None = None  # the pending code, shown or displaced by a welcome
        self._capture: dict[str, int] | None = None  # the sign-up being captured: {"samples", "wanted"}
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
        """Back to the house menu (a pending code on show or displaced is dropped too); returns the new version."""
        with self._cond:
            self._code = None
            return self._set({"screen": "house"})

    def forget(self, customer_id: str) -> bool:
        """An erased customer leaves the screen at once: if their welcome is showing, back to the pending code it
        displaced (checked at the next :meth:`tick`) or the house menu (checked and changed in one step, so another
        customer's welcome set meanwhile stays). Returns True if it was theirs."""
        with self._cond:
            if self._state.get("screen") != "welcome" or self._state.get("customer_id") != customer_id:
                return False
            code = self._code
            if code is not None and (code.until is None or self._clock() < code.until):
                code.checked = float("-inf")
                self._set(code.state, code.until)
            else:
                self._code = None
                self._set({"screen": "house"})
            return True

    def show_welcome(self, first_name: str, picks: list[dict], customer_id: str, seconds: float,
                     arrival_ts: float | None = None, own_picks: bool = False) -> int | None:
        """Welcome a customer for ``seconds``; a pending code on show comes back afterwards, and nothing changes while a
        sign-up is being captured (see the module doc). Returns the screen's new version, or None when the welcome was
        not shown (a capture: its picks were not shown either, so the arrival reports none).

        Args:
            picks: items to show, each ``{"id", "name", "price", "category", "description"}``
                (available items only; the caller filters).
            arrival_ts: monotonic time of the decision, for the latency benchmark.
            own_picks: True when the picks come from the customer's own menu, False for the house items of a
                customer with no menu yet or a menu the cloud marked not ``personal`` (its cold-start list)
                (:attr:`dangol_edge.menu_text.Picks.own`): the page's heading says which.
        """
        with self._cond:
            if self._capture is not None:
                log.info("welcome of %s not shown: a sign-up is being captured at the door", customer_id)
                return None
            return self._set({"screen": "welcome", "first_name": first_name, "picks": picks, "own_picks": own_picks,
                              "customer_id": customer_id, "arrival_ts": arrival_ts}, self._clock() + seconds)

    def show_enrolment(self, stage: str, code: str | None = None, seconds: float | None = None,
                       samples: int = 0, wanted: int = 0, why: str | None = None, regular: str | None = None,
                       still_pending: Callable[[], bool] | None = None) -> int:
        """Enrolment progress: ``stage`` is ``capturing`` (``samples`` good faces of ``wanted`` taken so
        far), ``pending`` (with ``code``), ``already`` (the face is an active customer's, ``regular``, their id),
        ``cancelled``, ``failed`` (``why``: ``none``, ``several``
        or ``few``, :meth:`dangol_edge.enrol.SampleCollector.shortfall_kind`) or ``not-saved`` (the gallery could
        not be written); shown for ``seconds`` (None: until the next change). A failure gives ``samples`` and
        ``wanted`` too: the good snapshots taken and the pool needed.

        ``regular`` is kept for the staff page only (:meth:`last_signup`), never put on the door
        screen (:meth:`snapshot`), which is public. ``capturing`` forgets the last sign-up's ending and is the capture
        in progress (:meth:`capture`) until another stage; an ending (:data:`SIGNUP_ENDINGS`) replaces the last one.

        ``still_pending`` (``pending`` only): answers whether the sign-up still waits for staff; a welcome then does
        not end the code (module doc). Any other stage drops a pending code for good."""
        with self._cond:
            self._capture = {"samples": samples, "wanted": wanted} if stage == "capturing" else None
            if stage == "capturing":
                self._signup = None
            elif stage in SIGNUP_ENDINGS:
                self._signup = {"stage": stage, "why": why, "samples": samples, "wanted": wanted, "code": code,
                                "regular": regular, "at": self._clock()}
            state = {"screen": "enrol", "stage": stage, "code": code, "samples": samples, "wanted": wanted, "why": why}
            until = None if seconds is None else self._clock() + seconds
            self._code = _Code(state, until, still_pending, self._clock()) if stage == "pending" else None
            return self._set(state, until)

    def capture(self) -> dict[str, int] | None:
        """The sign-up being captured, as the enrolment last reported it (``{"samples": good snapshots so far,
        "wanted": snapshots needed}``), whatever the door shows; None when none is."""
        with self._cond:
            return None if self._capture is None else dict(self._capture)

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
        """Take down a timed screen whose time is up (call regularly, e.g. on every frame): a welcome gives way to the
        pending code it displaced while the code has time left and its sign-up is still pending, anything else to
        the house menu. A code on show is checked every :data:`CODE_CHECK_S` and leaves once its sign-up is no longer
        pending. The check runs outside the lock (it reads the gallery); a screen changed meanwhile is left as is."""
        with self._cond:
            now, version, code = self._clock(), self._version, self._code
            if code is not None and code.until is not None and now >= code.until:
                code = self._code = None  # its time is up, shown or not
            expired = self._until is not None and now >= self._until
            if expired and (code is None or self._state.get("screen") != "welcome"):
                self._code = None
                self._set({"screen": "house"})
                return
            if not expired and (code is None or self._state is not code.state or now - code.checked < CODE_CHECK_S):
                return
        pending = self._ask(code)
        with self._cond:
            if self._version != version or self._code is not code:
                return  # the screen changed meanwhile: the next tick decides again
            code.checked = self._clock()
            if not pending:
                self._code = None
                self._set({"screen": "house"})
            elif expired:
                self._set(code.state, code.until)

    @staticmethod
    def _ask(code: _Code) -> bool:
        """``code.still_pending()``; True when there is no check, or when it raised (logged with its traceback, once per
        code): a code that cannot be checked keeps the rest of its time."""
        if code.still_pending is None:
            return True
        try:
            return bool(code.still_pending())
        except Exception:
            if not code.failed:
                code.failed = True
                log.exception("cannot tell whether the sign-up of code %s is still pending: the code keeps its time",
                              code.state.get("code"))
            return True

    def snapshot(self) -> dict[str, Any]:
        """The current state with its ``version``."""
        with self._cond:
            return {"version": self._version, **self._state}

    def wait(self, version: int, timeout: float) -> dict[str, Any]:
        """Block until the version differs from ``version`` or ``timeout`` seconds pass; return the snapshot."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != version, timeout=timeout)
            return {"version": self._version, **self._state}
