"""Validate a received MQTT message against the topic it arrived on.

Order of the checks in :func:`parse_payload`: the topic; the size cap (:data:`MAX_PAYLOAD_BYTES`,
:data:`MAX_DEVICE_PAYLOAD_BYTES`) and the nesting cap (:data:`MAX_JSON_DEPTH`), both on the raw bytes before any
decoding; the JSON; the ``schema`` string (an unknown name or version is refused); then the fields this version
does not know are dropped (:mod:`dangol_protocol.lenient`: forward compatibility, so an older reader accepts a
newer sender's additive optional fields) and counted (:func:`unknown_field_counts`) and logged (the first time a
name is seen at INFO, then at DEBUG); the rest is validated by the strict models; last, the ids against the topic.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from typing import Any

from pydantic import ValidationError

from dangol_protocol.lenient import strip_unknown
from dangol_protocol.models import Catalogue, Erasures, Event, EVENT_ADAPTER, Menu, Payload, Status
from dangol_protocol.topics import TopicError, TopicKind, parse_topic

__all__ = ["MAX_COUNTED_NAMES", "MAX_DEVICE_PAYLOAD_BYTES", "MAX_JSON_DEPTH", "MAX_LOGGED_NAMES",
           "MAX_PAYLOAD_BYTES", "OTHER_NAMES", "PayloadError", "is_retained_clear", "json_depth_exceeds",
           "parse_payload", "unknown_field_counts"]

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 1 << 20
"""Cloud → edge payloads (catalogue, menus, erasures) above 1 MiB are refused before JSON decoding."""

MAX_DEVICE_PAYLOAD_BYTES = 64 << 10
"""Edge → cloud payloads (events, status) above 64 KiB are refused before JSON decoding: the largest
legitimate one (an arrival with its shown items, or an erasure-done of 100 customers) is a few KiB."""

MAX_JSON_DEPTH = 16
"""Deepest nesting of JSON arrays/objects accepted; the deepest valid payload (a catalogue item's tags)
is 4. Checked before :func:`json.loads`, whose recursive decoder raises RecursionError (not a
JSONDecodeError) on ``[`` × 200,000 and would otherwise stall whoever parses it."""

MAX_LOGGED_NAMES = 10
"""Most distinct dropped field names one log line lists (then "and N more")."""

MAX_COUNTED_NAMES = 256
"""Most distinct ``"<schema> <path>"`` keys :func:`unknown_field_counts` keeps; later new names are counted
together under ``"(other)"``, so a sender inventing names cannot grow the process's memory."""

OTHER_NAMES = "(other)"
"""The :func:`unknown_field_counts` key of the names dropped after :data:`MAX_COUNTED_NAMES` were counted."""

_SPECIAL = re.compile(rb'["\\\\\[\]{}]')
_unknown_counts: Counter[str] = Counter()
_unknown_lock = threading.Lock()


class PayloadError(ValueError):
    """A message is not a valid Dangol payload for its topic. ``str()`` names the topic and the reason.

    Attributes:
        topic: the MQTT topic the message arrived on.
        reason: why it was refused (JSON error, wrong schema, failed field validation, id mismatch).
    """

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"invalid payload on {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


def is_retained_clear(payload: bytes) -> bool:
    """True for a zero-length payload: on a retained topic it deletes the retained message."""
    return len(payload) == 0


def json_depth_exceeds(payload: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if the JSON text ``payload`` nests arrays/objects deeper than ``limit`` levels.

    One linear pass over the structural characters that skips string literals (brackets inside strings
    do not count) and stops at the first level beyond ``limit``, so a hostile ``[`` × 10⁶ costs
    ``limit`` steps and no input costs more than one step per byte (no backtracking). It does not
    validate the JSON (unbalanced brackets are left to the decoder).
    """
    depth = 0
    in_string = False
    skip = -1  # position of a character escaped by a backslash inside a string
    for match in _SPECIAL.finditer(payload):
        pos = match.start()
        if pos == skip:
            continue
        char = payload[pos]
        if in_string:
            if char == 0x5C:  # backslash: the next character is literal
                skip = pos + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif char in (0x5D, 0x7D):
            depth -= 1
    return False


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def unknown_field_counts() -> dict[str, int]:
    """How many times each unknown field was dropped from a received payload since the process started, keyed
    ``"<schema> <path>"`` (``"catalogue/1 items[].allergens"``; at most :data:`MAX_COUNTED_NAMES` keys, then
    ``"(other)"``). A snapshot: a newer sender's fields, or a hostile one's, show up here."""
    with _unknown_lock:
        return dict(_unknown_counts)


def _note_dropped(topic: str, schema: str, dropped: list[str]) -> None:
    """Count the dropped names and log them once per message: INFO if one was never counted before, else DEBUG."""
    per_message = Counter(dropped)
    fresh = False
    with _unknown_lock:
        for name, count in per_message.items():
            key = f"{schema} {name}"
            if key not in _unknown_counts and len(_unknown_counts) >= MAX_COUNTED_NAMES:
                key = OTHER_NAMES
            fresh = fresh or key not in _unknown_counts
            _unknown_counts[key] += count
    names = [f"{name} ({count})" if count > 1 else name
             for name, count in list(per_message.items())[:MAX_LOGGED_NAMES]]
    more = len(per_message) - len(names)
    log.log(logging.INFO if fresh else logging.DEBUG, "%s on %r: dropped %d unknown fields: %s%s", schema, topic,
            len(dropped), ", ".join(names), f" and {more} more" if more > 0 else "")


def parse_payload(topic: str, payload: bytes) -> Payload:
    """Decode and validate ``payload`` (UTF-8 JSON bytes) received on ``topic``.

    Fields this version does not know are dropped, at any depth, and counted (:func:`unknown_field_counts`):
    a newer sender's additive fields are ignored, never an error (:mod:`dangol_protocol.lenient`). The
    ``schema`` field must match the topic (``catalogue/1`` on ``.../catalogue``, ``menu/1`` on
    ``.../menus/{customer}``, ``erasures/1``, ``event/1`` on ``.../events``, ``status/1``), and the ids in
    the payload must match the ids in the topic (``store_id``, ``customer_id``, ``device_id``), so a device
    cannot speak for another one.

    Returns:
        The validated model: :class:`Catalogue`, :class:`Menu`, :class:`Erasures`, an event
        (:class:`ArrivalEvent` | :class:`EnrolmentEvent` | :class:`ErasureDoneEvent`) or :class:`Status`.

    Raises:
        PayloadError: unknown topic, empty, oversized (:data:`MAX_DEVICE_PAYLOAD_BYTES` for events and
            status, :data:`MAX_PAYLOAD_BYTES` otherwise), too deeply nested (:data:`MAX_JSON_DEPTH`),
            non-UTF-8 or non-JSON payload, wrong or missing ``schema`` (an unknown version included), a known
            field that fails validation, or an id that disagrees with the topic.
    """
    try:
        parsed = parse_topic(topic)
    except TopicError as exc:
        raise PayloadError(topic, str(exc)) from None
    if not payload:
        raise PayloadError(topic, "empty payload")
    limit = MAX_DEVICE_PAYLOAD_BYTES if parsed.kind in (TopicKind.EVENTS, TopicKind.STATUS) else MAX_PAYLOAD_BYTES
    if len(payload) > limit:
        raise PayloadError(topic, f"payload of {len(payload)} bytes exceeds {limit}")
    if json_depth_exceeds(payload):
        raise PayloadError(topic, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data: Any = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(topic, f"not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PayloadError(topic, f"expected a JSON object, got {type(data).__name__}")
    expected = f"{parsed.kind.value}/1"
    if data.get("schema") != expected:
        raise PayloadError(topic, f"schema is {data.get('schema')!r}, expected {expected!r}")
    model = {
        TopicKind.CATALOGUE: Catalogue,
        TopicKind.MENU: Menu,
        TopicKind.ERASURES: Erasures,
        TopicKind.STATUS: Status,
    }.get(parsed.kind)
    data, dropped = strip_unknown(Event if model is None else model, data)
    if dropped:
        _note_dropped(topic, expected, dropped)
    try:
        result = EVENT_ADAPTER.validate_python(data) if model is None else model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(topic, _short_errors(exc)) from None
    for field in ("store_id", "device_id", "customer_id"):
        want = getattr(parsed, field)
        if parsed.kind is TopicKind.EVENTS and field == "customer_id":
            continue
        if want is not None and str(getattr(result, field)) != want:
            raise PayloadError(topic, f"{field} {getattr(result, field)} does not match the topic")
    return result
