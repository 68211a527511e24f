"""A purchase file's text, before any row is read: its encoding, its separator and its header names.

**Encoding.** :func:`open_text` reads the whole file once as bytes and decodes it strictly:

* UTF-8, with or without a BOM (what every format's own files and Excel's "CSV UTF-8" are);
* UTF-16 when the file starts with a UTF-16 BOM (Excel's "Unicode Text"): the BOM says so for sure;
* otherwise a legacy code page only when charset-normalizer finds a clean reading (chaos at most
  :data:`MAX_CHAOS`) and every reading within :data:`CHAOS_MARGIN` of it gives the same text — e.g. a Korean Excel
  CSV, which only cp949/euc-kr read without mess — and :attr:`TextInfo.note` says which encoding was used;
* anything else (Western code pages that cp1250, cp1252, cp1257 and cp775 read differently, CJK bytes that big5,
  gb18030 and cp949 all read, a legacy file over :data:`LEGACY_MAX_BYTES`) is refused with
  :class:`ImportFormatError` naming the file, the line and byte offset of the first byte that is not UTF-8, and
  saying to save it as "CSV UTF-8". Nothing is ever decoded with replacement characters, and the check is over the
  whole file, so a refused file yields no row at all.

**Separator.** :func:`sniff_delimiter`: among ``, ; tab |``, the first under which the header line has a format's
required columns; else the most frequent (the error then names the columns found).

**Header names** match a format's columns in any capitalisation and with spaces around them
(:func:`canonical_header`).
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHAOS_MARGIN", "DELIMITERS", "LEGACY_MAX_BYTES", "ImportFormatError", "TextInfo", "canonical_header",
           "check_encoding", "count_lines", "open_text", "sniff_delimiter", "split_line"]

#: The separators a purchase file may use, in the order they are tried.
DELIMITERS = (",", ";", "\t", "|")
#: Readings of a legacy file whose chaos is within this of the best one are as plausible as it; they must agree.
#: (A Korean Excel CSV with a few short names: cp949 0.0, the next reading, iso8859-16 mojibake, 0.019. MovieLens'
#: Latin-1 titles: cp1250, cp1252, cp1257 and cp775 all 0.0, reading è and Á differently — refused.)
CHAOS_MARGIN = 0.01
#: The best reading's chaos must be at most this (charset-normalizer: 0 = clean text, 0.2 its own cut-off).
MAX_CHAOS = 0.01
#: A file that is not UTF-8 is only examined up to this size (a café's POS export is far smaller); a larger one
#: is refused.
LEGACY_MAX_BYTES = 16 << 20
_BLOCK = 1 << 20
_SAVE_AS = 'save it as "CSV UTF-8" (Excel: File > Save As > CSV UTF-8 (Comma delimited)) and upload it again'
_NAMES = {"cp949": "Korean (cp949)", "euc_kr": "Korean (euc-kr)", "johab": "Korean (johab)"}


class ImportFormatError(ValueError):
    """The file cannot be imported at all (missing, empty, not readable text, or a header that does not match the
    format)."""


@dataclass(frozen=True)
class TextInfo:
    """How a file's text was read: ``encoding`` (a Python codec name) and ``note``, a sentence for the import's
    report when it was not UTF-8 (None for UTF-8)."""

    encoding: str
    note: str | None = None


def _first_non_utf8(path: Path) -> tuple[int, int, bytes] | None:
    """``(byte offset, line, bad bytes)`` of the first byte sequence of ``path`` that is not UTF-8, or None when the
    whole file is UTF-8 (read in 1 MiB blocks)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = newlines = 0
    with path.open("rb") as fh:
        while True:
            block = fh.read(_BLOCK)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:  # exc.object is the pending bytes + this block
                offset = consumed - pending + exc.start
                line = newlines + block[:max(exc.start - pending, 0)].count(b"\n") + 1
                return offset, line, bytes(exc.object[exc.start:exc.end])
            if not block:
                return None
            consumed += len(block)
            newlines += block.count(b"\n")


def _legacy_encoding(data: bytes) -> tuple[str | None, str]:
    """The one code page charset-normalizer's plausible readings of ``data`` agree on, or None and why not."""
    from charset_normalizer import from_bytes

    matches = sorted(from_bytes(data), key=lambda m: m.chaos)
    if not matches or matches[0].chaos > MAX_CHAOS:
        return None, "no code page reads it as clean text"
    plausible = [m for m in matches if m.chaos <= matches[0].chaos + CHAOS_MARGIN]
    if len({str(m) for m in plausible}) == 1:
        return plausible[0].encoding, ""
    names = sorted({m.encoding for m in plausible})
    return None, f"it could be {', '.join(names)}, which read it differently"


