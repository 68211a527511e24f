"""Reading purchase files, shared by every format of :mod:`dangol_cloud.importers`: the row types
(:class:`PurchaseRow`, :class:`RowError`), field parsers that reject a bad value naming its column, the
headers of each format, and the line-by-line driver that turns each data line into a row or a row error.

A file's text is checked whole before its first row is read (:mod:`dangol_cloud.import_text`: strict UTF-8 with or
without a BOM, UTF-16 with a BOM, a legacy code page only when its reading is certain; otherwise
:class:`ImportFormatError` naming the line and byte, nothing read). The header is line 1, so the first data line is
line 2; its separator is one of ``, ; tab |`` and its names match in any capitalisation. A line with a NUL
character, unreadable CSV or the wrong number of columns is a :class:`RowError`; nothing of it is imported. So is a
sale time or a field outside the bounds every sale meets (:mod:`dangol_cloud.sale_rules`: times from 1990 to one
day ahead, ids and names that fit their columns, a line's quantity and amount as the POS API bounds them); the message
names the column and the value or the limit.
In a file separated by ``;``, tab or ``|``, a number may use a decimal comma (``2,50``); in a comma-separated one
it cannot (it is a row error).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dangol_cloud.import_text import (
    ImportFormatError, TextInfo, canonical_header, count_lines, open_text, sniff_delimiter, split_line,
)
from dangol_cloud.sale_rules import sale_time_error

__all__ = ["CJ_COLUMNS", "CJ_PRODUCT_COLUMNS", "CSV_COLUMNS", "CSV_OPTIONAL_COLUMNS", "TA_FENG_COLUMNS", "Header",
           "ImportFormatError", "PurchaseRow", "RowError", "TextInfo", "count_data_lines", "header_hint"]


@dataclass(frozen=True)
class PurchaseRow:
    """One validated line item.

    Attributes:
        line: 1-based line number in the source file (header = line 1).
        customer_ref: external customer id exactly as in the file (Ta-Feng leading zeros kept).
        item_ref: menu item id (Ta-Feng PRODUCT_SUBCLASS, Complete Journey product_category, csv item).
        product_id: the source product id (barcode / product number), kept as a detail; None if absent.
        quantity: units bought (float; more than 0 and at most :data:`~dangol_cloud.sale_rules.MAX_LINE_QUANTITY`;
            0 too in a plain CSV and Complete Journey, e.g. coupon lines, and more for Complete Journey's fuel:
            :data:`~dangol_cloud.sale_rules.CSV_LINE`, :data:`~dangol_cloud.sale_rules.COMPLETE_JOURNEY_LINE`).
        amount: line total in the source currency (Ta-Feng NT$, Complete Journey USD), if given: 0 to
            :data:`~dangol_cloud.sale_rules.MAX_LINE_AMOUNT`.
        ts: naive datetime, local time as written in the file (Ta-Feng has day resolution: 00:00); aware when
            the file says which instant (a CSV time with a UTC offset, Complete Journey's UTC times): the import
            stores it as that instant and shows it in the café's time zone.
        store_ref: Complete Journey ``store_id`` or the csv ``store`` column; None otherwise.
        category: item category if the source has one (see module docstring), else None.
        store_is_code: True when ``store_ref`` is meant as the shop's store code (a plain CSV's ``store`` column):
            a value no store has is a row error; False for a data set's own store numbers (Complete Journey's
            ``store_id``): a number no store has as its code is filed under the upload's store, and counted
            (:attr:`dangol_cloud.ingest.ImportReport.unmatched_store_rows`).
    """

    line: int
    customer_ref: str
    item_ref: str
    product_id: str | None
    quantity: float
    amount: float | None
    ts: datetime
    store_ref: str | None
    category: str | None
    store_is_code: bool = True


@dataclass(frozen=True)
class RowError:
    """A data line that was rejected: ``line`` (1-based, header = 1), a human ``message``, the ``raw`` text."""

    line: int
    message: str
    raw: str


class _BadRow(Exception):
    """Internal: raised by a row parser, turned into a RowError."""


class _Record(dict):
    """A data line's fields by column name; ``decimal_comma``: its file is not comma-separated, so ``2,50`` is 2.5."""

    decimal_comma = False


