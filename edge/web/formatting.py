"""What the edge's pages say: prices in the café's currency, the house menu, a customer's visible picks,
the greeting of the hour, and "5 min ago" times for the staff page. Pure functions (no I/O)."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["ago", "format_price", "greeting", "house_menu", "visible_picks"]

_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "KRW": "₩", "JPY": "¥", "CNY": "¥", "INR": "₹",
            "AUD": "A$", "CAD": "C$", "NZD": "NZ$", "CHF": "CHF ", "SEK": "kr ", "NOK": "kr ", "DKK": "kr "}
_NO_DECIMALS = {"KRW", "JPY", "VND", "CLP", "ISK", "HUF", "TWD"}


def format_price(price: float | None, currency: str | None) -> str:
    """A price for the menu, e.g. ``€3.50``, ``₩4,500``; ``""`` when the price is unknown.

    Args:
        price: major units (``3.5`` is three euros fifty); None for no price.
        currency: ISO 4217 code (default EUR); unknown codes are written before the amount.
    """
    if price is None:
        return ""
    code = (currency or "EUR").upper()
    amount = f"{price:,.0f}" if code in _NO_DECIMALS else f"{price:,.2f}"
    return f"{_SYMBOLS.get(code, code + ' ')}{amount}"


def _catalogue_items(catalogue: dict | None) -> dict[str, dict]:
    return {str(i.get("id")): i for i in (catalogue or {}).get("items", [])}


def house_menu(catalogue: dict | None) -> list[dict]:
    """The house menu: available items grouped by category in catalogue order.

    Returns:
        ``[{"name": category, "items": [{"id", "name", "price", "description"}, ...]}, ...]``
        (price already formatted); empty without a catalogue.
    """
    groups: dict[str, list[dict]] = {}
    currency = (catalogue or {}).get("currency")
    for item in (catalogue or {}).get("items", []):
        if not item.get("available", True):
            continue
        groups.setdefault((item.get("category") or "").strip() or "More", []).append({
            "id": str(item.get("id")), "name": item.get("name", ""),
            "price": format_price(item.get("price"), currency), "description": item.get("description") or ""})
    return [{"name": k, "items": v} for k, v in groups.items()]


def visible_picks(picks: list[dict], catalogue: dict | None, limit: int) -> list[dict]:
    """A customer's picks as the screen may show them: only items the current catalogue lists as
    available (a missing catalogue shows none), with the catalogue's current name, price and description.

    Args:
        picks: the daemon's picks, each with ``id`` (or ``item_id``).
        limit: at most this many.
    Returns:
        ``[{"id", "name", "category", "price" (formatted), "description"}, ...]`` in pick order.
    """
    items = _catalogue_items(catalogue)
    currency = (catalogue or {}).get("currency")
    out: list[dict] = []
    for pick in picks or []:
        item = items.get(str(pick.get("id", pick.get("item_id"))))
        if item is None or not item.get("available", True):
            continue
        out.append({"id": str(item["id"]), "name": item.get("name", ""), "category": item.get("category"),
                    "price": format_price(item.get("price"), currency),
                    "description": item.get("description") or ""})
        if len(out) >= limit:
            break
    return out


def greeting(now: datetime | None = None) -> str:
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
    m = int(abs(secs) // 60)
    text = "just now" if m < 1 else f"{m} min" if m < 60 else (
        f"{m // 60} h {m % 60} min" if m < 24 * 60 else f"{m // 1440} d {m // 60 % 24} h")
    if text == "just now":
        return text
    return f"in {text}" if secs > 0 else f"{text} ago"
