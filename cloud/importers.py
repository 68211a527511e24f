"""Purchase-history importers: Ta-Feng, 84.51° Complete Journey 2.0 and a plain CSV format.

Every importer streams its file line by line and yields, per data line, either a validated
:class:`PurchaseRow` or a :class:`RowError` (line number, reason, raw text). A bad row is reported
whole and never half-imported: a row is only yielded as a ``PurchaseRow`` once every field parsed.

The *menu item* (``item_ref``) is the level a café menu would list, not the barcode:

============== ===================================== ====================================
format         ``item_ref``                          ``category``
============== ===================================== ====================================
ta-feng        ``PRODUCT_SUBCLASS`` (6 digits)       first 4 digits of the subclass
completejourney ``product_category`` via products.csv ``department`` via products.csv
csv            ``item`` column                       optional ``category`` column
============== ===================================== ====================================

Formats (header = line 1, so the first data line is line 2):

* ``ta-feng``: ``TRANSACTION_DT`` (M/D/YYYY), ``CUSTOMER_ID`` (8-digit string, leading zeros kept),
  ``AGE_GROUP``, ``PIN_CODE``, ``PRODUCT_SUBCLASS``, ``PRODUCT_ID``, ``AMOUNT`` (quantity),
  ``ASSET`` (cost), ``SALES_PRICE`` (line total).
* ``completejourney``: ``transactions.csv`` with ``household_id, store_id, basket_id, product_id,
  quantity, sales_value, ..., transaction_timestamp`` (``YYYY-MM-DD HH:MM:SS``); ``products.csv``
  (``product_id, ..., department, ..., product_category, ...``) is read from the same folder.
* ``csv``: ``customer,item,quantity,timestamp`` (ISO 8601), optional ``amount``, ``product_id``,
  ``category`` and ``store``; other columns are ignored.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

__all__ = [
    "FORMATS",
    "ImportFormatError",
    "PurchaseRow",
    "RowError",
    "count_data_lines",
    "detect_files",
    "parse_purchases",
    "read_cj_demographics",
]

Format = Literal["ta-feng", "completejourney", "csv"]
FORMATS: tuple[str, ...] = ("ta-feng", "completejourney", "csv")

#: Number of leading digits of a Ta-Feng PRODUCT_SUBCLASS used as its category. Four digits give
#: 196 categories over the 1,919 subclasses (45 over the 200 best sellers), a menu-section size.
TA_FENG_CATEGORY_DIGITS = 4


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
        ts: naive datetime, local time as written in the file (Ta-Feng has day resolution: 00:00).
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


def _timestamp(rec: dict[str, str], col: str, fmt: str | None) -> datetime:
    text = _required(rec, col)
    try:
        if fmt is None:  # ISO 8601; an offset is dropped, keeping the wall-clock time as written
            return datetime.fromisoformat(text).replace(tzinfo=None)
        return datetime.strptime(text, fmt)
    except ValueError:
        expected = "ISO 8601" if fmt is None else fmt.replace("%m", "M").replace("%d", "D").replace("%Y", "YYYY")
        raise _BadRow(f"{col} is not a valid date ({expected}): {text!r}") from None


# --- per-format row parsers ------------------------------------------------------------------------

TA_FENG_COLUMNS = (
    "TRANSACTION_DT", "CUSTOMER_ID", "AGE_GROUP", "PIN_CODE", "PRODUCT_SUBCLASS",
    "PRODUCT_ID", "AMOUNT", "ASSET", "SALES_PRICE",
)  # fmt: skip
CJ_COLUMNS = ("household_id", "store_id", "product_id", "quantity", "sales_value", "transaction_timestamp")
CJ_PRODUCT_COLUMNS = ("product_id", "department", "product_category")
CSV_COLUMNS = ("customer", "item", "quantity", "timestamp")


def _ta_feng_row(line: int, rec: dict[str, str]) -> PurchaseRow:
    ts = _timestamp(rec, "TRANSACTION_DT", "%m/%d/%Y")
    customer = _required(rec, "CUSTOMER_ID")
    subclass = _required(rec, "PRODUCT_SUBCLASS")
    quantity = _number(rec, "AMOUNT")
    amount = _number(rec, "SALES_PRICE", required=False)
    category = subclass[:TA_FENG_CATEGORY_DIGITS] if len(subclass) > TA_FENG_CATEGORY_DIGITS else None
    return PurchaseRow(line, customer, subclass, _optional(rec, "PRODUCT_ID"), quantity, amount, ts, None, category)


def _cj_row_parser(products: dict[str, tuple[str, str]]) -> Callable[[int, dict[str, str]], PurchaseRow]:
    def parse(line: int, rec: dict[str, str]) -> PurchaseRow:
        customer = _required(rec, "household_id")
        store = _required(rec, "store_id")
        product = _required(rec, "product_id")
        quantity = _number(rec, "quantity")
        amount = _number(rec, "sales_value", required=False)
        ts = _timestamp(rec, "transaction_timestamp", "%Y-%m-%d %H:%M:%S")
        if product not in products:
            raise _BadRow(f"product_id {product} is not in products.csv")
        category, department = products[product]
        if not category:
            raise _BadRow(f"product_id {product} has no product_category in products.csv")
        return PurchaseRow(line, customer, category, product, quantity, amount, ts, store, department or None)

    return parse


def _csv_row(line: int, rec: dict[str, str]) -> PurchaseRow:
    customer = _required(rec, "customer")
    item = _required(rec, "item")
    quantity = _number(rec, "quantity")
    ts = _timestamp(rec, "timestamp", None)
    amount = _number(rec, "amount", required=False) if "amount" in rec else None
    return PurchaseRow(
        line, customer, item, _optional(rec, "product_id"), quantity, amount, ts,
        _optional(rec, "store"), _optional(rec, "category"),
    )  # fmt: skip


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


def _load_cj_products(path: Path) -> dict[str, tuple[str, str]]:
    """products.csv → ``{product_id: (product_category, department)}`` (36,554 rows, ~3 MB: read whole)."""
    handle = _open(path)
    with handle:
        header = _read_header(path, handle, CJ_PRODUCT_COLUMNS, "completejourney products.csv")
        reader = csv.DictReader(handle, fieldnames=header)
        return {
            rec["product_id"].strip(): ((rec["product_category"] or "").strip(), (rec["department"] or "").strip())
            for rec in reader
            if rec.get("product_id")
        }


def parse_purchases(path: str | Path, fmt: Format, *, products: str | Path | None = None
                    ) -> Iterator[PurchaseRow | RowError]:
    """Stream a purchase file as validated rows and row errors, in file order.

    Args:
        path: the data file; for ``completejourney`` the ``transactions.csv`` (``products.csv`` must sit
            in the same folder, or be given as ``products``).
        fmt: ``"ta-feng"``, ``"completejourney"`` or ``"csv"`` (see the module docstring).

    Returns:
        An iterator yielding one :class:`PurchaseRow` or :class:`RowError` per non-blank data line.
        The file is read lazily, one line at a time, and closed when the iterator is exhausted.

    Raises:
        ImportFormatError: (a ``ValueError``, message names the file) immediately, if the file (or
            products.csv) is missing or empty, its header lacks a required column, or ``fmt`` is unknown.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ImportFormatError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    required = {"ta-feng": TA_FENG_COLUMNS, "completejourney": CJ_COLUMNS, "csv": CSV_COLUMNS}[fmt]
    handle = _open(path)
    try:
        header = _read_header(path, handle, required, fmt)
        if fmt == "ta-feng":
            parse = _ta_feng_row
        elif fmt == "completejourney":
            parse = _cj_row_parser(_load_cj_products(Path(products) if products else path.parent / "products.csv"))
        else:
            parse = _csv_row
    except BaseException:
        handle.close()
        raise
    return _rows(path, handle, header, parse)


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


