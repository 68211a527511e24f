"""Idempotency keys of imported purchases, and re-keying the stored ones.

An imported purchase line is keyed by its *content* — store, customer, item, product id, UTC time, quantity,
amount — and its *occurrence* among identical lines of the same file (0, 1, …), never its line number
(:mod:`dangol_cloud.ingest`): ``<format>:<64 hex>``, the hex an HMAC-SHA256 under a sub-key of the data key
(:meth:`dangol_cloud.crypto.Keyring.purchase_hash`). Amount and product id are encrypted columns; an unkeyed
hash of them stored in clear (the SHA-1 keys of revisions 0008–0010) gave them away to anyone with the database
file and a list of plausible amounts and barcodes. Keyed, the key says nothing without the data key.

The key is recomputed whenever the hash key changes — migration 0011 (unkeyed SHA-1 → HMAC) and ``rotate-key``
(HMAC under the old key → under the new one) — with :func:`rekeyed`, which recovers each stored line's occurrence
from its stored key, so a re-import after either finds every line again. The key names the customer too: when a
loyalty customer is linked to a door enrolment (:mod:`dangol_cloud.web.customer_link`), its lines are re-keyed
under the door enrolment's id with :func:`moved_keys`, as a re-import of their files then computes them. And it names
the UTC time: when the zone a line's naive file time was read in changes (``TIMEZONE``, a store's own zone), the
line moves to the same wall-clock time in the new zone and is re-keyed with :func:`changed_keys`
(:mod:`dangol_cloud.sale_zones`), as a re-import of its file in the new zone computes it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

__all__ = ["IMPORT_KEY", "changed_keys", "content_of", "keyed", "moved_keys", "purchase_key", "rekeyed"]

#: An imported line's key (POS API keys ``pos:<store>:<hex>:<n>`` have more colons and never match).
IMPORT_KEY = re.compile(r"^([A-Za-z0-9_.-]+):[0-9a-f]{64}$")

#: A line's content, as hashed: (store id, customer id, item id, product id, UTC time text, quantity, amount).
Content = tuple


def content_of(*, store_id: str | None, customer_id: str, item_id: str, product_id: str | None, ts: datetime,
               quantity: float, amount: float | None) -> Content:
    """The hashed content of a purchase line.

    Raises:
        ValueError: ``ts`` is naive (keys are made from UTC times).
    """
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: keys are made from UTC times")
    return (store_id, customer_id, item_id, product_id, ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f"),
            float(quantity), None if amount is None else float(amount))


def _text(content: Content, occurrence: int) -> str:
    return json.dumps([*content, occurrence], separators=(",", ":"))


def purchase_key(ring, prefix: str, *, store_id: str | None, customer_id: str, item_id: str, product_id: str | None,
                 ts: datetime, quantity: float, amount: float | None, occurrence: int = 0) -> str:
    """Idempotency key of an imported purchase: ``prefix:HMAC-SHA256(content, occurrence)`` hex under ``ring``'s
    purchase-key key (:class:`~dangol_cloud.crypto.Keyring`).

    ``occurrence`` counts earlier identical rows of the same file. Migration 0011 holds a frozen copy of the
    content format: change both together (and re-key in a new migration).

    Raises:
        ValueError: ``ts`` is naive.
    """
    content = content_of(store_id=store_id, customer_id=customer_id, item_id=item_id, product_id=product_id, ts=ts,
                         quantity=quantity, amount=amount)
    return f"{prefix}:{ring.purchase_hash(_text(content, occurrence))}"


def keyed(ring) -> Callable[[str, Content, int], str]:
    """``(prefix, content, occurrence) -> key`` under ``ring`` (for :func:`rekeyed`)."""
    return lambda prefix, content, occurrence: f"{prefix}:{ring.purchase_hash(_text(content, occurrence))}"


def rekeyed(rows: Iterable[tuple[int, str, Content]], pattern: re.Pattern, old_key: Callable[[str, Content, int], str],
            new_key: Callable[[str, Content, int], str]) -> dict[int, str]:
    """New keys of stored purchases whose key matches ``pattern`` (group 1: the format prefix).

    ``rows`` are ``(purchase id, stored key, content)`` in id order. Each line's occurrence is read back from its
    stored key: the ``old_key`` of its content for occurrence 0, 1, … up to the number of stored lines with the same
    content in any store (each earlier occurrence of a line is a stored line with its content: inserted, already
    present, or the copy under another store or as history that the import matched, see
    :func:`dangol_cloud.ingest._match_other_copies`). So a history line stored as occurrence 1 because a store holds
    occurrence 0 keeps occurrence 1, as a re-import computes it. A line whose key matches none (its content changed
    since it was imported: its store deleted, its customer linked to another) gets the lowest occurrence its
    content has free, in id order — as a re-import of its file today would number it.

    Used by migration 0011 (with frozen key functions) and by ``rotate-key``: change it with care.

    Returns:
        ``{purchase id: new key}`` for every matching row (unique: distinct contents or occurrences).
    """
    loose: Counter[tuple] = Counter()  # (prefix, content without the store) -> stored lines
    groups: dict[tuple, list[tuple[int, str]]] = {}  # (prefix, content) -> [(id, stored key)]
    for pid, key, content in rows:
        match = pattern.match(key)
        if match is None:
            continue
        prefix = match.group(1)
        loose[(prefix, content[1:])] += 1
        groups.setdefault((prefix, content), []).append((pid, key))
    result: dict[int, str] = {}
    for (prefix, content), lines in groups.items():
        if len(lines) == 1 and old_key(prefix, content, 0) == lines[0][1]:  # the common case: one try
            result[lines[0][0]] = new_key(prefix, content, 0)
            continue
        occurrence_of = {old_key(prefix, content, n): n for n in range(loose[(prefix, content[1:])])}
        found = {pid: occurrence_of[key] for pid, key in lines if key in occurrence_of}
        taken = set(found.values())
        free = (n for n in range(len(lines) + len(taken)) if n not in taken)
        for pid, _key in lines:
            result[pid] = new_key(prefix, content, found[pid] if pid in found else next(free))
    return result


def moved_keys(rows: Iterable[tuple[int, str, Content]], customer_id: str, key: Callable[[str, Content, int], str],
               taken: Iterable[str]) -> dict[int, str]:
    """New keys of imported purchases moving to customer ``customer_id`` (a linked loyalty customer's lines).

    ``rows`` are ``(purchase id, stored key, content)`` of the moving lines in id order, their content still naming
    their current customer; ``key`` is the current ``(prefix, content, occurrence) -> key`` (:func:`keyed`);
    ``taken`` the keys ``customer_id``'s own purchases hold. Each line keeps its occurrence, read back from its
    stored key by :func:`rekeyed`, and its content names ``customer_id``: the key a re-import of its file computes
    once the file's loyalty number resolves to ``customer_id``. A new key already ``taken`` (two identical lines,
    one under each customer) gets instead the lowest occurrence of its content that is free, so both lines are kept
    and the unique key holds. Lines whose key is not an import key (POS API lines) are left out.

    Returns:
        ``{purchase id: new key}`` for every moving import line (unique, and none of them in ``taken``).
    """
    return changed_keys(rows, lambda content: (content[0], customer_id, *content[2:]), key, taken)


def changed_keys(rows: Iterable[tuple[int, str, Content]], change: Callable[[Content], Content],
                 key: Callable[[str, Content, int], str], taken: Iterable[str]) -> dict[int, str]:
    """New keys of imported purchases whose content changes: ``change(content)`` is a line's new content (another
    customer: :func:`moved_keys`; another UTC time: :mod:`dangol_cloud.sale_zones` re-timing naive sale times).

    ``rows`` are ``(purchase id, stored key, content)`` of the changing lines in id order, with their current
    content; ``key`` is the current ``(prefix, content, occurrence) -> key`` (:func:`keyed`); ``taken`` the keys
    held by other stored lines the new keys might meet. Each line keeps its occurrence, read back from its stored
    key by :func:`rekeyed`. A new key already ``taken``, or given to a line of lower id (two contents changed into
    one), gets instead the lowest occurrence of its new content that is free, so every line is kept and the unique
    key holds. Lines whose key is not an import key (POS API lines) are left out.

    Returns:
        ``{purchase id: new key}`` for every changing import line (unique, and none of them in ``taken``).
    """
    rows = list(rows)
    prefixes = {pid: match.group(1) for pid, stored, _content in rows if (match := IMPORT_KEY.match(stored))}
    contents = {pid: content for pid, _stored, content in rows}
    result = rekeyed(rows, IMPORT_KEY, key, lambda prefix, content, n: key(prefix, change(content), n))
    used = set(taken)
    clashes, given = [], set()
    for pid in sorted(result):
        new = result[pid]
        if new in used or new in given:
            clashes.append(pid)
        given.add(new)
    used.update(given)
    for pid in clashes:  # in id order: the lowest free occurrence, checked against every key kept or given
        n = 0
        while (new := key(prefixes[pid], change(contents[pid]), n)) in used:
            n += 1
        result[pid] = new
        used.add(new)
    return result
