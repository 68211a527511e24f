"""Validate a received MQTT message against the topic it arrived on."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from dangol_protocol.models import EVENT_ADAPTER, Catalogue, Erasures, Menu, Payload, Status
from dangol_protocol.topics import TopicError, TopicKind, parse_topic

__all__ = ["PayloadError", "is_retained_clear", "parse_payload"]

MAX_PAYLOAD_BYTES = 1 << 20
"""Payloads above 1 MiB are refused before JSON decoding."""


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


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_payload(topic: str, payload: bytes) -> Payload:
    """Decode and validate ``payload`` (UTF-8 JSON bytes) received on ``topic``.

    The ``schema`` field must match the topic (``catalogue/1`` on ``.../catalogue``, ``menu/1`` on
    ``.../menus/{customer}``, ``erasures/1``, ``event/1`` on ``.../events``, ``status/1``), and the ids in
    the payload must match the ids in the topic (``store_id``, ``customer_id``, ``device_id``), so a device
    cannot speak for another one.

    Returns:
        The validated model: :class:`Catalogue`, :class:`Menu`, :class:`Erasures`, an event
        (:class:`ArrivalEvent` | :class:`EnrolmentEvent` | :class:`ErasureDoneEvent`) or :class:`Status`.

    Raises:
        PayloadError: unknown topic, empty/oversized/non-UTF-8/non-JSON payload, wrong or missing
            ``schema``, a field that fails validation, or an id that disagrees with the topic.
    """
    try:
        parsed = parse_topic(topic)
    except TopicError as exc:
        raise PayloadError(topic, str(exc)) from None
    if not payload:
        raise PayloadError(topic, "empty payload")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(topic, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
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
