"""Blueprint ``menu``: the kiosk's full-screen menu page, its event stream and the JSON API (loopback only)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone

import flask
from flask import Blueprint, Response, current_app, render_template, request

from dangol_protocol import Catalogue

from ..menu_text import door_time, door_zone
from .deps import WebDeps, deps
from .formatting import greeting, house_menu, visible_picks

log = logging.getLogger(__name__)

bp = Blueprint("menu", __name__)

#: Seconds between checks of the cached catalogue's revision by each open event stream.
CATALOGUE_POLL_S = 1.0
#: Seconds between ``ping`` events (they also reveal a closed connection so its thread ends).
HEARTBEAT_S = 15.0
#: Longest wait on the screen in one step of an event stream, seconds (bounds the reaction to stop()).
STREAM_STEP_S = 0.25


def utc_now() -> datetime:
    """The current instant (aware, UTC); the pages' greeting and clock read it on the café's clock."""
    return datetime.now(timezone.utc)


def view(d: WebDeps, snapshot: dict, catalogue: Catalogue | None, revision: str | None = None) -> dict:
    """The screen snapshot as the page gets it: the welcome's chosen picks filtered again against the
    current catalogue (:func:`~dangol_edge.web.formatting.visible_picks`, by the rules of
    :mod:`dangol_edge.menu_text`), plus ``catalogue_version``, ``catalogue_revision`` (``revision``: the cached
    catalogue's content revision, :meth:`~dangol_edge.state.StateStore.catalogue_with_revision`, which a
    same-version correction changes too; the page re-renders when it or the screen's ``version`` changes),
    ``app``, ``welcome_s`` (seconds), and the café's
    clock for the page's own ticking clock: ``clock_zone`` (the catalogue's IANA zone, or None for the box's
    local time) and ``clock_offset`` (that zone's UTC offset now, minutes east; None without a zone), which the
    page adds to UTC if its browser does not know the zone."""
    out = dict(snapshot)
    if out.get("screen") == "welcome":
        out["picks"] = visible_picks(out.get("picks") or [], catalogue, d.config.display.picks)
    out["catalogue_version"] = catalogue.version if catalogue else None
    out["catalogue_revision"] = revision if catalogue else None
    out["app"] = d.app_id
    out["welcome_s"] = d.config.display.welcome_s  # the page's own timer takes a welcome down after this
    zone = door_zone(catalogue)
    offset = door_time(catalogue, utc_now()).utcoffset() if zone else None
    out["clock_zone"] = zone
    out["clock_offset"] = round(offset.total_seconds() / 60) if offset is not None else None
    return out


#: Item photos the screen shows: only images inlined in the catalogue snapshot (the page fetches nothing).
PHOTO_PREFIXES = ("data:image/jpeg;base64,", "data:image/png;base64,", "data:image/webp;base64,")


def photos(catalogue: Catalogue | None) -> dict[str, str]:
    """``{item id: data URI}`` of the catalogue items that carry an inlined photo in ``photo_url``."""
    return {i.id: i.photo_url for i in (catalogue.items if catalogue else [])
            if i.photo_url and i.photo_url.startswith(PHOTO_PREFIXES)}


def render_screen(app: flask.Flask, v: dict, catalogue: Catalogue | None) -> str:
    """The screen's HTML (``_screen.html``): house menu, welcome or enrolment; the greeting and the clock on the
    café's clock (:func:`dangol_edge.menu_text.door_time`)."""
    menu = house_menu(catalogue)
    count = sum(len(g["items"]) for g in menu)
    now = door_time(catalogue, utc_now())  # the café's clock (the catalogue's zone), as the day-part's
    return app.jinja_env.get_template("_screen.html").render(
        v=v, menu=menu, cols=1 if count <= 4 else 2 if count <= 10 else 3 if count <= 36 else 4,
        greeting=greeting(now), now=now, photos=photos(catalogue))


class CatalogueReads:
    """The current streak of failed reads of one state file's cached catalogue (every open event stream reads it
    each :data:`CATALOGUE_POLL_S`): its first failure is logged, the rest only counted, and the streak's end logged
    with the count — never a log line per read."""

    def __init__(self):
        self._lock = threading.Lock()
        self.problem: str | None = None  # why the reads fail, for /api/catalogue (None: they work)
        self.failures = 0  # failed reads in the current streak

    def failed(self, exc: Exception) -> None:
        """A read raised ``exc``: a storage error (``sqlite3.Error``) or anything else (logged with its traceback)."""
        storage = isinstance(exc, sqlite3.Error)
        with self._lock:
            first = self.failures == 0
            self.failures += 1
            self.problem = (f"the cached catalogue cannot be read: this device's storage failed ({exc})" if storage
                            else f"the cached catalogue cannot be read ({type(exc).__name__}: {exc})")
        if first:
            log.error("%s; the door shows no house menu until it can be read again (logged once until then)",
                      self.problem, exc_info=None if storage else exc)

    def worked(self) -> None:
        """A read worked: ends the streak (logged with how many reads failed)."""
        if not self.failures:
            return
        with self._lock:
            failures, self.failures, self.problem = self.failures, 0, None
        if failures:
            log.info("the cached catalogue can be read again (after %d failed reads)", failures)


_reads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # state store -> its CatalogueReads
_reads_lock = threading.Lock()


def catalogue_reads(d: WebDeps) -> CatalogueReads:
    """The :class:`CatalogueReads` of ``d.state`` (one per state store, shared by every request and stream)."""
    with _reads_lock:
        reads = _reads.get(d.state)
        if reads is None:
            reads = _reads[d.state] = CatalogueReads()
        return reads


def read_catalogue(d: WebDeps) -> Catalogue | None:
    """The cached catalogue, or None: none cached yet, or the cache cannot be read (the screen stays up, showing no
    house menu; :func:`catalogue_problem` says why; logged once per streak of failed reads: :class:`CatalogueReads`)."""
    return read_catalogue_revision(d)[0]


def read_catalogue_revision(d: WebDeps) -> tuple[Catalogue | None, str | None]:
    """(:func:`read_catalogue`, the catalogue's content revision) read together
    (:meth:`~dangol_edge.state.StateStore.catalogue_with_revision`); (None, None) when there is none to show."""
    reads = catalogue_reads(d)
    try:
        catalogue, revision = d.state.catalogue_with_revision()
    except Exception as exc:  # a broken cache or storage must not take the screen down
        reads.failed(exc)
        return None, None
    reads.worked()
    return catalogue, revision


def catalogue_problem(d: WebDeps) -> str | None:
    """Why the last read of the cached catalogue failed (the state file could not be read), or None while it works."""
    return catalogue_reads(d).problem


@bp.get("/")
def menu_page():
    d = deps()
    catalogue, revision = read_catalogue_revision(d)
    v = view(d, d.screen.snapshot(), catalogue, revision)
    return render_template("menu.html", v=v, key=f"{v['version']}:{v['catalogue_revision'] or ''}",
                           screen_html=render_screen(current_app, v, catalogue))


@bp.get("/api/state")
def api_state():
    d = deps()
    return flask.jsonify(view(d, d.screen.snapshot(), *read_catalogue_revision(d)))


@bp.get("/api/catalogue")
def api_catalogue():
    d = deps()
    catalogue = read_catalogue(d)
    if catalogue is None:
        problem = catalogue_problem(d)
        if problem is not None:  # not "none yet": one may be cached, but it cannot be read now
            return flask.jsonify({"error": problem}), 503, {"Retry-After": "5"}
        return flask.jsonify({"error": "no catalogue cached yet"}), 404
    return flask.Response(catalogue.model_dump_json(by_alias=True), mimetype="application/json")


@bp.get("/events")
def events():
    d = deps()
    app = current_app._get_current_object()  # the generator runs after the request context is gone
    streams = d.streams
    release = streams.try_enter()
    if release is None:
        log.warning("refused an event stream from %s: %d open already", request.remote_addr, streams.limit)
        return Response("Too many open event streams.\n", status=503, mimetype="text/plain",
                        headers={"Retry-After": "5"})

    def stream() -> Iterator[str]:
        try:
            yield "retry: 1000\n\n"
            sent: tuple | None = None
            snap = d.screen.snapshot()
            (catalogue, revision), polled = read_catalogue_revision(d), time.monotonic()
            beat = time.monotonic()
            while not streams.stopping.is_set():
                now = time.monotonic()
                if now - polled >= CATALOGUE_POLL_S:
                    (catalogue, revision), polled = read_catalogue_revision(d), now
                key = (snap["version"], revision)  # a same-version correction changes the revision too
                if key != sent:
                    v = view(d, snap, catalogue, revision)
                    v["html"] = render_screen(app, v, catalogue)
                    yield f"data: {json.dumps(v, separators=(',', ':'))}\n\n"
                    sent, beat = key, now
                elif now - beat >= HEARTBEAT_S:
                    yield "event: ping\ndata: {}\n\n"
                    beat = now
                snap = d.screen.wait(snap["version"], STREAM_STEP_S)
        finally:
            release()

    response = Response(stream(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(release)  # also when the stream never started (client gone at once)
    return response
