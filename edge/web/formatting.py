"""What the edge's pages say: prices in the café's currency (the rule the dashboard shares,
:mod:`dangol_protocol.money`), the house menu, a customer's visible picks, the greeting of the hour, and "5 min ago"
times for the staff page. Pure functions (no I/O)."""

from __future__ import annotations

from datetime import datetime, timezone

from dangol_protocol import Catalogue
from dangol_protocol.money import format_money

from ..menu_text import available_items

__all__ = ["ago", "format_price", "greeting", "house_menu", "seconds_ago", "visible_picks"]


def format_price(price: float | None, currency: str | None) -> str:
    """A price for the menu, e.g. ``€3.50``, ``₩4,500``, ``$4.50``; ``""`` when the price is unknown.

    The one money rule the dashboard uses too (:func:`dangol_protocol.money.format_money`: the currency's own
    minor-unit digits, CLDR's symbols).

    Args:
        price: major units (``3.5`` is three euros fifty); None for no price.
        currency: ISO 4217 code, as the catalogue carries it (three characters, checked on receipt; default EUR).
    Raises:
        dangol_protocol.money.CurrencyError: ``currency`` is not three characters.
    """
    if price is None:
        return ""
    return format_money(price, currency or "EUR")


def house_menu(catalogue: Catalogue | None) -> list[dict]:
    """The house menu: available items marked ``house`` (the cloud marks at most its "house items per category",
    the best sellers; the other listed items are there for customers' picks) grouped by category in catalogue order.

    Returns:
        ``[{"name": category, "items": [{"id", "name", "price", "description"}, ...]}, ...]``
        (price already formatted); empty without a catalogue.
    """
    groups: dict[str, list[dict]] = {}
    if catalogue is None:
        return []
    for item in catalogue.items:
        if not item.available or not item.house:
            continue
        groups.setdefault((item.category or "").strip() or "More", []).append({
            "id": item.id, "name": item.name, "price": format_price(item.price, catalogue.currency),
            "description": item.description or ""})
    return [{"name": k, "items": v} for k, v in groups.items()]


def visible_picks(picks: list[dict], catalogue: Catalogue | None, limit: int) -> list[dict]:
    """A customer's picks as the screen may show them now: the chosen ids filtered again against the
    current catalogue (:func:`dangol_edge.menu_text.available_items`: an item sold out since the welcome
    started disappears; a missing catalogue shows none), with the catalogue's current name, price and
    description.

    Args:
        picks: the chosen picks on the screen, each with ``id`` (or ``item_id``).
        limit: at most this many.
    Returns:
        ``[{"id", "name", "category", "price" (formatted), "description"}, ...]`` in pick order.
    """
    ids = [str(p.get("id", p.get("item_id"))) for p in picks or []]
    currency = catalogue.currency if catalogue else None
    return [{"id": item.id, "name": item.name, "category": item.category,
             "price": format_price(item.price, currency), "description": item.description or ""}
            for item in available_items(ids, catalogue, limit)]


def greeting(now: datetime | None = None) -> str:
    """"Good morning" (05–11), "Good afternoon" (12–17), "Good evening" (18–23), else "Nice to see you", by the
    hour of ``now`` as given: the café's wall-clock time (:func:`dangol_edge.menu_text.door_time`, the
    catalogue's zone); None reads the box's local time."""
    hour = (now or datetime.now()).hour
    return ("Good morning" if 5 <= hour < 12 else "Good afternoon" if 12 <= hour < 18
            else "Good evening" if hour >= 18 else "Nice to see you")


def ago(iso: str | None, now: datetime) -> str:
    """'5 min ago' / 'in 3 h 10 min' for an ISO timestamp."""
    if not iso:
        return ""
    try:
        ts = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    secs = (ts - now).total_seconds()
    text = _span(secs)
    if text == "just now":
        return text
    return f"in {text}" if secs > 0 else f"{text} ago"


def seconds_ago(secs: float) -> str:
    """'just now' (under a minute) / '2 min ago' / '1 h 5 min ago' for something ``secs`` seconds in the past."""
    text = _span(secs)
    return text if text == "just now" else f"{text} ago"


def _span(secs: float) -> str:
    """'just now' (under a minute either way), '5 min', '3 h 10 min' or '2 d 4 h' for ``secs`` seconds."""
    m = int(abs(secs) // 60)
    return "just now" if m < 1 else f"{m} min" if m < 60 else (
        f"{m // 60} h {m % 60} min" if m < 24 * 60 else f"{m // 1440} d {m // 60 % 24} h")
