"""What the menu item form needs beyond its fields: the item's POS code, the currency its price is in, and a photo
kept across a refused submit. Used by :mod:`dangol_cloud.web.catalogue`.

* **POS code** (``catalogue_items.ref``): what a till sends as a sale line's ``item`` (``POST /api/v1/purchases``
  accepts an item's id or this code). A new item's code is derived from its name, keeping letters of every script
  (:func:`pos_code`: "아메리카노" → ``아메리카노``, "Flat White" → ``flat-white``, as before for Latin names); the
  owner may set another one on the form (:func:`code_problem`: the POS API's rules and unique).
* **Currency**: an item's catalogue price is in the catalogue's currency (:func:`menu_currency`: stored once,
  :func:`dangol_cloud.store_prices.catalogue_currency`; read without writing); a chain's item may also have a price
  per store, in that store's currency (:mod:`dangol_cloud.web.store_price_form`, :mod:`dangol_cloud.store_prices`).
  A price takes the decimals of its currency (CLDR's, :func:`dangol_cloud.store_prices.currency_digits`): whole won
  and yen, cents of a dollar (:func:`price_problem`; the input's ``step`` and shown decimals: :func:`show_price_in`).
* **Held photo**: a photo attached to a form that is refused for another field (a price typo) is kept in
  ``photos/held/`` under a name remembered in the signed session for that form, shown on the form again and saved
  with the item at the next submit unless another photo is attached (:func:`hold_photo`, :func:`take_held`).
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from babel.numbers import get_currency_name
from flask import session as web_session
from sqlalchemy import or_, select

from dangol_cloud.app import get_settings
from dangol_cloud.models import CatalogueItem
from dangol_cloud.sale_rules import REF_MAX
from dangol_cloud.store_prices import currency_digits, read_catalogue_currency, store_currencies
from dangol_protocol.money import LOCALE

__all__ = ["code_problem", "currency_digits", "drop_held", "held_photo", "hold_photo", "menu_currency", "pos_code",
           "price_problem", "show_price_in", "take_held", "unique_code"]

#: Longest derived code before a ``-N`` suffix, leaving room for it within :data:`REF_MAX`.
CODE_BASE_MAX = REF_MAX - 8
#: The session key of the held photo: ``{"slot": "new" or an item id, "name": "held/<hex>.jpg"}``.
HELD_KEY = "held_item_photo"
#: A held photo older than this (seconds: one day) belongs to a form left without a submit; the next hold deletes it.
HELD_MAX_AGE_S = 86_400
#: Control characters, refused in a POS code as the POS API refuses them in ``item`` (:data:`api.NO_CONTROL`).
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def pos_code(name: str) -> str:
    """A readable POS code for an item called ``name``: its letters, digits and combining marks (any script, NFC,
    lower case), every other run of characters as one ``-``, at most :data:`CODE_BASE_MAX` characters; ``item``
    when nothing is left (a name of only symbols)."""
    out, gap = [], False
    for char in unicodedata.normalize("NFC", name).lower():
        if unicodedata.category(char)[0] in "LNM":
            if gap and out:
                out.append("-")
            out.append(char)
            gap = False
        else:
            gap = True
    code = "".join(out)[:CODE_BASE_MAX].strip("-")
    return code or "item"


def unique_code(session, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``… : the first that no item uses as its code or id."""
    code, n = base, 1
    while session.scalar(select(CatalogueItem.id).where(or_(CatalogueItem.ref == code, CatalogueItem.id == code))):
        n += 1
        code = f"{base}-{n}"
    return code


def code_problem(session, code: str, item_id: str | None) -> str | None:
    """Why ``code`` cannot be the POS code of item ``item_id`` (None: a new item), or None if it can. The message
    names the field. Refused: empty, longer than :data:`REF_MAX` characters or with a control character (the POS
    API could not send it), or already another item's code or id (the till's sale would be ambiguous). The caller
    strips surrounding spaces first."""
    if not code:
        return "POS code: enter the code your till sends for this item (or leave it as it was)."
    if len(code) > REF_MAX:
        return f"POS code: at most {REF_MAX} characters (this one has {len(code)})."
    if CONTROL.search(code):
        return "POS code: no control characters (tabs, line breaks)."
    other = session.scalar(select(CatalogueItem).where(or_(CatalogueItem.ref == code, CatalogueItem.id == code),
                                                       *([CatalogueItem.id != item_id] if item_id else [])))
    if other is not None:
        return f"POS code {code!r} is already used by “{other.name}”: each item needs its own code."
    return None


def menu_currency(session, default: str) -> tuple[str, list[tuple[str, str]]]:
    """``(currency, differing)``: the catalogue prices' currency
    (:func:`dangol_cloud.store_prices.read_catalogue_currency`: the stored one, read without writing; ``default`` is
    the ``CURRENCY`` setting) and the ``(store name, currency)`` of each store selling in another currency, by name."""
    currency = read_catalogue_currency(session, default)
    return currency, [(name, code) for _sid, name, code in store_currencies(session, default) if code != currency]


