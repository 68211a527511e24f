"""The gallery's ``customers.consent`` column: the protocol's :class:`dangol_protocol.Consent` as JSON.

New rows hold ``Consent.model_dump_json()``: ``{"recorded_by": str (1-120 chars), "recorded_at": ISO 8601 with
its UTC offset, "text_version": str (1-40 chars)}``. Galleries written before the edge kept the model held
plain dicts of the same keys (``recorded_at`` as ISO text), and the ones the CLI wrote also carried
``"method"``; :func:`load_consent` validates both into the model. Anything else — not JSON, a missing or
naive ``recorded_at``, an unknown key — raises :class:`InvalidConsent` naming the customer.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from dangol_protocol import Consent

#: Keys older galleries stored beside the protocol's fields (the CLI's ``"method"``); dropped on reading.
LEGACY_KEYS = frozenset({"method"})


class InvalidConsent(ValueError):
    """A stored consent record that is not a valid :class:`Consent`; the message names the customer."""


def dump_consent(consent: Consent | None) -> str | None:
    """The column value for ``consent`` (None for a pending customer).

    Raises:
        TypeError: ``consent`` is not a :class:`Consent` (a dict is refused: build the model, which validates).
    """
    if consent is None:
        return None
    if not isinstance(consent, Consent):
        raise TypeError(f"consent must be a dangol_protocol.Consent, not {type(consent).__name__}")
    return consent.model_dump_json()


def load_consent(customer_id: str, raw: str | None) -> Consent | None:
    """The :class:`Consent` stored for ``customer_id`` (None when the column is empty).

    Raises:
        InvalidConsent: ``raw`` is not JSON or does not validate (the message names the customer and why).
    """
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidConsent(f"customer {customer_id}: stored consent record is not JSON ({exc})") from exc
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
    try:
        return Consent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'Consent'}: {e['msg']}" for e in exc.errors())
        raise InvalidConsent(f"customer {customer_id}: stored consent record is invalid ({problems})") from exc
