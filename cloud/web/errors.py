"""Error pages in the dashboard's layout (403, 404, 500) with the navigation, so an owner is never stranded on
a bare page; the POS API (``/api/``) answers problem JSON instead. A 500 is logged with its traceback by Flask."""

from __future__ import annotations

from flask import jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from dangol_cloud.web.home import bp

TEXT = {403: ("Not allowed", "Your account cannot open this page. Ask an owner if you need it."),
        404: ("Not found", "There is nothing here — it may have been removed, or the address is mistyped."),
        500: ("Something went wrong", "The error was logged. Try again; if it keeps happening, tell whoever runs "
                                      "this dashboard.")}


def _page(code: int):
    title, detail = TEXT[code]
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