def check_encoding(path: Path) -> TextInfo:
    """How to read ``path`` (see the module docstring).

    Raises:
        ImportFormatError: the file is missing, or is not UTF-8 and its encoding cannot be told for sure; the
            message names the file, the line and byte offset of the first non-UTF-8 byte, and "CSV UTF-8".
    """
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    with path.open("rb") as fh:
        start = fh.read(4)
    if start[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) and not start.startswith(codecs.BOM_UTF32_LE):
        try:
            path.read_bytes().decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ImportFormatError(f"{path}: starts as UTF-16 but byte {exc.start} is not UTF-16 text; "
                                    f"{_SAVE_AS}") from None
        return TextInfo("utf-16", f"{path.name} is UTF-16 text (its byte order mark says so): read as UTF-16.")
    bad = _first_non_utf8(path)
    if bad is None:
        return TextInfo("utf-8-sig")  # drops a BOM (the original Ta-Feng release has one)
    offset, line, raw = bad
    where = f"line {line} (byte {offset}: 0x{raw.hex().upper()})"
    size = path.stat().st_size
    if size > LEGACY_MAX_BYTES:
        raise ImportFormatError(f"{path}: not UTF-8 text at {where}, and too large ({size:,} bytes) to tell its "
                                f"encoding; {_SAVE_AS}")
    data = path.read_bytes()
    encoding, why = _legacy_encoding(data)
    if encoding is not None:
        try:
            data.decode(encoding)
        except UnicodeDecodeError:
            encoding, why = None, f"{encoding} does not read all of it"
    if encoding is None:
        raise ImportFormatError(f"{path}: not UTF-8 text at {where}, and its encoding cannot be told for sure "
                                f"({why}); {_SAVE_AS}")
    label = _NAMES.get(encoding, encoding)
    return TextInfo(encoding, f"{path.name} is not UTF-8: read as {label}. If names look wrong, save it as "
                              '"CSV UTF-8" and upload it again.')


def open_text(path: Path) -> tuple[io.TextIOWrapper, TextInfo]:
    """``path`` opened as text in its checked encoding (:func:`check_encoding`; strict, ``newline=""`` so ``\\r``
    stays for csv), with how it was read.

    Raises:
        ImportFormatError: see :func:`check_encoding`.
    """
    info = check_encoding(path)
    return path.open("r", encoding=info.encoding, errors="strict", newline=""), info


def split_line(text: str, delimiter: str = ",") -> list[str]:
    """One CSV line's fields. Raises ``csv.Error`` for unreadable CSV."""
    return next(csv.reader([text], delimiter=delimiter))


def _names(line: str, delimiter: str) -> list[str]:
    try:
        return [h.strip() for h in split_line(line, delimiter)]
    except csv.Error:
        return []


def sniff_delimiter(line: str, column_sets: list[tuple[str, ...]]) -> str:
    """The separator of header ``line``: the first of :data:`DELIMITERS` under which it holds every column of one
    of ``column_sets`` (names compared case-insensitively), else the most frequent of them in the line (``,`` if
    none occurs)."""
    for delimiter in DELIMITERS:
        found = {n.casefold() for n in _names(line, delimiter)}
        if any({c.casefold() for c in cols} <= found for cols in column_sets):
            return delimiter
    counts = {d: line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def canonical_header(names: list[str], known: tuple[str, ...]) -> list[str]:
    """``names`` stripped, each that matches one of ``known`` case-insensitively replaced by it (so rows are keyed
    by the format's own spelling); other names are kept as written."""
    by_fold = {k.casefold(): k for k in known}
    return [by_fold.get(n.strip().casefold(), n.strip()) for n in names]


def count_lines(path: Path) -> int:
    """Number of lines of ``path`` (a last line without a newline counts): ``\\n`` bytes, or for a file with a UTF-16
    BOM its decoded newlines (other UTF-16 characters may hold a 0x0A byte). Not a check of the text."""
    with path.open("rb") as fh:
        start = fh.read(2)
    if start in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        text = path.read_bytes().decode("utf-16", errors="replace")
        return text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    lines = 0
    last = b"\n"
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (1 if last != b"\n" else 0)
