"""A confirmation step for destructive dashboard actions (erase a customer, retire an item, mark menu items sold
out or move them to another category in bulk, remove a device), without JavaScript: the action's button posts to
the action's URL; without a confirmation the view answers with a page that says what will happen and asks again
(for an erasure: type ``ERASE``), posting back to the same URL with the CSRF token and the confirmation. Only that
second post acts.
"""

from __future__ import annotations

from flask import render_template, request

from dangol_cloud.web.forms import ActionForm

__all__ = ["confirmation_page"]


def confirmation_page(*, title: str, detail: str, button: str, cancel_url: str, phrase: str | None = None,
                      keep: list[tuple[str, str]] | None = None):
    """None if this POST carries the confirmation, else the confirmation page to return instead of acting.

    Args:
        title: the question (``Erase Mina Park?``); detail: what will happen, in a sentence or two.
        button: the confirming button's label; cancel_url: where "Cancel" leads.
        phrase: a word the user must type (case-insensitive), e.g. ``ERASE``; None for a plain confirm button.
        keep: ``(name, value)`` form fields posted again with the confirmation (a bulk action's selection).
    Returns:
        None (confirmed) or ``(html, status)``: 200 for the first step, 422 when a typed phrase was wrong.
    """
    given = (request.form.get("confirm") or "").strip()
    if (phrase is None and given == "yes") or (phrase is not None and given.upper() == phrase.upper()):
        return None
    error = (f"Type {phrase} to confirm; nothing was changed." if phrase is not None and given else None)
    html = render_template("confirm.html", title=title, detail=detail, button=button, cancel_url=cancel_url,
                           phrase=phrase, error=error, action=ActionForm(), target=request.path,
                           keep=keep or [])
    return html, 422 if error else 200
