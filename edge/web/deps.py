"""What the blueprints need, kept in ``app.extensions["dangol_edge"]`` (as ``cloud/app.py`` keeps its services)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app

from ..config import EdgeConfig
from ..gallery import Customer, Gallery
from ..screen import Screen
from ..state import StateStore
from ..webguard import PinThrottle, Streams

EXTENSION = "dangol_edge"


@dataclass
class WebDeps:
    """The edge web app's dependencies.

    Attributes:
        screen, state, gallery, config: see :func:`dangol_edge.web.create_app`.
        on_activate, on_erase: the daemon's callbacks (None: nothing to tell).
        on_signup: the daemon's sign-up control, called with ``"enrol"`` (start capturing at the door) or
            ``"cancel"``; returns False if the request was dropped (None: no camera here, no sign-ups).
        text_version: the consent text version staff confirm (``display.consent_version``).
        pin: the staff PIN, or None (loopback only).
        app_id: an id of this app instance (the kiosk page reloads itself when it changes).
        streams: open event streams (bounded); pins: the per-client PIN back-off.
        storage: returns the daemon's storage state (``ok`` / ``full`` / ``error``), or None.
        button_problem: returns why the enrolment button could not be claimed (None: it works), or None.
    """

    screen: Screen
    state: StateStore
    gallery: Gallery
    config: EdgeConfig
    on_activate: Callable[[Customer], None] | None
    on_erase: Callable[[str], None] | None
    on_signup: Callable[[str], bool] | None
    text_version: str
    pin: str | None
    app_id: str
    streams: Streams
    pins: PinThrottle
    storage: Callable[[], str] | None = None
    button_problem: Callable[[], str | None] | None = None


def deps() -> WebDeps:
    """The current app's :class:`WebDeps` (inside a request or app context)."""
    return current_app.extensions[EXTENSION]