_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")
#: ``4,500`` / ``11,000``: a thousands separator as often as a decimal comma (KRW, JPY amounts); never guessed.
_THOUSANDS_LIKE = re.compile(r"[+-]?[1-9]\d{0,2},\d{3}")
#: Year-first times with ``-`` or ``/`` (one separator throughout), one- or two-digit month, day and hour.
_YEAR_FIRST = re.compile(r"(\d{4})([-/])(\d{1,2})\2(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?")
#: A date with the day or month first (``01/02/2017``): which is which cannot be told.
_DAY_OR_MONTH_FIRST = re.compile(r"\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b.*")
_ISO_EXPECTED = ("YYYY-MM-DD HH:MM[:SS] (ISO 8601, optionally with a UTC offset such as +09:00) "
                 "or YYYY/MM/DD HH:MM[:SS]")


def _iso_or_year_first(text: str) -> datetime:
    """ISO 8601 (an offset kept), else a year-first ``YYYY/MM/DD[ HH:MM[:SS]]`` (or with ``-``) read the same way.

    Raises:
        ValueError: neither.
    """
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        match = _YEAR_FIRST.fullmatch(text)
        if match is None:
            raise
        year, _, month, day, hour, minute, second, fraction = match.groups()
        return datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                        int((fraction or "0").ljust(6, "0")))


# --- field parsers ---------------------------------------------------------------------------------


def _required(rec: dict[str, str], col: str) -> str:
    value = rec[col].strip()
    if not value:
        raise _BadRow(f"missing {col}")
    return value


def _optional(rec: dict[str, str], col: str | None) -> str | None:
    if col is None or col not in rec:
        return None
    value = rec[col].strip()
    return value or None


