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
  quantity, sales_value, ..., transaction_timestamp`` (``YYYY-MM-DD HH:MM:SS``, **UTC**: the rows are
  marked so and the importer stores them as such; see :data:`DATASET_TIMEZONES`); ``products.csv``
  (``product_id, ..., department, ..., product_category, ...``) is read from the same folder. Its ``store_id`` is the
  data set's own store number: a row goes under the store with that code if there is one, else under the upload's
  store (counted in the import's report).
* ``csv``: ``customer,item,quantity,timestamp`` (ISO 8601: with a UTC offset that instant, without one the café's local
  time; ``YYYY/MM/DD[ HH:MM[:SS]]`` reads the same; a day- or month-first date is a row error, never guessed),
  optional ``amount``, ``product_id``, ``category`` and ``store`` (a store's code exactly as on the Stores page, or
  its id: the import refuses a row naming no store); other columns are ignored. Names match in any
  capitalisation, the separator may be ``, ; tab |`` (with ``;``, tab or ``|`` a number may have a decimal comma).

Every file is text in UTF-8 (a BOM allowed), UTF-16 with a BOM, or a legacy code page that can be told for sure
(:mod:`dangol_cloud.import_text`); any other is refused whole before its first row.

Every format's rows meet the bounds of :mod:`dangol_cloud.sale_rules` (sale times from 1990 to one day ahead;
ids, names and categories that fit their columns; a line's amount from 0 to 10,000,000 and its quantity more than 0
and at most 10,000, as the POS API takes them — a plain CSV's also 0, its coupon lines, and Complete Journey's also 0
and up to 100,000, its fuel in thousandths of a gallon): a row outside them is a row error naming the column.

The shared reading (row types, field parsers, driver) is :mod:`dangol_cloud.import_rows`; telling
uploaded files apart is :mod:`dangol_cloud.import_detect`. Both are re-exported here.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import timezone
from pathlib import Path
from typing import Literal

from dangol_cloud.import_detect import DetectedFiles, detect_files, read_cj_demographics
from dangol_cloud.import_rows import (
    CJ_COLUMNS, CJ_PRODUCT_COLUMNS, CSV_COLUMNS, CSV_OPTIONAL_COLUMNS, TA_FENG_COLUMNS, ImportFormatError, PurchaseRow,
    RowError, _BadRow, _bounded, _number, _open, _optional, _read_header, _required, _rows, _timestamp,
    count_data_lines,
)
from dangol_cloud.sale_rules import (
    CATEGORY_MAX, COMPLETE_JOURNEY_LINE, CSV_LINE, REF_MAX, amount_error, quantity_error,
)

__all__ = [
    "DATASET_TIMEZONES",
    "FORMATS",
    "DetectedFiles",
    "ImportFormatError",
    "PurchaseRow",
    "RowError",
    "count_data_lines",
    "detect_files",
    "parse_purchases",
    "read_cj_demographics",
]

#: Local time zone of a public data set's shops, to read its times as their customers lived them (day-parts).
#: Complete Journey's ``transaction_timestamp`` is UTC: the year runs from 2017-01-01 13:28 to 2018-01-01 03:47,
#: and its baskets peak at 21-22 h and are fewest at 7-9 h — a US grocery's late afternoon and small hours five
#: hours later. 84.51° (Kroger's analytics arm, Cincinnati) does not say where the stores are; US Eastern time
#: is assumed. Ta-Feng has dates only (its times are midnight, local).
DATASET_TIMEZONES = {"completejourney": "America/New_York"}

Format = Literal["ta-feng", "completejourney", "csv"]
FORMATS: tuple[str, ...] = ("ta-feng", "completejourney", "csv")

#: Number of leading digits of a Ta-Feng PRODUCT_SUBCLASS used as its category. Four digits give
#: 196 categories over the 1,919 subclasses (45 over the 200 best sellers), a menu-section size.
TA_FENG_CATEGORY_DIGITS = 4


# --- per-format row parsers ------------------------------------------------------------------------


