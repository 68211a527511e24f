"""Several uploaded files at once: which is which, told from their headers (format auto-detection), and
Complete Journey's optional ``demographics.csv``. Used by the dashboard's upload (issue 11)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dangol_cloud.import_rows import (
    CJ_COLUMNS, CJ_PRODUCT_COLUMNS, CSV_COLUMNS, TA_FENG_COLUMNS, ImportFormatError, _open, _read_header, _split,
)

__all__ = ["CJ_DEMOGRAPHICS_COLUMNS", "DetectedFiles", "detect_files", "read_cj_demographics"]

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