# --- several uploaded files: which is which ---------------------------------------------------------------

CJ_DEMOGRAPHICS_COLUMNS = ("household_id", "age")
#: (role, required header columns), most specific first: the first match names a file's role.
_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ta-feng", TA_FENG_COLUMNS),
    ("completejourney", CJ_COLUMNS),
    ("cj-products", CJ_PRODUCT_COLUMNS),
    ("cj-demographics", CJ_DEMOGRAPHICS_COLUMNS),
    ("csv", CSV_COLUMNS),
)


@dataclass(frozen=True)
class DetectedFiles:
    """What a set of uploaded files is: ``fmt`` and the ``purchases`` file to stream, plus the Complete Journey
    ``products`` (required for it) and ``demographics`` (optional) files."""

    fmt: str
    purchases: Path
    products: Path | None = None
    demographics: Path | None = None


def _header_of(path: Path) -> list[str]:
    handle = _open(path)
    with handle:
        first = handle.readline()
    if not first.strip():
        raise ImportFormatError(f"{path.name}: empty file")
    try:
        return [h.strip() for h in _split(first.rstrip("\r\n"))]
    except csv.Error as exc:
        raise ImportFormatError(f"{path.name}: the first line is not a CSV header ({exc})") from None


def detect_files(paths: list[Path], fmt: str | None = None) -> DetectedFiles:
    """Tell which uploaded file is which from its header (format auto-detection).

    Args:
        paths: the uploaded files (any names, any order).
        fmt: a format the user chose (checked against the headers), or None / ``"auto"`` to detect it.
    Returns:
        DetectedFiles.
    Raises:
        ImportFormatError: a file's header matches no known format, two files have the same role, there is no
            purchases file, Complete Journey transactions come without ``products.csv``, or the files do not fit
            the chosen ``fmt``. The message names the file(s).
    """
    roles: dict[str, Path] = {}
    for path in paths:
        header = set(_header_of(path))
        role = next((r for r, cols in _ROLES if set(cols) <= header), None)
        if role is None:
            raise ImportFormatError(
                f"{path.name}: not a known purchase file (header: {', '.join(sorted(header))[:300]}). Expected "
                "Ta-Feng, Complete Journey (transactions.csv, products.csv, demographics.csv) or a Dangol CSV "
                "with customer, item, quantity, timestamp")
        if role in roles:
            raise ImportFormatError(f"{roles[role].name} and {path.name} are both {role} files: upload one")
        roles[role] = path
    main = [r for r in ("ta-feng", "completejourney", "csv") if r in roles]
    if not main:
        if "cj-products" in roles or "cj-demographics" in roles:
            raise ImportFormatError("Complete Journey: add transactions.csv (the purchases) to products.csv")
        raise ImportFormatError("no purchase file uploaded")
    if len(main) > 1:
        raise ImportFormatError(f"{', '.join(roles[r].name for r in main)}: one purchase file at a time")
    detected = main[0]
    if fmt not in (None, "", "auto") and fmt != detected:
        raise ImportFormatError(f"{roles[detected].name}: you chose {fmt!r} but the header is {detected!r}")
    if detected == "completejourney" and "cj-products" not in roles:
        raise ImportFormatError(f"{roles[detected].name}: Complete Journey transactions need products.csv "
                                "(select both files; demographics.csv is optional)")
    extra = [roles[r].name for r in ("cj-products", "cj-demographics") if r in roles and detected != "completejourney"]
    if extra:
        raise ImportFormatError(f"{', '.join(extra)}: only used with Complete Journey transactions")
    return DetectedFiles(detected, roles[detected], roles.get("cj-products"), roles.get("cj-demographics"))


def read_cj_demographics(path: Path) -> dict[str, str]:
    """demographics.csv → ``{household_id: age band}`` (e.g. ``"35-44"``; 801 rows, read whole).

    Raises:
        ImportFormatError: missing file or header without ``household_id`` and ``age``.
    """
    handle = _open(path)
    with handle:
        header = _read_header(path, handle, CJ_DEMOGRAPHICS_COLUMNS, "completejourney demographics.csv")
        return {rec["household_id"].strip(): (rec["age"] or "").strip()[:20]
                for rec in csv.DictReader(handle, fieldnames=header)
                if (rec.get("household_id") or "").strip() and (rec.get("age") or "").strip()}
