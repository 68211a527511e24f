"""Store names and removal (routes on the ``stores`` blueprint): a store's name is unique, compared without case and
surrounding spaces (:func:`name_key`), on "Add store" and "Rename"; "Remove" takes away a store that has no sales,
devices, door visits or customers, after a confirmation page, audited, with what the cloud published for it.

Every table holding a ``store_id`` (``cloud/models*.py``), and what a removal does with it:

- ``devices``, ``purchases``, ``visits``, ``customer_origins``: any row keeps the store (:func:`removal_blockers`
  says why); it can still be renamed.
- ``store_settings`` (currency, zone), ``pos_requests`` (the POS API's remembered idempotency keys), ``user_stores``
  (staff users' store ticks): deleted with the store.
- On the broker: its retained ``catalogue`` and the retained menus the cloud may have published to it (customers
  with a menu and no other home store) are cleared with the empty retained payload (:func:`clear_store_topics`).
"""

from __future__ import annotations

import logging
import unicodedata

from flask import abort, flash, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import OperationalError

import dangol_protocol as proto
from dangol_cloud.app import get_session, get_settings
from dangol_cloud.erasure import audit
from dangol_cloud.models import (CustomerOrigin, Device, Menu, PosRequest, Purchase, Store, StoreSetting, User,
                                 UserStore, Visit)
from dangol_cloud.sale_locks import busy_message, lock_store
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.forms import ActionForm
from dangol_cloud.web.stores import bp

__all__ = ["clean_name", "clear_store_topics", "duplicate_message", "has_control", "name_key", "name_taken", "removal_blockers"]

log = logging.getLogger(__name__)

#: Longest store name (``stores.name``).
NAME_MAX = 120


def clean_name(raw: str | None) -> str:
    """A typed store name as stored: Unicode NFC (an ``é`` typed as ``e`` + accent is one character), without
    surrounding spaces."""
    return unicodedata.normalize("NFC", raw or "").strip()


def has_control(text: str | None) -> bool:
    """Whether ``text`` holds a control character (Unicode category ``Cc``: NUL, escape, tab, line breaks, DEL):
    refused in a store's name and POS store code (a code with one never matches an import's ``store`` column)."""
    return any(unicodedata.category(c) == "Cc" for c in text or "")


def name_key(name: str) -> str:
    """What two store names are compared by: :func:`clean_name`, case-folded ("Berlin Café" = " berlin CAFÉ ")."""
    return clean_name(name).casefold()


def name_taken(session, name: str, *, other_than: str | None = None) -> Store | None:
    """The store (not ``other_than``) whose name equals ``name`` by :func:`name_key`, else None."""
    key = name_key(name)
    for store in session.scalars(select(Store).where(*([Store.id != other_than] if other_than else []))):
        if name_key(store.name) == key:
            return store
    return None


def duplicate_message(name: str) -> str:
    """Why ``name`` is refused: another store has it."""
    return (f"A store named {name!r} already exists. Give this one a name that tells them apart (e.g. its street "
            "or district): the name is what the upload, analytics and staff store choices show.")


def removal_blockers(session, store_id: str) -> list[str]:
    """Why the store cannot be removed (empty: it can): its devices, sales, door visits, customers."""
    def count(column) -> int:
        return session.scalar(select(func.count()).where(column == store_id)) or 0

    found = [(count(Device.store_id), "device", "devices (remove them first)"),
             (count(Purchase.store_id), "sale", "sales"),
             (count(Visit.store_id), "door visit", "door visits"),
             (count(CustomerOrigin.store_id), "customer", "customers enrolled at its door or assigned to it")]
    return [f"{n:,} {one if n == 1 else many}" for n, one, many in found if n]


