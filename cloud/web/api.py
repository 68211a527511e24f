"""POS API: ``POST /api/v1/purchases`` with a per-store bearer token and an ``Idempotency-Key`` header, and
``POST /api/v1/feedback`` (a like/dislike, same token; :func:`record_feedback`).

A retry with the same key and the same body returns the first response (200, ``Idempotent-Replayed:
true``) and stores nothing; the same key with a different body is refused with 422. Documented in
``openapi.json`` (served at ``/api/v1/openapi.json``).

The key (1-200 characters, no control characters) is remembered as sent in ``pos_requests.key`` (String(200)),
which is what finds a retry. Each purchase line's own unique key is ``pos:<store>:<sha256 of the key>:<n>``
(:func:`purchase_key`, 109 characters whatever the key's length). Lines stored before carry
``pos:<store>:<key>:<n>`` and need no migration: a retry is answered from ``pos_requests`` (raw keys, as ever)
before any line is written, so a line's key is never looked up; its uniqueness is only a backstop.

Sale times, id lengths and a line's bounds (:data:`~dangol_cloud.sale_rules.MAX_LINE_AMOUNT`,
:data:`~dangol_cloud.sale_rules.MAX_LINE_QUANTITY`) follow :mod:`dangol_cloud.sale_rules`, shared with the file
importers, and so does a line amount's decimals (no more than the store's currency uses:
:func:`~dangol_cloud.sale_rules.amount_digits_error`). A customer ref is taken without surrounding blanks, as the
importers take it (``"1042 "`` is the customer ``1042``; refs stored with blanks before are not rewritten). A sale
naming an erased customer (their loyalty number, or their old Dangol id) is refused with 422 "Customer erased",
nothing stored (after a retention erasure only a sale dated before it): :mod:`dangol_cloud.erased_refs`.

A new loyalty number is created with ``INSERT … ON CONFLICT (external_ref_hash) DO NOTHING`` and read back, so two
tills sending its first sales at once both store them, on one customer. On SQLite a sale that waited for the write
lock past the busy timeout (an import holding it) is answered 503 with ``Retry-After``, nothing stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import datetime, timezone
from importlib import resources
from typing import Annotated, Literal

from flask import Blueprint, Response, jsonify, request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from dangol_cloud.app import get_db, get_settings
from dangol_cloud.db import dialect_insert
from dangol_cloud.erased_refs import Erased, erased_for
from dangol_cloud.erasure import POS_REQUEST_DAYS
from dangol_cloud.models import CatalogueItem, Customer, PosRequest, Purchase, Store, external_ref_hash
from dangol_cloud.sale_locks import BUSY_RETRY_AFTER, busy_message
from dangol_cloud.sale_rules import MAX_LINE_AMOUNT, MAX_LINE_QUANTITY, REF_MAX, amount_digits_error, sale_time_error
from dangol_cloud.security import hash_token
from dangol_cloud.store_prices import shared_currency

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api/v1")


#: No control characters (U+0000-U+001F, U+007F) in ids: PostgreSQL text cannot hold NUL, and none belongs
#: in an item ref, product id or customer reference.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
#: Longest Idempotency-Key header accepted (``pos_requests.key`` is String(200)).
MAX_KEY_LENGTH = 200


class PurchaseLine(BaseModel):
    """One line of a POS sale: ``item`` is a catalogue item id or ref; amount is the line total."""

    model_config = ConfigDict(extra="forbid")
    item: Annotated[str, Field(min_length=1, max_length=REF_MAX, pattern=NO_CONTROL)]
    product_id: Annotated[str, Field(max_length=REF_MAX, pattern=NO_CONTROL)] | None = None
    quantity: Annotated[float, Field(gt=0, le=MAX_LINE_QUANTITY, allow_inf_nan=False)] = 1
    amount: Annotated[float, Field(ge=0, le=MAX_LINE_AMOUNT, allow_inf_nan=False)] | None = None


class PurchaseIn(BaseModel):
    """A POS sale: ``customer`` is a Dangol customer id or the POS's customer ref (created if new). A customer is
    a regular of the whole chain and may buy in any of its stores: a known id is accepted from every store's
    token, and the sale is recorded for the token's store (which from then on knows the customer). Surrounding
    blanks of ``customer`` are dropped before its checks (blanks only: refused, naming ``customer``)."""

    model_config = ConfigDict(extra="forbid")
    customer: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=REF_MAX,
                                               pattern=NO_CONTROL)]
    ts: AwareDatetime
    lines: Annotated[list[PurchaseLine], Field(min_length=1, max_length=200)]

    @field_validator("customer", mode="before")
    @classmethod
    def _not_blanks_only(cls, value: object) -> object:
        """A ref of blanks only (``"   "``) is refused as such (stripped, it would read as an empty string)."""
        if isinstance(value, str) and value and not value.strip():
            raise PydanticCustomError("blanks_only", "customer: blanks only")
        return value

    @field_validator("ts")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        """Between :data:`~dangol_cloud.sale_rules.MIN_SALE_TS` and now +
        :data:`~dangol_cloud.sale_rules.MAX_SALE_SKEW` (a 9999-12-31 sale is refused), as for imported sales."""
        problem = sale_time_error(value)
        if problem:
            raise ValueError(f"the sale time {problem}")
        return value


def _problem(status: int, title: str, detail: str, **extra) -> Response:
    body = {"title": title, "status": status, "detail": detail, **extra}
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def _store_from_token() -> Store | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    with get_db().sessions() as s:
        return s.scalar(select(Store).where(Store.api_token_hash == hash_token(token.strip())))


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 document of this API."""
    text = resources.files("dangol_cloud").joinpath("openapi.json").read_text(encoding="utf-8")
    return Response(text, mimetype="application/json")


