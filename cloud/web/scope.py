"""What a signed-in user may see: owners everything, staff the customers and devices of their stores.

A customer belongs to a store when they visited it, bought there, or enrolled at one of its devices (the
enrolment event in ``device_events``). Staff users are given stores with ``dangol-cloud create-user
EMAIL --role staff --store STORE_ID`` (table ``user_stores``). A staff upload may name only these customers
(and new ones): the import job passes :func:`store_customer_ids` to :func:`dangol_cloud.ingest.import_rows`.
"""

from __future__ import annotations

from flask_login import current_user
from sqlalchemy import false, or_, select
from sqlalchemy.sql.elements import ColumnElement

from dangol_cloud.models import Customer, Device, DeviceEvent, Purchase, Visit

__all__ = ["clauses", "customer_filter", "customer_visible", "store_customer_ids", "store_customers", "store_filter",
           "store_scope"]


def store_scope() -> frozenset[str] | None:
    """The store ids the current user is limited to, or None for an owner (every store)."""
    return None if current_user.is_owner else frozenset(current_user.store_ids)


def store_filter(column) -> ColumnElement[bool] | None:
    """A WHERE clause limiting ``column`` (a store id column) to the user's stores; None for an owner."""
    stores = store_scope()
    if stores is None:
        return None
    return column.in_(sorted(stores)) if stores else false()


def clauses(*wheres) -> list:
    """The scope clauses that apply (``None``, an owner's, left out), for ``query.where(*clauses(...))``."""
    return [w for w in wheres if w is not None]


def store_customers(session, store_ids) -> ColumnElement[bool]:
    """A WHERE clause on :class:`Customer` keeping the customers of the stores ``store_ids`` (visited, bought
    or enrolled there); the rule every staff scope uses, also outside a request (an import job's thread)."""
    if not store_ids:
        return false()
    ids = sorted(store_ids)
    enrolled = {str(p.get("customer_id")) for p in session.scalars(
        select(DeviceEvent.payload).join(Device, Device.id == DeviceEvent.device_id)
        .where(Device.store_id.in_(ids), DeviceEvent.kind == "enrolment")) if isinstance(p, dict)}
    clauses = [Customer.id.in_(select(Visit.customer_id).where(Visit.store_id.in_(ids))),
               Customer.id.in_(select(Purchase.customer_id).where(Purchase.store_id.in_(ids)))]
    if enrolled:
        clauses.append(Customer.id.in_(sorted(enrolled)))
    return or_(*clauses)


def store_customer_ids(session, store_ids) -> set[str]:
    """The ids of the customers of the stores ``store_ids`` (:func:`store_customers`), as of this session."""
    return set(session.scalars(select(Customer.id).where(store_customers(session, store_ids))))


def customer_filter(session) -> ColumnElement[bool] | None:
    """A WHERE clause on :class:`Customer` keeping the customers of the user's stores; None for an owner."""
    stores = store_scope()
    return None if stores is None else store_customers(session, stores)


def customer_visible(session, customer_id: str) -> bool:
    """True if the current user may see and act on this customer."""
    where = customer_filter(session)
    if where is None:
        return True
    return session.scalar(select(Customer.id).where(Customer.id == customer_id, where)) is not None
