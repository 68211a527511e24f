"""Money, one rule for the dashboard and the door: which currencies exist and how an amount is written.

- :func:`check_currency` — a currency setting or message field is an ISO 4217 code of a currency in circulation
  (``"krw"`` → ``"KRW"``); anything else (``"won"``, ``"ZZZ"``, ``"XXX"``, a withdrawn ``"DEM"``) raises
  :class:`CurrencyError`, a ``ValueError`` naming the input. The cloud's ``CURRENCY`` setting and a store's currency
  (Stores page) — what an owner types — are checked by it.
- :func:`currency_code` — the wire's rule, three characters as ``catalogue/1`` always bounded it (letters put in
  capitals): a tolerant reader, so a box whose babel is older than the cloud's (a currency introduced since) still
  shows the menu, and one reading an older cloud's ``NT$`` too (a tighter bound would need a schema bump,
  ``docs/mqtt.md``).
- :func:`minor_digits` — the currency's minor-unit digits (KRW, JPY 0; USD, EUR 2; BHD 3).
- :func:`format_money` — an amount in **major units** (``4.5`` is four dollars fifty, ``4500`` is 4,500 won) as
  both sides show it: ``₩4,500``, ``$4.50``, ``€3.60``, ``CHF 4.50``.

Source of the data: the Unicode CLDR, as shipped by the ``babel`` package (pure Python, no compiled parts, so it
installs on the Raspberry Pi as on the cloud). The currencies are those CLDR lists as legal tender in some
territory with no end date (``territory_currencies``: ISO 4217's active codes without the funds, precious metals,
SDR and test codes), read from the installed babel's data, never from the clock, so a box and the cloud with
the same babel agree whatever their dates. The digits are CLDR's ``currencyData`` fractions
(:func:`babel.numbers.get_currency_precision`), ISO 4217's minor units with CLDR's usage corrections (e.g. 0 for
ISK and IQD). Symbols and grouping are those of the ``en`` locale, the language of the dashboard and the door.
Amounts are rounded half up (as a till rounds), not babel's half-even.
"""

from __future__ import annotations

import functools
import re
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext

from babel.core import get_global
from babel.numbers import format_currency, get_currency_precision

__all__ = ["LOCALE", "CurrencyError", "check_currency", "currencies", "currency_code", "format_money", "minor_digits"]

#: The locale whose currency symbols and digit grouping both sides show (``₩4,500``, ``$4.50``).
LOCALE = "en"

_CODE = re.compile(r"[A-Z]{3}")
#: CLDR's currency spacing: a symbol ending in a letter (``CHF``) is kept apart from the digits by a no-break space.
_LETTER_THEN_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)")


class CurrencyError(ValueError):
    """Not an ISO 4217 code of a currency in circulation; the message names the input."""


@functools.cache
def currencies() -> frozenset[str]:
    """ISO 4217 codes of the currencies in circulation: legal tender in some territory with no end date in CLDR
    (babel's ``territory_currencies``). About 150 codes; no ``XXX``/``XTS`` (no currency, testing), ``XAU`` and the
    other metals and funds, nor withdrawn currencies (``DEM``, ``HRK``)."""
    return frozenset(code for rows in get_global("territory_currencies").values()
                     for code, _start, end, tender in rows if tender and end is None)


def currency_code(value: object) -> str:
    """``value`` as the wire carries a currency: three characters, in capitals (``"krw"`` → ``"KRW"``; an older
    cloud's ``"NT$"`` kept), known to this babel or not.

    Raises:
        CurrencyError: not a string of three characters; the message names the input (cut to 20 characters).
    """
    code = value.strip().upper() if isinstance(value, str) else None
    if code is None or len(code) != 3:
        shown = repr(value[:20] if isinstance(value, str) else value)
        raise CurrencyError(f"{shown} is not a currency code (three letters of ISO 4217, e.g. EUR, KRW, USD)")
    return code


def check_currency(value: object) -> str:
    """``value`` as an ISO 4217 code in capitals (``" krw "`` → ``"KRW"``).

    Raises:
        CurrencyError: not a string naming a currency of :func:`currencies`; the message names the input (cut to
            20 characters).
    """
    code = value.strip().upper() if isinstance(value, str) else None
    if code is None or not _CODE.fullmatch(code) or code not in currencies():
        shown = repr(value[:20] if isinstance(value, str) else value)
        raise CurrencyError(f"{shown} is not an ISO 4217 currency code in use (e.g. EUR, KRW, USD)")
    return code


def minor_digits(currency: str) -> int:
    """How many digits the currency's minor unit has: 0 for KRW and JPY, 2 for USD and EUR, 3 for BHD (CLDR).

    Raises:
        CurrencyError: ``currency`` fails :func:`check_currency`.
    """
    return get_currency_precision(check_currency(currency))


def format_money(amount: float | int | Decimal, currency: str) -> str:
    """``amount`` as the dashboard and the door show it: ``format_money(4500, "KRW") == "₩4,500"``,
    ``format_money(4.5, "USD") == "$4.50"``, ``format_money(-4.5, "USD") == "-$4.50"``.

    Args:
        amount: major units of ``currency`` (``4.5`` dollars, not 450 cents); rounded half up to the currency's
            :func:`minor_digits`.
        currency: an ISO 4217 code (any case). Another three characters this babel does not list (a currency newer
            than the installed data, or a value stored before the checks: ``WON``, ``NT$``) is written with its code
            and two decimals (``WON\u00a04,500.00``, CLDR's default), not refused: a price is never hidden for want
            of data. An amount of any size is written whole (rounded in a decimal context as wide as it needs).
    Raises:
        CurrencyError: ``currency`` fails :func:`currency_code` (not three characters).
        ValueError: ``amount`` is not a finite number (``inf``, ``nan``).
    """
    code = currency_code(currency)
    try:
        value = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"{amount!r} is not an amount") from None
    if not value.is_finite():
        raise ValueError(f"{amount!r} is not a finite amount")
    letters = _CODE.fullmatch(code) is not None
    digits = get_currency_precision(code) if letters else 2
    wide = Context(prec=max(28, value.adjusted() + digits + 2))  # 1e30 won fits (the default context has 28 digits)
    value = value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP, context=wide)
    if value == 0:
        value = abs(value)  # never "-₩0"
    if not letters:  # e.g. an older cloud's "NT$": babel takes codes of letters only
        return f"{code}\u00a0{value:,.{digits}f}"
    with localcontext(wide):
        text = format_currency(value, code, locale=LOCALE, currency_digits=True)
    return _LETTER_THEN_DIGIT.sub("\u00a0", text)