def _number(rec: dict[str, str], col: str, *, required: bool = True,
            check: Callable[[float], str | None] | None = None) -> float | None:
    """The number in column ``col`` (None if empty and not ``required``); a row error naming the column if it is
    missing, unreadable, not finite or, with ``check`` (e.g. :func:`dangol_cloud.sale_rules.amount_error`), outside
    its bounds (the message then says why after the value)."""
    text = rec.get(col, "").strip()
    if not text:
        if required:
            raise _BadRow(f"missing {col}")
        return None
    if getattr(rec, "decimal_comma", False) and _DECIMAL_COMMA.fullmatch(text):
        if _THOUSANDS_LIKE.fullmatch(text):
            raise _BadRow(f"{col} {text!r} is ambiguous: a decimal comma or a thousands separator? Write it without "
                          "the separator (4500) or with a decimal point (4.5)")
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        raise _BadRow(f"{col} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise _BadRow(f"{col} is not a finite number: {text!r}")
    problem = check(value) if check is not None else None
    if problem:
        raise _BadRow(f"{col} {text!r} {problem}")
    return value


def _bounded(value: str | None, label: str, limit: int) -> str | None:
    """``value`` if it has at most ``limit`` characters (or is None); else a row error naming ``label``."""
    if value is not None and len(value) > limit:
        raise _BadRow(f"{label} is longer than {limit} characters ({len(value)}): {value[:24]!r}…")
    return value


def _timestamp(rec: dict[str, str], col: str, fmt: str | None, tz: timezone | None = None) -> datetime:
    """The time in column ``col`` (``fmt``: a strptime format; None: ISO 8601, or year-first
    ``YYYY/MM/DD[ HH:MM[:SS]]``), marked as zone ``tz`` if given; a row error if it is unreadable (a day- or
    month-first date is refused as ambiguous, never guessed) or no plausible sale time
    (:func:`dangol_cloud.sale_rules.sale_time_error`: a naive time is checked for any zone here, and again in its
    store's zone by the import)."""
    text = _required(rec, col)
    try:
        if fmt is None:  # ISO 8601; an offset is kept (that instant), without one it is the café's local time
            value = _iso_or_year_first(text)
        else:
            value = datetime.strptime(text, fmt)
    except ValueError:
        if fmt is not None:
            expected = fmt.replace("%m", "M").replace("%d", "D").replace("%Y", "YYYY")
            raise _BadRow(f"{col} is not a valid date ({expected}): {text!r}") from None
        if _DAY_OR_MONTH_FIRST.fullmatch(text):
            raise _BadRow(f"{col} {text!r} puts the day or the month first, and which is which cannot be told: "
                          f"write it year first, {_ISO_EXPECTED}") from None
        raise _BadRow(f"{col} is not a valid date (expected {_ISO_EXPECTED}): {text!r}") from None
    if tz is not None:
        value = value.replace(tzinfo=tz)
    problem = sale_time_error(value)
    if problem:
        raise _BadRow(f"{col} {text!r} {problem}")
    return value


# --- the formats' required header columns ----------------------------------------------------------

TA_FENG_COLUMNS = (
    "TRANSACTION_DT", "CUSTOMER_ID", "AGE_GROUP", "PIN_CODE", "PRODUCT_SUBCLASS",
    "PRODUCT_ID", "AMOUNT", "ASSET", "SALES_PRICE",
)  # fmt: skip
CJ_COLUMNS = ("household_id", "store_id", "product_id", "quantity", "sales_value", "transaction_timestamp")
CJ_PRODUCT_COLUMNS = ("product_id", "department", "product_category")
CSV_COLUMNS = ("customer", "item", "quantity", "timestamp")
CSV_OPTIONAL_COLUMNS = ("amount", "product_id", "category", "store")


# --- driver -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """A file's header: its column ``names`` (a format's columns in that format's spelling) and ``delimiter``."""

    names: list[str]
    delimiter: str = ","


def header_hint(found: list[str], missing: list[str]) -> str:
    """Why a header with columns ``found`` lacks ``missing`` ones, for an error message: one column means another
    separator; otherwise the columns missing."""
    if len(found) <= 1:
        return ("only one column was found: the values may be separated by something other than a comma, "
                "semicolon, tab or |")
    return f"missing column(s) {', '.join(missing)} (names match in any capitalisation)"


def _read_header(path: Path, handle, required: tuple[str, ...], fmt: str, optional: tuple[str, ...] = ()) -> Header:
    """Line 1 of ``handle``: its separator (:func:`~dangol_cloud.import_text.sniff_delimiter`) and its names, the
    ``required`` and ``optional`` ones in their spelling here.

    Raises:
        ImportFormatError: empty file, a required column missing (the message names the columns found and the
            likely cause), or two columns with the same name.
    """
    first = handle.readline()
    if not first.strip():
        raise ImportFormatError(f"{path}: empty file, expected a {fmt} header with {', '.join(required)}")
    line = first.rstrip("\r\n")
    delimiter = sniff_delimiter(line, [required])
    try:
        found = [h.strip() for h in split_line(line, delimiter)]
    except csv.Error as exc:
        raise ImportFormatError(f"{path}: the first line is not a CSV header ({exc})") from None
    header = canonical_header(found, required + optional)
    missing = [c for c in required if c not in header]
    if missing:
        raise ImportFormatError(f"{path}: header does not match format {fmt!r}: {header_hint(found, missing)}; "
                                f"found {', '.join(found)}")
    folded = [h.casefold() for h in header]
    if len(set(folded)) != len(folded):
        raise ImportFormatError(f"{path}: header has duplicate column names: {', '.join(found)}")
    return Header(header, delimiter)


def _rows(path: Path, handle, header: Header, parse) -> Iterator[PurchaseRow | RowError]:
    names, delimiter = header.names, header.delimiter
    width = len(names)
    with handle:
        for line, text in enumerate(handle, start=2):
            raw = text.rstrip("\r\n")
            if not raw.strip():
                continue  # blank lines (e.g. a trailing newline) carry no data
            if "\x00" in raw:  # no id or name has one, and PostgreSQL text cannot store it
                yield RowError(line, "contains a NUL character", raw)
                continue
            try:
                values = split_line(raw, delimiter)
            except csv.Error as exc:
                yield RowError(line, f"unreadable CSV: {exc}", raw)
                continue
            if len(values) != width:
                yield RowError(line, f"expected {width} columns, found {len(values)}", raw)
                continue
            rec = _Record(zip(names, values, strict=True))
            rec.decimal_comma = delimiter != ","
            try:
                yield parse(line, rec)
            except _BadRow as exc:
                yield RowError(line, str(exc), raw)


def _open(path: Path):
    """``(text handle, TextInfo)``: ``path`` opened in its checked encoding
    (:func:`dangol_cloud.import_text.open_text`).

    Raises:
        ImportFormatError: missing file, or text that is not UTF-8 and whose encoding cannot be told for sure.
    """
    return open_text(path)


def count_data_lines(path: str | Path) -> int:
    """Number of lines after the header (for a progress bar total); reads the file once in 1 MiB blocks.

    Raises:
        ImportFormatError: if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    return max(count_lines(path) - 1, 0)