def _ta_feng_row(line: int, rec: dict[str, str]) -> PurchaseRow:
    ts = _timestamp(rec, "TRANSACTION_DT", "%m/%d/%Y")
    customer = _bounded(_required(rec, "CUSTOMER_ID"), "CUSTOMER_ID", REF_MAX)
    subclass = _bounded(_required(rec, "PRODUCT_SUBCLASS"), "PRODUCT_SUBCLASS", REF_MAX)
    product = _bounded(_optional(rec, "PRODUCT_ID"), "PRODUCT_ID", REF_MAX)
    quantity = _number(rec, "AMOUNT", check=quantity_error)
    amount = _number(rec, "SALES_PRICE", required=False, check=amount_error)
    category = subclass[:TA_FENG_CATEGORY_DIGITS] if len(subclass) > TA_FENG_CATEGORY_DIGITS else None
    return PurchaseRow(line, customer, subclass, product, quantity, amount, ts, None, category)


def _cj_quantity_error(quantity: float) -> str | None:
    """:func:`~dangol_cloud.sale_rules.quantity_error` under Complete Journey's own bounds (coupon lines of 0, fuel)."""
    return quantity_error(quantity, COMPLETE_JOURNEY_LINE)


def _csv_quantity_error(quantity: float) -> str | None:
    """:func:`~dangol_cloud.sale_rules.quantity_error` under a plain CSV's bounds (coupon and discount lines of 0)."""
    return quantity_error(quantity, CSV_LINE)


def _cj_row_parser(products: dict[str, tuple[str, str]]) -> Callable[[int, dict[str, str]], PurchaseRow]:
    def parse(line: int, rec: dict[str, str]) -> PurchaseRow:
        customer = _bounded(_required(rec, "household_id"), "household_id", REF_MAX)
        store = _bounded(_required(rec, "store_id"), "store_id", REF_MAX)
        product = _bounded(_required(rec, "product_id"), "product_id", REF_MAX)
        quantity = _number(rec, "quantity", check=_cj_quantity_error)
        amount = _number(rec, "sales_value", required=False, check=amount_error)
        ts = _timestamp(rec, "transaction_timestamp", "%Y-%m-%d %H:%M:%S", timezone.utc)
        if product not in products:
            raise _BadRow(f"product_id {product} is not in products.csv")
        category, department = products[product]
        if not category:
            raise _BadRow(f"product_id {product} has no product_category in products.csv")
        _bounded(category, f"product_category of product_id {product} (products.csv)", REF_MAX)
        _bounded(department, f"department of product_id {product} (products.csv)", CATEGORY_MAX)
        return PurchaseRow(line, customer, category, product, quantity, amount, ts, store, department or None,
                           store_is_code=False)  # Complete Journey's own store numbers

    return parse


def _csv_row(line: int, rec: dict[str, str]) -> PurchaseRow:
    customer = _bounded(_required(rec, "customer"), "customer", REF_MAX)
    item = _bounded(_required(rec, "item"), "item", REF_MAX)
    quantity = _number(rec, "quantity", check=_csv_quantity_error)
    ts = _timestamp(rec, "timestamp", None)
    amount = _number(rec, "amount", required=False, check=amount_error) if "amount" in rec else None
    product = _bounded(_optional(rec, "product_id"), "product_id", REF_MAX)
    store = _bounded(_optional(rec, "store"), "store", REF_MAX)
    category = _bounded(_optional(rec, "category"), "category", CATEGORY_MAX)
    return PurchaseRow(line, customer, item, product, quantity, amount, ts, store, category)


def _load_cj_products(path: Path) -> dict[str, tuple[str, str]]:
    """products.csv → ``{product_id: (product_category, department)}`` (36,554 rows, ~3 MB: read whole)."""
    handle, _ = _open(path)
    with handle:
        header = _read_header(path, handle, CJ_PRODUCT_COLUMNS, "completejourney products.csv")
        reader = csv.DictReader(handle, fieldnames=header.names, delimiter=header.delimiter)
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
        ImportFormatError: (a ``ValueError``, message names the file) immediately, before any row: if the file (or
            products.csv) is missing or empty, is not UTF-8 and its encoding cannot be told for sure (the whole file
            is checked first; the message names the line and byte offset and says to save it as "CSV UTF-8"), its
            header lacks a required column (the message names the columns found and the likely cause), or ``fmt``
            is unknown.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ImportFormatError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    required = {"ta-feng": TA_FENG_COLUMNS, "completejourney": CJ_COLUMNS, "csv": CSV_COLUMNS}[fmt]
    handle, _ = _open(path)
    try:
        header = _read_header(path, handle, required, fmt, CSV_OPTIONAL_COLUMNS if fmt == "csv" else ())
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