def purchase_key(store_id: str, key: str, n: int) -> str:
    """The unique key of line ``n`` of the sale sent with Idempotency-Key ``key`` at store ``store_id``:
    ``pos:<store>:<sha256 hex of the key>:<n>``, a fixed length that fits ``purchases.idempotency_key``."""
    return f"pos:{store_id}:{hashlib.sha256(key.encode('utf-8')).hexdigest()}:{n}"


def _erased_detail(ref: str, erased: Erased) -> str:
    """Why a sale naming the erased customer ``ref`` was refused (:mod:`dangol_cloud.erased_refs`): when and how they
    were erased, when their loyalty number was allowed again (``erased.allowed_again``), and which of their sales are
    not recorded: all of them (``erased.allowed_from`` None, which an owner may change on the Privacy page), else
    those before ``erased.allowed_from`` (ISO 8601 in UTC, exact: a sale at or after it is accepted)."""
    how = " by the retention rule" if erased.retention else ""
    if erased.allowed_again is not None:
        how += f" and allowed again on {erased.allowed_again.astimezone(timezone.utc):%Y-%m-%d}"
    if erased.allowed_from is None:
        which = ("their sales are not recorded (an owner can allow an erased loyalty number again on the dashboard's "
                 "Privacy page)")
    else:
        cut = erased.allowed_from.astimezone(timezone.utc).isoformat()
        which = f"their sales before {cut} are not recorded (later ones are)"
    at = erased.at.astimezone(timezone.utc)
    return f"customer {ref!r} was erased on {at:%Y-%m-%d}{how}; {which}; nothing was stored"


def _amount_errors(sale: PurchaseIn, currency: str) -> list[dict]:
    """The body errors (``{"loc": "lines.<n>.amount", "msg"}``) of the lines whose amount has more decimals than
    ``currency`` (the store's) uses (:func:`~dangol_cloud.sale_rules.amount_digits_error`); empty if none."""
    return [{"loc": f"lines.{n}.amount", "msg": problem} for n, line in enumerate(sale.lines)
            if line.amount is not None and (problem := amount_digits_error(line.amount, currency))]


def _new_pos_customer(session: Session, ref: str, ref_hash: str) -> Customer | None:
    """The customer of the loyalty number ``ref`` (keyed hash ``ref_hash``), created (source ``pos``, active) unless
    another request created it meanwhile (``ON CONFLICT (external_ref_hash) DO NOTHING`` waits for that request's
    commit, then theirs is read back). None only if theirs is gone again by then (erased at that moment)."""
    session.execute(dialect_insert(session, Customer).values(external_ref=ref, external_ref_hash=ref_hash, status="active",
                                            source="pos")
                    .on_conflict_do_nothing(index_elements=[Customer.external_ref_hash]))
    return session.scalar(select(Customer).where(Customer.external_ref_hash == ref_hash))


def _retry_later(store: Store, title: str, detail: str) -> Response:
    """503 with ``Retry-After`` (:data:`BUSY_RETRY_AFTER`): the database was busy (SQLite's write lock held past the
    busy timeout), or the customer changed under the sale; ``detail`` says which."""
    log.warning("POS API: store %s: a sale refused, %s", store.id, detail)
    response = _problem(503, title, f"{detail}; nothing was stored (send the sale again with the same "
                        "Idempotency-Key)")
    response.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
    return response


