"""Several uploaded files at once: which is which, told from their headers (format auto-detection), and
Complete Journey's optional ``demographics.csv``. Used by the dashboard's upload (issue 11).

Each file's text is checked first (:mod:`dangol_cloud.import_text`: a file that is not UTF-8 and whose encoding
cannot be told for sure is refused here, before any job starts); header names match in any capitalisation, and
the separator may be ``, ; tab |``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dangol_cloud.import_rows import (
    CJ_COLUMNS, CJ_PRODUCT_COLUMNS, CSV_COLUMNS, TA_FENG_COLUMNS, ImportFormatError, _open, _read_header, header_hint,
)
from dangol_cloud.import_text import sniff_delimiter, split_line

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
_LABELS = {"ta-feng": "Ta-Feng", "completejourney": "Complete Journey transactions.csv",
           "cj-products": "Complete Journey products.csv", "cj-demographics": "Complete Journey demographics.csv",
           "csv": "Dangol CSV"}


@dataclass(frozen=True)
class DetectedFiles:
    """What a set of uploaded files is: ``fmt`` and the ``purchases`` file to stream, plus the Complete Journey
    ``products`` (required for it) and ``demographics`` (optional) files; ``notes``: a sentence per file that was
    not UTF-8 and was read in the encoding it names (for the import's report)."""

    fmt: str
    purchases: Path
    products: Path | None = None
    demographics: Path | None = None
    notes: tuple[str, ...] = ()


def _header_of(path: Path) -> tuple[list[str], str | None]:
    """The header names of ``path`` (split at the separator under which they fit a format) and its encoding note.

    Raises:
        ImportFormatError: see :func:`~dangol_cloud.import_text.check_encoding`; empty file; unreadable line 1.
    """
    handle, info = _open(path)
    with handle:
        first = handle.readline()
    if not first.strip():
        raise ImportFormatError(f"{path.name}: empty file")
    line = first.rstrip("\r\n")
    try:
        return [h.strip() for h in split_line(line, sniff_delimiter(line, [c for _, c in _ROLES]))], info.note
    except csv.Error as exc:
        raise ImportFormatError(f"{path.name}: the first line is not a CSV header ({exc})") from None


def _fits(header: list[str], cols: tuple[str, ...]) -> bool:
    return {c.casefold() for c in cols} <= {h.casefold() for h in header}


def _unknown(path: Path, header: list[str]) -> ImportFormatError:
    """The error for a header that fits no format: the columns found, and the nearest format's missing ones or
    another separator."""
    found = {h.casefold() for h in header}
    role, cols = max(_ROLES, key=lambda rc: len({c.casefold() for c in rc[1]} & found) / len(rc[1]))
    missing = [c for c in cols if c.casefold() not in found]
    if len(header) <= 1:
        hint = header_hint(header, missing)  # another separator
    elif len(missing) < len(cols):
        hint = f"it looks like a {_LABELS[role]} file but is {header_hint(header, missing)}"
    else:
        hint = "none of the expected column names was found"
    return ImportFormatError(
        f"{path.name}: not a known purchase file (header: {', '.join(header)[:300]}): {hint}. Expected Ta-Feng, "
        "Complete Journey (transactions.csv, products.csv, demographics.csv) or a Dangol CSV with customer, item, "
        "quantity, timestamp (in any capitalisation, separated by commas, semicolons, tabs or |)")


def detect_files(paths: list[Path], fmt: str | None = None) -> DetectedFiles:
    """Tell which uploaded file is which from its header (format auto-detection).

    Args:
        paths: the uploaded files (any names, any order).
        fmt: a format the user chose (checked against the headers), or None / ``"auto"`` to detect it.
    Returns:
        DetectedFiles.
    Raises:
        ImportFormatError: a file is not UTF-8 and its encoding cannot be told for sure (the message names the line
            and byte, and says to save it as "CSV UTF-8"), a file's header matches no known format (the message
            names the columns found and the likely cause: another separator, or the missing columns), two files
            have the same role, there is no purchases file, Complete Journey transactions come without
            ``products.csv``, or the files do not fit the chosen ``fmt``. The message names the file(s).
    """
    roles: dict[str, Path] = {}
    notes: dict[str, str] = {}
    for path in paths:
        header, note = _header_of(path)
        role = next((r for r, cols in _ROLES if _fits(header, cols)), None)
        if role is None:
            raise _unknown(path, header)
        if note:
            notes[role] = note
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
    return DetectedFiles(detected, roles[detected], roles.get("cj-products"), roles.get("cj-demographics"),
                         tuple(notes.values()))


def read_cj_demographics(path: Path) -> dict[str, str]:
    """demographics.csv → ``{household_id: age band}`` (e.g. ``"35-44"``; 801 rows, read whole).

    Raises:
        ImportFormatError: missing file, text whose encoding cannot be told, or header without ``household_id`` and
            ``age``.
    """
    handle, _ = _open(path)
    with handle:
        header = _read_header(path, handle, CJ_DEMOGRAPHICS_COLUMNS, "completejourney demographics.csv")
        return {rec["household_id"].strip(): (rec["age"] or "").strip()[:20]
                for rec in csv.DictReader(handle, fieldnames=header.names, delimiter=header.delimiter)
                if (rec.get("household_id") or "").strip() and (rec.get("age") or "").strip()}
