"""Build and publish the cloud → edge messages: catalogue snapshots, per-customer menus, erasures."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

import dangol_protocol as proto
from dangol_protocol.parse import MAX_PAYLOAD_BYTES
from dangol_cloud.erasure_messages import RecentClears, erasure_messages, erasure_plan, menu_clear_messages, once
from dangol_cloud.menu_fence import publish_menus
from dangol_cloud.models import CatalogueItem, CatalogueVersion, Customer, Erasure, Menu, MenuDayparts, Store, utcnow
from dangol_cloud.models_ops import CustomerOrigin
from dangol_cloud.mqtt import Message, connect, publish_all

__all__ = ["PublishReport", "catalogue_messages", "ensure_current_version", "erasure_messages", "menu_clear_messages",
           "menu_messages", "photo_url_builder", "prune_catalogue_versions", "publish", "publish_catalogue_version",
           "republish_erasures", "snapshot_items"]

log = logging.getLogger(__name__)

DAYPART_NAMES = frozenset(name for name, _, _ in proto.DAYPARTS)

#: Most characters of photo URLs (inlined photos) in one catalogue snapshot.
PHOTO_BUDGET_BYTES = 600 * 1024
#: Most bytes of item JSON in one catalogue snapshot, photos included: an edge refuses a message over
#: :data:`dangol_protocol.parse.MAX_PAYLOAD_BYTES` (1 MiB); 16 KiB are left for the envelope.
SNAPSHOT_BUDGET_BYTES = MAX_PAYLOAD_BYTES - 16 * 1024
#: Catalogue versions kept (the newest ones): each holds a whole snapshot with photos inlined (up to
#: :data:`SNAPSHOT_BUDGET_BYTES`), and only the newest is ever read or sent (:func:`catalogue_messages`).
KEEP_CATALOGUE_VERSIONS = 5


def _category_key(category: str | None) -> tuple[int, str]:
    """Named categories first (A–Z, case-insensitive), then code-like ones (starting with a digit), then none."""
    text = (category or "").strip()
    return (2 if not text else 1 if text[:1].isdigit() else 0, text.casefold())


def snapshot_items(session: Session, photo_url=None) -> list[dict]:
    """The menu as ``catalogue/1`` item dicts: every non-retired *menu* item (never an unmapped POS product,
    :mod:`dangol_cloud.menu_mapping`), so a customer's pick of any of them can be shown at the door. At most
    ``house_per_category`` per category are marked ``house`` — the best sellers (units sold, counting the products
    mapped to the item), then by name —: the door's house menu. Categories are sorted with named ones first;
    within one, the house items by name, then the others by name.

    Bounded for one MQTT message: at most :data:`dangol_protocol.MAX_CATALOGUE_ITEMS` items and
    :data:`SNAPSHOT_BUDGET_BYTES` of JSON (each item counted with its longest price, as any store may get it).
    Beyond either, the least sold non-house items are left out (logged); house items go first.

    An item with prices at some stores carries them under :data:`dangol_cloud.store_prices.SNAPSHOT_KEY`
    (``{store id: {"price", "currency"}}``), frozen with the version; :func:`catalogue_messages` gives each store its
    own price and leaves the key out.

    Args:
        photo_url: optional callable ``filename -> URL or None`` for item photos; the dashboard inlines them as
            small JPEG ``data:`` URIs (:func:`photo_url_builder` with ``photos_dir``). Photos go to house items
            first, then the best sellers, and stop once their URLs add up to :data:`PHOTO_BUDGET_BYTES`, logged.
    """
    from dangol_cloud.menu_mapping import house_per_category, on_menu, sales_by_menu_item
    from dangol_cloud.store_prices import SNAPSHOT_KEY, prices_by_item

    items = session.scalars(select(CatalogueItem).where(CatalogueItem.retired.is_(False), on_menu())).all()
    limit = house_per_category(session)
    groups: dict[str, list[CatalogueItem]] = {}
    for item in items:
        groups.setdefault((item.category or "").strip(), []).append(item)
    # rank by sales only where a category has more items than the house menu shows (a scan of the purchases)
    sold = sales_by_menu_item(session) if any(len(g) > limit for g in groups.values()) else {}
    house: list[CatalogueItem] = []
    others: list[CatalogueItem] = []
    for category in sorted(groups, key=_category_key):
        ranked = sorted(groups[category], key=lambda i: (-sold.get(i.id, 0.0), i.name.casefold(), i.id))
        house += sorted(ranked[:limit], key=lambda i: (i.name.casefold(), i.id))
        others += ranked[limit:]
    others.sort(key=lambda i: (-sold.get(i.id, 0.0), i.name.casefold(), i.id))
    photos, spent = {}, 0
    for i in chain(house, others) if photo_url else ():
        url = photo_url(i.photo) if i.photo else None
        if url and spent + len(url) > PHOTO_BUDGET_BYTES:
            log.warning("catalogue photos pass %d KB: %s and later photos are left out of the snapshot",
                        PHOTO_BUDGET_BYTES // 1024, i.id)
            break
        photos[i.id], spent = url, spent + len(url or "")
    house_ids = {i.id for i in house}
    own_prices = prices_by_item(session)
    kept: dict[str, dict] = {}
    size = 0
    for i in chain(house, others):  # house items first, then the best sellers
        entry = proto.CatalogueItem(id=i.id, name=i.name, category=i.category, price=i.price,
                                    description=i.description, tags=list(i.tags or []), photo_url=photos.get(i.id),
                                    available=i.available, house=i.id in house_ids)
        own = own_prices.get(i.id)
        longest = max((len(repr(float(p["price"]))) for p in (own or {}).values()), default=0)
        size += len(entry.model_dump_json().encode()) + 1 + max(0, longest - len(repr(i.price)))
        if size > SNAPSHOT_BUDGET_BYTES or len(kept) >= proto.MAX_CATALOGUE_ITEMS:
            log.warning("the catalogue snapshot passes %d KB or %d items: %d items are left out (the least sold "
                        "non-house ones; from %s)", SNAPSHOT_BUDGET_BYTES // 1024, proto.MAX_CATALOGUE_ITEMS,
                        len(house) + len(others) - len(kept), i.id)
            break
        kept[i.id] = entry.model_dump(mode="json") | ({SNAPSHOT_KEY: own} if own else {})
    out: list[dict] = []
    for category in sorted(groups, key=_category_key):
        members = sorted(groups[category], key=lambda i: (i.id not in house_ids, i.name.casefold(), i.id))
        out += [kept[i.id] for i in members if i.id in kept]
    return out


def publish_catalogue_version(session: Session, *, published_by: str | None, photo_url=None) -> CatalogueVersion:
    """Freeze the current catalogue as the next version (1, 2, ...), changed or not, and delete the versions
    older than the newest :data:`KEEP_CATALOGUE_VERSIONS` (:func:`prune_catalogue_versions`); the caller commits.
    A Publish uses :func:`ensure_current_version` (no copy of an unchanged catalogue).

    Returns:
        The new CatalogueVersion (its ``items`` are what the stores will receive).
    """
    return _freeze(session, snapshot_items(session, photo_url), published_by)


def ensure_current_version(session: Session, *, published_by: str | None, photo_url=None) -> CatalogueVersion | None:
    """Make sure the newest catalogue version equals the current catalogue: if the items changed since the
    last Publish (or nothing was ever published), freeze a new version (:func:`publish_catalogue_version`).
    Returns the newest version, or None if the catalogue is empty and was never published. The caller commits."""
    items = snapshot_items(session, photo_url)
    last = _newest(session)
    if (last is None and not items) or (last is not None and last.items == items):
        return last
    return _freeze(session, items, published_by)


def prune_catalogue_versions(session: Session, keep: int = KEEP_CATALOGUE_VERSIONS) -> int:
    """Delete every catalogue version but the newest ``keep`` (at least the newest: the stores get it and the next
    number follows it, so numbers never go backwards; devices keep the newest snapshot they got and take only a
    higher number or the same one re-sent). Returns how many were deleted; the caller commits."""
    kept = list(session.scalars(select(CatalogueVersion.version).order_by(CatalogueVersion.version.desc())
                                .limit(max(1, keep))))
    if not kept:
        return 0
    gone = session.execute(delete(CatalogueVersion).where(CatalogueVersion.version < kept[-1])).rowcount or 0
    if gone:
        log.info("deleted %d old catalogue version(s); kept %d-%d", gone, kept[-1], kept[0])
    return gone


def _newest(session: Session) -> CatalogueVersion | None:
    return session.scalar(select(CatalogueVersion).order_by(CatalogueVersion.version.desc()).limit(1))


def _freeze(session: Session, items: list[dict], published_by: str | None) -> CatalogueVersion:
    """Store ``items`` as the version after the newest one, then prune the old ones."""
    last = session.scalar(select(CatalogueVersion.version).order_by(CatalogueVersion.version.desc()).limit(1)) or 0
    version = CatalogueVersion(version=last + 1, published_by=published_by, items=items, published_at=utcnow())
    session.add(version)
    session.flush()
    prune_catalogue_versions(session)
    return version


def photo_url_builder(photos_dir):
    """``filename -> photo_url`` for :func:`snapshot_items`: with ``photos_dir`` (the cloud's photos folder) a
    small inlined JPEG ``data:`` URI (:func:`dangol_cloud.web.photos.inline_builder`: devices need no access to
    the dashboard, whose photo route requires sign-in); None without a folder (no photos are published)."""
    if photos_dir is None:
        return None
    from dangol_cloud.web.photos import inline_builder

    return inline_builder(photos_dir)


def _stores(session: Session, store_id: str | None) -> list[Store]:
    query = select(Store).order_by(Store.name)
    if store_id is not None:
        query = query.where(Store.id == store_id)
    stores = session.scalars(query).all()
    if store_id is not None and not stores:
        raise LookupError(f"store {store_id} does not exist")
    return list(stores)


def catalogue_messages(session: Session, stores: list[Store], currency: str, *,
                       timezone: str | None = None) -> Iterator[Message]:
    """Retained ``catalogue/1`` of the newest published version for each store (none if never published), each
    with the prices of that store in its currency (:func:`dangol_cloud.store_prices.for_store`: the store's own price
    set in that currency, else the catalogue price if the store sells in the catalogue's currency, else none).

    Args:
        currency: the ``CURRENCY`` setting, for stores without their own currency (the catalogue prices' currency
            is the stored one: :func:`dangol_cloud.store_prices.catalogue_currency`).
        timezone: the IANA zone the day-parts of the menus were trained in for stores without their own zone
            (the ``TIMEZONE`` setting: training reads those stores' purchase hours in it), sent as ``timezone`` so
            the door reads the day-part's hour on the same clock; None sends none (the box's local time decides).
            A store with its own zone (:mod:`dangol_cloud.store_zones`) always gets that zone.

    Raises:
        pydantic.ValidationError: ``timezone`` is not a known IANA zone.
        ValueError: a store's own zone is unknown (:func:`dangol_cloud.store_zones.store_zones`).
    """
    version = _newest(session)
    if version is None:
        return
    from dangol_cloud.store_prices import catalogue_currency, for_store, store_currencies
    from dangol_cloud.store_zones import store_zones

    own = {sid: code for sid, _name, code in store_currencies(session, currency)}
    menu_currency = catalogue_currency(session, currency)  # stored once (here if not yet: publish, training)
    zones = store_zones(session)
    for store in stores:  # each store's own currency and zone (Stores page) or the CURRENCY / TIMEZONE setting
        code = own.get(store.id, currency)
        payload = proto.Catalogue(store_id=uuid.UUID(store.id), version=version.version, currency=code,
                                  published_at=version.published_at, timezone=zones.get(store.id, timezone),
                                  items=[proto.CatalogueItem.model_validate(for_store(i, store.id, code, menu_currency))
                                         for i in version.items])
        yield proto.catalogue_topic(store.id), proto.dump_payload(payload), True


def menu_messages(session: Session, stores: list[Store], *, customer_ids: list[str] | None = None) -> Iterator[Message]:
    """Retained ``menu/1`` per store for every customer with a consent record and a menu.

    Retained menus reach every store's box (and anyone holding a device login), so they carry the first
    name only (:func:`dangol_protocol.first_name`): the kiosk's "Welcome back, <first name>" needs no more.

    Picks are translated from POS products to the menu items they are sold as
    (:func:`dangol_cloud.menu_mapping.translate_picks`); picks of items that are retired, unavailable or not on
    the menu are left out (the edge shows only available items), and so is every menu item the customer
    disliked, directly or through a product sold as it under the current mapping
    (:func:`dangol_cloud.menu_mapping.ruled_out`): a menu stored before the owner re-mapped a product never
    brings a disliked item back.
    Customers without consent are never published (imported history-only customers have none).
    A customer enrolled at a door (:class:`~dangol_cloud.models_ops.CustomerOrigin`) gets a menu at that store
    only: face templates never leave the enrolling box, so no other door can greet them, and other stores'
    boxes need neither their first name nor their picks; a customer without an origin store goes to every store.

    ``dayparts`` carries the customer's picks per day-part (:class:`~dangol_cloud.models.MenuDayparts`, written
    by training when the purchases have times of day), translated and filtered the same way; the door shows
    the current day-part's picks (:meth:`dangol_protocol.Menu.picks_at`). None when training wrote none.
    ``personal`` is False for a cold-start menu (picks marked by training for a customer the model has no
    interactions of: :func:`dangol_cloud.training_menus.is_personal`), so the door does not call it "your usual".
    """
    from dangol_cloud.feedback import disliked_items
    from dangol_cloud.menu_mapping import menu_scope, ruled_out, translate_picks
    from dangol_cloud.training_menus import is_personal

    scope = menu_scope(session)  # the recommender picks products; the screen shows menu items
    dislikes = disliked_items(session, customer_ids)
    query = (select(Menu).join(Customer, Customer.id == Menu.customer_id)
             .where(Customer.consent_at.is_not(None), Customer.status == "active"))
    if customer_ids is not None:
        query = query.where(Menu.customer_id.in_(customer_ids))

    def menu_picks(raw: list[dict], banned: set[str]) -> list[proto.MenuPick]:
        return [proto.MenuPick(item_id=p["item_id"], score=p["score"], reasons=p.get("reasons", []))
                for p in translate_picks(raw, scope.mapping) if p["item_id"] in scope.usable
                and p["item_id"] not in banned]

    query = (query.outerjoin(MenuDayparts, MenuDayparts.customer_id == Menu.customer_id)
             .outerjoin(CustomerOrigin, CustomerOrigin.customer_id == Menu.customer_id))
    columns = query.add_columns(Customer.display_name, MenuDayparts.dayparts, CustomerOrigin.store_id)
    by_id = {store.id: [store] for store in stores}
    for menu, name, slots, home in session.execute(columns):
        banned = ruled_out(dislikes.get(menu.customer_id, ()), scope.mapping)
        picks = menu_picks(menu.picks, banned)
        dayparts = {part: menu_picks(raw, banned) for part, raw in (slots or {}).items() if part in DAYPART_NAMES}
        for store in stores if home is None else by_id.get(home, []):
            payload = proto.Menu(store_id=uuid.UUID(store.id), customer_id=uuid.UUID(menu.customer_id),
                                 display_name=proto.first_name(name), model_version=menu.model_version,
                                 generated_at=menu.generated_at, items=picks, dayparts=dayparts or None,
                                 personal=is_personal(menu.picks))
            yield proto.menu_topic(store.id, menu.customer_id), proto.dump_payload(payload), True


@dataclass
class PublishReport:
    """Messages of each kind sent to how many stores; ``menus_withheld``/``menus_cleared``: menus of customers
    erased during the publish, left out or cleared after sending (:mod:`dangol_cloud.menu_fence`)."""

    stores: int = 0
    catalogue: int = 0
    menus: int = 0
    erasures: int = 0
    menus_withheld: int = 0
    menus_cleared: int = 0


def publish(session: Session, mqtt_url: str, *, store_id: str | None = None, currency: str = "EUR",
            catalogue: bool = True, menus: bool = True, customer_ids: list[str] | None = None,
            device_id: str | None = None, client_id: str = "dangol-cloud-publisher",
            timeout: float = 30.0, timezone: str | None = None, reclear: list[Erasure] = ()) -> PublishReport:
    """Publish the newest catalogue version, the menus and every erasure not yet confirmed by all its
    devices (to the stores of the unconfirmed devices; with ``device_id``, only the erasures that device has
    not confirmed) now.

    Menus are fenced against erasures recorded meanwhile in any process (:mod:`dangol_cloud.menu_fence`). An erasure
    published for the first time (:func:`dangol_cloud.erasure.unpublished_erasures`, confirmed or not) also clears
    its customer's retained menu at **every** store, whatever ``store_id``
    (:func:`menu_clear_messages`, :func:`dangol_cloud.erasure.menus_to_clear`). Erasures sent get
    ``published_at`` (first time) and ``last_published_at`` (the caller commits). ``timezone`` (the ``TIMEZONE``
    setting) goes into the catalogue: :func:`catalogue_messages`. ``reclear``: published erasures whose menus are
    cleared again at every store (``serve``'s schedule, :class:`~dangol_cloud.erasure_messages.RecentClears`).

    Raises:
        LookupError: ``store_id`` is unknown.
        MqttError: the broker is unreachable or does not acknowledge (nothing is marked published).
    """
    from dangol_cloud.erasure import menus_to_clear, pending_erasures, unpublished_erasures

    stores = _stores(session, store_id)
    report = PublishReport(stores=len(stores))
    plan = erasure_plan(session, stores, pending_erasures(session), device_id)
    fresh = unpublished_erasures(session)
    clears = menus_to_clear(session, fresh)
    everywhere = stores if store_id is None else _stores(session, None)
    client = connect(mqtt_url, f"{client_id}-{uuid.uuid4().hex[:8]}")
    try:
        if catalogue:
            report.catalogue = publish_all(client, catalogue_messages(session, stores, currency, timezone=timezone),
                                           timeout=timeout)
        if menus:
            fenced = publish_menus(client, session, menu_messages(session, stores, customer_ids=customer_ids),
                                   timeout=timeout)
            report.menus, report.menus_withheld, report.menus_cleared = fenced.sent, fenced.withheld, fenced.cleared
        erasures = [e for e, _ in plan]
        report.erasures = publish_all(client, once(chain(
            erasure_messages(session, stores, erasures, device_id=device_id),
            menu_clear_messages(everywhere, clears), menu_clear_messages(everywhere, reclear))), timeout=timeout)
        now = utcnow()
        for erasure in fresh:  # its menus are cleared everywhere: never again
            erasure.published_at = now
        for erasure in erasures:
            erasure.published_at = erasure.published_at or now
            erasure.last_published_at = now
    finally:
        client.disconnect()
        client.loop_stop()
    log.info("published %s", report)
    return report


def republish_erasures(db, settings, *, device_id: str | None = None, recent: RecentClears | None = None) -> int:
    """Send what erasures still need: the menu clears of erasures never published, and unconfirmed erasures
    (``serve``'s schedule and every erase/withdraw path; with ``device_id``, when that device came online,
    only the erasures it has not confirmed, to its store). With ``recent`` (``serve``'s schedule; not with
    ``device_id``), also the menu clears of the next recently published erasures of its round, at every store: a
    broker crash may have undone them (:class:`~dangol_cloud.erasure_messages.RecentClears`).

    Connects only if something is to be sent.

    Returns:
        Number of messages published (0 without a broker or with nothing to send).

    Raises:
        MqttError: the broker is unreachable (the erasures stay pending and are retried).
    """
    from dangol_cloud.erasure import pending_erasures, unpublished_erasures
    from dangol_cloud.models import Device

    if not settings.mqtt_url:
        return 0
    with db.transaction() as session:
        store_id = None
        if device_id is not None:
            device = session.get(Device, device_id)
            if device is None:  # removed meanwhile: nothing to send it (the schedule sends any clears)
                return 0
            store_id = device.store_id
        stores = _stores(session, store_id)
        waiting = erasure_plan(session, stores, pending_erasures(session), device_id)
        recent = recent if device_id is None else None
        again = recent.due(session, len(stores)) if recent is not None else []
        if not waiting and not unpublished_erasures(session) and not again:
            if recent is not None:  # none of this part of the round had a menu to clear
                recent.sent()
            return 0
        report = publish(session, settings.mqtt_url, store_id=store_id, currency=settings.currency,
                         catalogue=False, menus=False, device_id=device_id, reclear=again)
    if recent is not None:
        recent.sent()
    return report.erasures