def _replay(previous: PosRequest, body_sha: str, key: str) -> Response:
    if previous.body_sha256 != body_sha:
        return _problem(422, "Idempotency key reused", f"Idempotency-Key {key!r} was already used with a "
                        "different request body; nothing was stored")
    response = jsonify(previous.response)
    response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/purchases")
def create_purchases():
    """POST /api/v1/purchases: store one POS sale (see openapi.json for statuses and bodies)."""
    store = _store_from_token()
    if store is None:
        log.warning("POS API: missing or unknown store token from %s", request.remote_addr)
        return _problem(401, "Unauthorized", "missing or unknown store token (Authorization: Bearer <token>)")
    key = (request.headers.get("Idempotency-Key") or "").strip()
    if not 1 <= len(key) <= MAX_KEY_LENGTH or re.search(r"[\x00-\x1f\x7f]", key):
        log.info("POS API: store %s sent an Idempotency-Key of %d characters%s", store.id, len(key),
                 " with a control character" if key and len(key) <= MAX_KEY_LENGTH else "")
        return _problem(400, "Idempotency-Key required", f"send a unique Idempotency-Key header (1-{MAX_KEY_LENGTH} "
                        "characters, no control characters) per sale and repeat it on retries")
    raw = request.get_data(cache=False)
    try:
        sale = PurchaseIn.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        log.info("POS API: invalid body from store %s: %s", store.id, errors)
        return _problem(422, "Invalid purchase", "the body does not match the Purchase schema", errors=errors)
    body_sha = hashlib.sha256(json.dumps(sale.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    db = get_db()
    with db.sessions() as s:
        previous = s.scalar(select(PosRequest).where(PosRequest.store_id == store.id, PosRequest.key == key))
        if previous is not None:
            return _replay(previous, body_sha, key)
        currency = shared_currency(s, [store.id], get_settings().currency)
    if errors := _amount_errors(sale, currency):
        log.info("POS API: invalid amounts from store %s: %s", store.id, errors)
        return _problem(422, "Invalid purchase", f"an amount has more decimals than {currency} (the store's currency) "
                        "uses; nothing was stored", errors=errors)
    try:
        with db.transaction() as s:
            items = {}
            for line in sale.lines:
                item = s.scalar(select(CatalogueItem).where(or_(CatalogueItem.id == line.item,
                                                                CatalogueItem.ref == line.item)))
                if item is None:
                    return _problem(422, "Unknown item", f"lines: item {line.item!r} is not in the catalogue; "
                                    "nothing was stored")
                items[line.item] = item.id
            ref_hash = external_ref_hash(s, sale.customer)
            customer = s.scalar(select(Customer).where(or_(Customer.id == sale.customer,
                                                           Customer.external_ref_hash == ref_hash)))
            erased = erased_for(s, sale.customer, sale.ts, existing_id=customer is not None
                                and customer.id == sale.customer)
            if erased is not None:  # the till still knows an erased customer: they are not brought back
                log.info("POS API: store %s: a sale of an erased customer refused", store.id)
                return _problem(422, "Customer erased", _erased_detail(sale.customer, erased))
            if customer is None:
                customer = _new_pos_customer(s, sale.customer, ref_hash)
                if customer is None:  # nothing was written
                    # no loyalty number in the detail: it is logged (a customer being erased), and the till knows it
                    return _retry_later(store, "Customer changed meanwhile", "the sale's customer was changed by "
                                        "another request while this sale was stored")
            purchases = [Purchase(customer_id=customer.id, item_id=items[line.item], product_id=line.product_id,
                                  quantity=line.quantity, amount=line.amount, ts=sale.ts, store_id=store.id,
                                  source="pos", idempotency_key=purchase_key(store.id, key, n))
                         for n, line in enumerate(sale.lines)]
            s.add_all(purchases)
            s.flush()
            body = {"customer_id": customer.id, "purchase_ids": [p.id for p in purchases], "lines": len(purchases)}
            s.add(PosRequest(store_id=store.id, key=key, body_sha256=body_sha, response=body))
    except IntegrityError:  # a concurrent request with the same key committed first
        with db.sessions() as s:
            previous = s.scalar(select(PosRequest).where(PosRequest.store_id == store.id, PosRequest.key == key))
            if previous is None:
                if s.scalar(select(Purchase.id).where(Purchase.idempotency_key == purchase_key(store.id, key, 0))):
                    # stored longer ago than the idempotency window (its pos_requests row swept): not again
                    log.info("POS API: store %s reused an Idempotency-Key older than the window", store.id)
                    return _problem(422, "Idempotency-Key already used", f"the sale with Idempotency-Key {key!r} "
                                    f"was stored more than {POS_REQUEST_DAYS} days ago; its response is no longer "
                                    "kept and nothing was stored again (send a new key for a new sale)")
                raise
            return _replay(previous, body_sha, key)
    except OperationalError as exc:  # SQLite: an import (another process) held the write lock past the busy timeout
        busy = busy_message(exc)
        if busy is None:
            raise
        return _retry_later(store, "Database busy", busy)
    response = jsonify(body)
    response.status_code = 201
    return response


# --- recommender feedback (issue 12) ---------------------------------------------------------------------


class OpinionIn(BaseModel):
    """A like/dislike from a staff page or the dashboard: ``none`` forgets an earlier one."""

    model_config = ConfigDict(extra="forbid")
    customer: Annotated[str, Field(min_length=1, max_length=36, pattern=NO_CONTROL)]
    item: Annotated[str, Field(min_length=1, max_length=36, pattern=NO_CONTROL)]
    opinion: Literal["like", "dislike", "none"]


@bp.post("/feedback")
def record_feedback():
    """POST /api/v1/feedback (store bearer token): ``{"customer", "item", "opinion"}`` -> 200
    ``{"customer", "item", "opinion"}``; 401 without a valid token, 422 for a bad body or an unknown item,
    404 for a customer not known at the token's store, 503 with ``Retry-After`` when SQLite's write lock stayed
    taken past the busy timeout (nothing recorded), as for a sale. Documented in ``openapi.json``. Used at the next
    training (:mod:`dangol_cloud.feedback`); the same opinion sent twice at once is stored once
    (:func:`~dangol_cloud.feedback.record_opinions`).

    A store speaks only for its own regulars: the customer must be known there
    (:func:`~dangol_cloud.device_trust.known_at_store`: an arrival or a purchase at the store, or enrolled by
    its door device). Any other customer id — another store's, or none at all — gets the same 404, so a token
    cannot probe which ids exist in the chain. (A POS sale at the store makes a chain customer known there.)

    A dislike takes the item (and the products sold as it) off the customer's stored menu at once; with a
    broker the app's republisher (:class:`~dangol_cloud.background.MenuRepublisher`) sends that menu to the
    stores within moments, after the response: a broker that does not answer never holds up the request, and
    the opinion is committed first, so it loses nothing (logged; retried, and sent with the next publish)."""
    from flask import current_app

    from dangol_cloud.app import get_settings
    from dangol_cloud.device_trust import known_at_store
    from dangol_cloud.feedback import record_opinion

    store = _store_from_token()
    if store is None:
        log.warning("feedback API: missing or unknown store token from %s", request.remote_addr)
        return _problem(401, "Unauthorized", "missing or unknown store token (Authorization: Bearer <token>)")
    try:
        body = OpinionIn.model_validate_json(request.get_data(cache=False))
    except ValidationError as exc:
        errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        log.info("feedback API: invalid body from store %s: %s", store.id, errors)
        return _problem(422, "Invalid feedback", "the body does not match the Opinion schema", errors=errors)
    try:
        with get_db().transaction() as s:
            if s.get(Customer, body.customer) is None or not known_at_store(s, body.customer, store.id):
                log.info("feedback API: store %s: customer not known there", store.id)
                return _problem(404, "Unknown customer", f"customer {body.customer!r} is not known at this store "
                                "(no arrival, purchase or enrolment here); nothing was recorded")
            record_opinion(s, body.customer, body.item, body.opinion, by=f"store:{store.id}")
    except LookupError as exc:
        log.info("feedback API: store %s: %s", store.id, exc)
        return _problem(422, "Unknown item", str(exc))
    except OperationalError as exc:  # SQLite: an import (another process) held the write lock past the busy timeout
        busy = busy_message(exc)
        if busy is None:
            raise
        log.warning("feedback API: store %s: an opinion refused, %s", store.id, busy)
        response = _problem(503, "Database busy", f"{busy}; nothing was recorded (send the opinion again)")
        response.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
        return response
    if body.opinion == "dislike" and get_settings().mqtt_url:
        current_app.extensions["dangol_republisher"].submit(body.customer)
    return jsonify({"customer": body.customer, "item": body.item, "opinion": body.opinion})
