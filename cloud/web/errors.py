"""Error pages in the dashboard's layout (403, 404, 500, 503) with the navigation, so an owner is never stranded on
a bare page; the POS API (``/api/``) answers problem JSON instead. A 500 is logged with its traceback by Flask. A
request that waited for SQLite's write lock past the busy timeout (another process importing or moving sales) gets
503 with ``Retry-After`` and :func:`dangol_cloud.sale_locks.busy_message` — nothing of it was written."""

from __future__ import annotations

import logging

from flask import jsonify, make_response, render_template, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

from dangol_cloud.sale_locks import BUSY_RETRY_AFTER, busy_message
from dangol_cloud.web.home import bp

log = logging.getLogger(__name__)


TEXT = {403: ("Not allowed", "Your account cannot open this page. Ask an owner if you need it."),
        404: ("Not found", "There is nothing here — it may have been removed, or the address is mistyped."),
        500: ("Something went wrong", "The error was logged. Try again; if it keeps happening, tell whoever runs "
                                      "this dashboard."),
        503: ("Busy, try again", "")}


def _page(code: int, detail: str | None = None):
    title, detail = TEXT[code][0], detail or TEXT[code][1]
    if request.path.startswith("/api/"):
        response = jsonify({"type": "about:blank", "title": title, "status": code, "detail": detail})
        response.mimetype = "application/problem+json"
        return response, code
    return render_template("error.html", code=code, title=title, detail=detail), code


@bp.app_errorhandler(403)
def forbidden(_exc: HTTPException):
    """403 in the layout."""
    return _page(403)


@bp.app_errorhandler(404)
def not_found(_exc: HTTPException):
    """404 in the layout."""
    return _page(404)


@bp.app_errorhandler(InternalServerError)
def server_error(_exc: HTTPException):
    """500 in the layout (the failing database transaction was rolled back by the request teardown)."""
    return _page(500)


@bp.app_errorhandler(OperationalError)
def database_busy(exc: OperationalError):
    """503 with ``Retry-After`` when ``exc`` is SQLite's "database is locked" (the request's open transaction is
    rolled back by the teardown; what it committed before stays, so the page does not claim nothing was saved); any
    other database error goes on to the 500 page."""
    busy = busy_message(exc)
    if busy is None:
        raise exc
    log.warning("%s %s refused: the database was busy (%s)", request.method, request.path, exc.orig)
    response = make_response(*_page(503, f"This could not be finished: {busy}."))
    response.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
    return response