def _fits(value: Decimal, digits: int) -> bool:
    """Whether ``value`` has at most ``digits`` decimals (False for one too wide to tell: a huge stored price)."""
    try:
        return value == value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR)
    except ArithmeticError:  # decimal.InvalidOperation: more digits than the context's precision
        return False


def price_problem(field, currency: str, label: str = "Price") -> str | None:
    """Why the submitted price of the item form's ``field`` (a WTForms ``DecimalField``) cannot be a price in
    ``currency`` — more decimals than the currency has (:func:`currency_digits`: ``4500.5`` won, ``4.555`` dollars)
    — naming the field (``label``: "Price", "Price at Taipei"), the currency, what was typed and the two nearest
    prices; None when it can, or when the field holds no number or was refused already (its own validators say
    why)."""
    value = field.data
    if field.errors or not isinstance(value, Decimal) or not value.is_finite():
        return None
    digits = currency_digits(currency)
    if _fits(value, digits):
        return None
    step = Decimal(1).scaleb(-digits)
    low, high = value.quantize(step, rounding=ROUND_FLOOR), value.quantize(step, rounding=ROUND_CEILING)
    typed = (field.raw_data[0] if field.raw_data else str(value)).strip()[:40]
    called = get_currency_name(currency, locale=LOCALE)  # the code itself when babel does not know it
    name = f"{called} ({currency})" if called != currency else currency
    if digits == 0:
        return (f"{label}: {name} has no smaller unit, so a price is a whole number; {typed} is not. "
                f"Enter {low} or {high}.")
    return (f"{label}: {name} prices have at most {digits} decimal{'s' if digits > 1 else ''}; {typed} has more. "
            f"Enter {low} or {high}.")


def show_price_in(field, currency: str) -> str:
    """Show the item form's price ``field`` with the decimals of ``currency`` (``4500`` won, not ``4500.00``; a
    stored price with more decimals than that keeps them, so the form never shows a rounded price), and return the
    price input's ``step`` (``"1"`` for won, ``"0.01"`` for dollars)."""
    digits = currency_digits(currency)
    value = field.data
    if value is not None and not field.raw_data:
        try:
            shown = Decimal(str(value))
        except ArithmeticError:
            shown = None
        if shown is not None and shown.is_finite() and _fits(shown, digits):
            field.places = digits
    return str(Decimal(1).scaleb(-digits))


# --- a photo kept across a refused submit -------------------------------------------------------------------------
def hold_photo(form, slot: str) -> None:
    """Keep the photo attached to ``form`` (refused for another field) for form ``slot`` ("new" or the item id),
    replacing one held before; nothing when no photo was attached or the photo itself was refused."""
    from dangol_cloud.web.photos import prepared_upload

    file = form.photo.data
    if form.photo.errors or not file or not getattr(file, "filename", ""):
        return
    data = prepared_upload(form.photo)  # as a saved photo (made by the form's check: no second decode)
    drop_held()
    folder = get_settings().photos_dir / "held"
    folder.mkdir(parents=True, exist_ok=True)
    _prune_held(folder)
    name = f"held/{uuid.uuid4().hex}.jpg"
    (get_settings().photos_dir / name).write_bytes(data)
    web_session[HELD_KEY] = {"slot": slot, "name": name}


def _prune_held(folder, now: float | None = None) -> int:
    """Delete held photos older than :data:`HELD_MAX_AGE_S` (forms left without a submit); returns how many."""
    now = time.time() if now is None else now
    gone = 0
    for path in folder.glob("*.jpg"):
        try:
            if now - path.stat().st_mtime > HELD_MAX_AGE_S:
                path.unlink()
                gone += 1
        except FileNotFoundError:  # another request pruned or took it
            pass
    return gone


def held_photo(slot: str) -> str | None:
    """The held photo's name under the photos folder (``held/<hex>.jpg``) for form ``slot``, or None."""
    held = web_session.get(HELD_KEY)
    if not isinstance(held, dict) or held.get("slot") != slot:
        return None
    name = str(held.get("name") or "")
    if not re.fullmatch(r"held/[0-9a-f]{32}\.jpg", name) or not (get_settings().photos_dir / name).is_file():
        return None
    return name


def take_held(slot: str) -> str | None:
    """Move the photo held for form ``slot`` to the photos folder and forget it; its new name, or None."""
    name = held_photo(slot)
    if name is None:
        return None
    folder = get_settings().photos_dir
    final = name.removeprefix("held/")
    (folder / name).replace(folder / final)
    web_session.pop(HELD_KEY, None)
    return final


def drop_held() -> None:
    """Delete the held photo, whatever its form (a fresh form, or a new one replacing it)."""
    held = web_session.pop(HELD_KEY, None)
    name = str(held.get("name") or "") if isinstance(held, dict) else ""
    if re.fullmatch(r"held/[0-9a-f]{32}\.jpg", name):
        (get_settings().photos_dir / name).unlink(missing_ok=True)
