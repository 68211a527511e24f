"""Reading purchase files, shared by every format of :mod:`dangol_cloud.importers`: the row types
(:class:`PurchaseRow`, :class:`RowError`), field parsers that reject a bad value naming its column, the
headers of each format, and the line-by-line driver that turns each data line into a row or a row error.

Files are read as UTF-8 (a BOM dropped; undecodable bytes replaced) with the header on line 1, so the
first data line is line 2. A line with a NUL character, unreadable CSV or the wrong number of columns
is a :class:`RowError`; nothing of it is imported. So is a sale time or a field outside the bounds every sale
meets (:mod:`dangol_cloud.sale_rules`: times from 1990 to one day ahead, ids and names that fit their columns);
the message names the column and the value or the limit.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dangol_cloud.sale_rules import sale_time_error

__all__ = ["CJ_COLUMNS", "CJ_PRODUCT_COLUMNS", "CSV_COLUMNS", "TA_FENG_COLUMNS", "ImportFormatError", "PurchaseRow",
           "RowError", "count_data_lines"]

class ImportFormatError(ValueError):
    """The file cannot be imported at all (missing, empty, or a header that does not match the format)."""


@dataclass(frozen=True)
class PurchaseRow:
    """One validated line item.

    Attributes:
        line: 1-based line number in the source file (header = line 1).
        customer_ref: external customer id exactly as in the file (Ta-Feng leading zeros kept).
        item_ref: menu item id (Ta-Feng PRODUCT_SUBCLASS, Complete Journey product_category, csv item).
        product_id: the source product id (barcode / product number), kept as a detail; None if absent.
        quantity: units bought (float; may be 0 in Complete Journey, e.g. coupon lines).
        amount: line total in the source currency (Ta-Feng NT$, Complete Journey USD), if given.
        ts: naive datetime, local time as written in the file (Ta-Feng has day resolution: 00:00); aware when
            the file says which instant (a CSV time with a UTC offset, Complete Journey's UTC times): the import
            stores it as that instant and shows it in the café's time zone.
        store_ref: Complete Journey ``store_id`` or the csv ``store`` column; None otherwise.
        category: item category if the source has one (see module docstring), else None.
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


@dataclass(frozen=True)
class RowError:
    """A data line that was rejected: ``line`` (1-based, header = 1), a human ``message``, the ``raw`` text."""

    line: int
    message: str
    raw: str


class _BadRow(Exception):
    """Internal: raised by a row parser, turned into a RowError."""


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


def _number(rec: dict[str, str], col: str, *, required: bool = True) -> float | None:
    text = rec.get(col, "").strip()
    if not text:
        if required:
            raise _BadRow(f"missing {col}")
        return None
    try:
        value = float(text)
    except ValueError:
        raise _BadRow(f"{col} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise _BadRow(f"{col} is not a finite number: {text!r}")
    return value


def _bounded(value: str | None, label: str, limit: int) -> str | None:
    """``value`` if it has at most ``limit`` characters (or is None); else a row error naming ``label``."""
    if value is not None and len(value) > limit:
        raise _BadRow(f"{label} is longer than {limit} characters ({len(value)}): {value[:24]!r}…")
    return value


def _timestamp(rec: dict[str, str], col: str, fmt: str | None, tz: timezone | None = None) -> datetime:
    """The time in column ``col`` (``fmt``: a strptime format; None: ISO 8601), marked as zone ``tz`` if given;
    a row error if it is unreadable or no plausible sale time (:func:`dangol_cloud.sale_rules.sale_time_error`:
    a naive time is checked for any zone here, and again in its store's zone by the import)."""
    text = _required(rec, col)
    try:
        if fmt is None:  # ISO 8601; an offset is kept (that instant), without one it is the café's local time
            value = datetime.fromisoformat(text)
        else:
            value = datetime.strptime(text, fmt)
    except ValueError:
        expected = "ISO 8601" if fmt is None else fmt.replace("%m", "M").replace("%d", "D").replace("%Y", "YYYY")
        raise _BadRow(f"{col} is not a valid date ({expected}): {text!r}") from None
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


# --- driver -----------------------------------------------------------------------------------------



def _split(text: str) -> list[str]:
    return next(csv.reader([text]))


def _read_header(path: Path, handle, required: tuple[str, ...], fmt: str) -> list[str]:
    first = handle.readline()
    if not first.strip():
        raise ImportFormatError(f"{path}: empty file, expected a {fmt} header with {', '.join(required)}")
    header = [h.strip() for h in _split(first.rstrip("\r\n"))]
    missing = [c for c in required if c not in header]
    if missing:
        raise ImportFormatError(
            f"{path}: header does not match format {fmt!r}: missing column(s) {', '.join(missing)} "
            f"(found {', '.join(header)})"
        )
    if len(set(header)) != len(header):
        raise ImportFormatError(f"{path}: header has duplicate column names: {', '.join(header)}")
    return header


def _rows(path: Path, handle, header: list[str], parse) -> Iterator[PurchaseRow | RowError]:
    width = len(header)
    with handle:
        for line, text in enumerate(handle, start=2):
            raw = text.rstrip("\r\n")
            if not raw.strip():
                continue  # blank lines (e.g. a trailing newline) carry no data
            if "\x00" in raw:  # no id or name has one, and PostgreSQL text cannot store it
                yield RowError(line, "contains a NUL character", raw)
                continue
            try:
                values = _split(raw)
            except csv.Error as exc:
                yield RowError(line, f"unreadable CSV: {exc}", raw)
                continue
            if len(values) != width:
                yield RowError(line, f"expected {width} columns, found {len(values)}", raw)
                continue
            try:
                yield parse(line, dict(zip(header, values, strict=True)))
            except _BadRow as exc:
                yield RowError(line, str(exc), raw)


def _open(path: Path):
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    # utf-8-sig drops a BOM (the original Ta-Feng release has one); newline="" keeps \r for csv.
    return path.open("r", encoding="utf-8-sig", errors="replace", newline="")


def count_data_lines(path: str | Path) -> int:
    """Number of lines after the header (for a progress bar total); reads the file once in 1 MiB blocks.

    Raises:
        ImportFormatError: if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    lines = 0
    last = b"\n"
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)
