"""Issue 10, item 3 (consent): the edge keeps a customer's consent as the protocol's
:class:`dangol_protocol.Consent` from the staff page through the gallery to the ``enrolment`` event. The
gallery stores it as the model's JSON, still reads the dict rows older galleries hold, and reports a row
that fails validation by customer instead of failing the whole listing."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest

from dangol_edge.events import EventFactory
from dangol_edge.gallery import Gallery
from dangol_protocol import Consent, EnrolmentEvent, dump_payload

RECORDED_AT = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)


def unit(seed: int, n: int = 1, d: int = 128) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def consent(by: str = "Jo", version: str = "2026-01") -> Consent:
    return Consent(recorded_by=by, recorded_at=RECORDED_AT, text_version=version)


def _set_raw_consent(gallery: Gallery, customer_id: str, raw: str | None) -> None:
    """Write the ``consent`` column as an older gallery (or a damaged file) holds it."""
    with gallery.db.conn:
        gallery.db.execute("UPDATE customers SET consent = ? WHERE id = ?", [raw, customer_id])


def test_enrol_and_activate_round_trip_the_protocols_consent(gallery):
    mina = gallery.enroll("Mina Park", unit(1), consent=consent())
    got = gallery.customer(mina.id).consent
    assert isinstance(got, Consent) and got == consent() and mina.consent == consent()
    assert got.recorded_at == RECORDED_AT and got.recorded_at.tzinfo is not None
    # the column holds the model's own JSON (what validation reads back)
    raw = gallery.db.execute("SELECT consent FROM customers WHERE id = ?", [mina.id]).fetchone()[0]
    assert Consent.model_validate_json(raw) == consent()

    pending = gallery.enroll("", unit(2), status="pending", pending_ttl_s=60)
    assert pending.consent is None and pending.consent_error is None
    active = gallery.activate(pending.id, "Hana Kim", consent("Jisoo"))
    assert isinstance(active.consent, Consent) and active.consent.recorded_by == "Jisoo"
    assert {c.id: c.consent for c in gallery.customers("active")} == {mina.id: consent(), pending.id: consent("Jisoo")}


def test_a_dict_is_refused_before_anything_is_written(gallery):
    as_dict = {"recorded_by": "Jo", "recorded_at": RECORDED_AT.isoformat(), "text_version": "1"}
    with pytest.raises(TypeError, match="Consent"):
        gallery.enroll("Mina Park", unit(1), consent=as_dict)
    assert gallery.customers() == []
    pending = gallery.enroll("", unit(2), status="pending", pending_ttl_s=60)
    with pytest.raises(TypeError, match="Consent"):
        gallery.activate(pending.id, "Hana Kim", as_dict)
    assert gallery.customer(pending.id).status == "pending"


def test_legacy_dict_rows_load_as_consent(gallery):
    """Rows written before: the staff page's dict (``recorded_at`` as ISO text) and the CLI's, which also
    carried ``method``; both validate into the model."""
    staff = gallery.enroll("Mina Park", unit(1))
    cli = gallery.enroll("Hana Kim", unit(2))
    _set_raw_consent(gallery, staff.id, json.dumps(
        {"recorded_by": "Jo", "recorded_at": "2026-12-01T09:30:00+00:00", "text_version": "2026-01"}))
    _set_raw_consent(gallery, cli.id, json.dumps(
        {"recorded_by": "cli:pi", "recorded_at": "2026-12-01T09:30:00+00:00", "text_version": "2026-01",
         "method": "staff confirmed at enrolment"}))
    assert gallery.customer(staff.id).consent == consent()
    assert gallery.customer(cli.id).consent == consent("cli:pi")
    assert gallery.consent_errors == {}


@pytest.mark.parametrize("raw, why", [
    ("{not json", "not JSON"),
    (json.dumps({"recorded_by": "Jo", "text_version": "1"}), "recorded_at"),           # no time
    (json.dumps({"recorded_by": "Jo", "recorded_at": "2026-12-01T09:30:00", "text_version": "1"}),
     "recorded_at"),                                                                    # naive time
    (json.dumps({"recorded_by": "Jo", "recorded_at": "2026-12-01T09:30:00+00:00", "text_version": "1",
                 "shown_to": "everyone"}), "shown_to"),                                 # unknown field
    (json.dumps(["Jo", "1"]), "Consent"),
])
def test_a_corrupt_row_is_reported_by_customer_and_the_listing_still_works(gallery, caplog, raw, why):
    good = gallery.enroll("Mina Park", unit(1), consent=consent())
    bad = gallery.enroll("Hana Kim", unit(2), consent=consent("Jisoo"))
    _set_raw_consent(gallery, bad.id, raw)
    with caplog.at_level(logging.ERROR, logger="dangol_edge.gallery"):
        listed = {c.id: c for c in gallery.customers()}
        gallery.customers()  # logged once per customer, not on every listing
    assert listed[good.id].consent == consent() and listed[good.id].consent_error is None
    hana = listed[bad.id]
    assert hana.consent is None and hana.display_name == "Hana Kim"
    assert bad.id in hana.consent_error and why in hana.consent_error
    assert gallery.customer(bad.id).consent_error == hana.consent_error
    assert gallery.consent_errors == {bad.id: hana.consent_error}  # counted
    logged = [r for r in caplog.records if bad.id in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    # the event for such a customer is refused, never sent with an invented record
    with pytest.raises(ValueError, match=bad.id):
        EventFactory(uuid.uuid4()).activated(hana.id, hana.display_name, hana.consent)


def test_the_enrolment_event_carries_the_stored_consent_unchanged(gallery):
    device = uuid.uuid4()
    mina = gallery.enroll("Mina Park", unit(1), consent=consent())
    stored = gallery.customer(mina.id)
    event = EventFactory(device).activated(stored.id, stored.display_name, stored.consent)
    assert event.consent == consent() and event.consent is stored.consent
    again = EnrolmentEvent.model_validate(json.loads(dump_payload(event)))
    assert again.consent == consent() and again.status == "active"
    with pytest.raises(TypeError, match="Consent"):
        EventFactory(device).activated(stored.id, stored.display_name, {"recorded_by": "Jo", "text_version": "1"})
