"""Query-string parameters of the dashboard pages, bounded before they reach SQL."""

from __future__ import annotations

from flask import request

__all__ = ["MAX_PAGE", "page_arg"]

#: Largest page number accepted; larger (or 20-digit) values are clamped to it (an empty page, never a 500:
#: SQLite's OFFSET is a signed 64-bit integer and an overflow is an error).
MAX_PAGE = 1_000_000


def page_arg(name: str = "page") -> int:
    """The 1-based page number in ``?page=``: 1 when missing or not a plain decimal number, clamped to
    1..:data:`MAX_PAGE`."""
    raw = (request.args.get(name) or "").strip()
    if not raw.isascii() or not raw.isdigit():
        return 1
    return MAX_PAGE if len(raw) > len(str(MAX_PAGE)) else min(max(int(raw), 1), MAX_PAGE)