@bp.route("/<store_id>/name", methods=["POST"])
@owner_required
def rename_store(store_id: str):
    """POST /stores/<id>/name: rename a store (``name``; 1–120 characters, not another store's name by
    :func:`name_key`; its own in other capitals is fine). Always allowed; audited (``store-renamed``). 404 for an
    unknown store, 400 without a valid CSRF token."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    store = s.get(Store, store_id) or abort(404)
    name = clean_name(request.form.get("name"))
    if not name or len(name) > NAME_MAX or has_control(name):
        flash(f"Store name: 1 to {NAME_MAX} characters, without control characters; {store.name} keeps its name.",
              "error")
    elif (other := name_taken(s, name, other_than=store.id)) is not None:
        flash(f"{duplicate_message(other.name)} {store.name} keeps its name.", "error")
    elif name != store.name:
        old, store.name = store.name, name
        audit(s, current_user.email, "store-renamed", detail=f"store {store.id}: {old!r} -> {name!r}")
        s.commit()
        flash(f"Renamed {old} to {name}.", "success")
    return redirect(url_for("stores.index"))


@bp.route("/<store_id>/delete", methods=["POST"])
@owner_required
def remove_store(store_id: str):
    """POST /stores/<id>/delete: remove a store without devices, sales, door visits or customers
    (:func:`removal_blockers`; else the page says which it has and nothing changes). The first post answers with a
    confirmation page (naming the staff users who lose it); the confirmed one (``confirm=yes``) counts them again and
    deletes its settings, remembered POS requests and staff links with it, audited (``store-removed``), then clears
    its retained catalogue and menus on the broker (:func:`clear_store_topics`; if the broker does not answer, the
    page says so).

    Each post first locks the store row (:func:`dangol_cloud.sale_locks.lock_store`): an upload, door visit or
    enrolment into the store still being written is waited for and counted, never detached from the store by the
    removal. Should SQLite stay busy past its timeout, the page says nothing was removed."""
    from dangol_cloud.web.confirm import confirmation_page

    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    try:  # waits for an upload, visit or enrolment naming the store to commit: it is counted below
        store = lock_store(s, store_id) or abort(404)
    except OperationalError as exc:
        if (busy := busy_message(exc)) is None:
            raise
        s.rollback()
        log.warning("store %s not removed: %s", store_id, exc)
        flash(f"The store was not removed: {busy}.", "error")
        return redirect(url_for("stores.index"))
    blockers = removal_blockers(s, store.id)
    if blockers:
        undo = (" Sales uploaded into it by mistake: undo that upload on the Purchases page (Uploads, \"Undo this "
                "import\"), then remove the store." if any(b.endswith((" sale", " sales")) for b in blockers) else "")
        flash(f"{store.name} cannot be removed: it has {', '.join(blockers)}, which would lose their store. "
              f"Rename it instead if the name is wrong.{undo}", "error")
        return redirect(url_for("stores.index"))
    staff = s.scalars(select(User.email).join(UserStore, UserStore.user_id == User.id)
                      .where(UserStore.store_id == store.id).order_by(User.email)).all()
    losing = (f" Staff users who lose access to it: {', '.join(staff)} (a staff user without a store sees nothing)."
              if staff else "")
    page = confirmation_page(title=f"Remove the store {store.name}?", button="Remove store",
                             cancel_url=url_for("stores.index"),
                             detail=f"{store.name} has no devices, sales, door visits or customers. Its POS token "
                                    "stops working, its currency and time zone settings are deleted, and the catalogue "
                                    f"and menus published to it are cleared on the broker.{losing}")
    if page is not None:
        return page
    menus = s.scalars(select(Menu.customer_id).outerjoin(CustomerOrigin, CustomerOrigin.customer_id == Menu.customer_id)
                      .where(or_(CustomerOrigin.store_id.is_(None), CustomerOrigin.store_id == store.id))).all()
    name = store.name
    removed = {table.__tablename__: s.execute(delete(table).where(table.store_id == store.id)).rowcount
               for table in (StoreSetting, PosRequest, UserStore)}
    s.delete(store)
    audit(s, current_user.email, "store-removed",
          detail=f"store {store_id} {name!r}; deleted with it: " + ", ".join(f"{t} {n}" for t, n in removed.items()))
    s.commit()
    settings = get_settings()
    if not settings.mqtt_url:
        flash(f"Removed {name}.", "success")
        return redirect(url_for("stores.index"))
    from dangol_cloud.mqtt import MqttError

    try:
        clear_store_topics(settings.mqtt_url, store_id, menus, client_id=f"{settings.mqtt_client_id}-publisher")
        flash(f"Removed {name}; its catalogue and menus were cleared on the broker.", "success")
    except MqttError as exc:
        log.warning("retained topics of removed store %s not cleared: %s", store_id, exc)
        flash(f"Removed {name}, but the broker did not answer, so its catalogue and menus stay retained there ({exc}). "
              "No device can read them: the store has none.", "warning")
    return redirect(url_for("stores.index"))


def clear_store_topics(mqtt_url: str, store_id: str, customer_ids: list[str], *, client_id: str,
                       timeout: float = 30.0) -> int:
    """Publish the empty retained payload (QoS 1) on the store's ``catalogue`` topic and on its ``menus/<customer>``
    topic of each of ``customer_ids``, so the broker forgets them; returns how many topics were cleared.

    Raises:
        MqttError: the broker is unreachable, refuses or does not acknowledge.
    """
    from dangol_cloud.mqtt import clear_retained

    topics = [proto.catalogue_topic(store_id), *(proto.menu_topic(store_id, c) for c in customer_ids)]
    clear_retained(mqtt_url, topics, client_id=client_id, timeout=timeout)
    log.info("retained catalogue and %d menu topics of removed store %s cleared", len(topics) - 1, store_id)
    return len(topics)
