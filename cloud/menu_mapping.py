"""POS products vs menu items: which catalogue rows the door screen gets, and how products map to menu items.

Purchase history (imports, CSV uploads) creates *products*: ``catalogue_items`` rows that purchases point at,
kept for learning and analytics, each with a :class:`~dangol_cloud.models.ProductMapping` row. The *menu* is
what the owner publishes: every item without such a row (added in the dashboard) plus every product the owner
mapped to itself ("one menu item per product", chosen explicitly). A product mapped to another item is sold
as that item. An import never puts anything on the menu by itself.

Interface for the recommender (which trains on purchases, i.e. on product ids): its picks are translated
with :func:`menu_item_map` / :func:`translate_picks` before they are published, so a pick of a product becomes
a pick of the menu item it is sold as (the best-scored pick of a menu item wins; picks of unmapped products
are dropped). The recommender itself needs no change: :class:`MenuScope` tells training which products it may
pick (those sold as a menu item the door can show) and :func:`ruled_out` / :func:`expand_dislikes` turn a
customer's dislikes into the menu items and products never to offer them, under the current mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from dangol_cloud.models import CatalogueItem, MenuSetting, ProductMapping, Purchase, new_id, utcnow

__all__ = ["DEFAULT_HOUSE_PER_CATEGORY", "HOUSE_PER_CATEGORY_RANGE", "MenuScope", "expand_dislikes",
           "house_per_category", "map_by_category", "map_by_name", "map_products", "menu_item_map", "menu_scope",
           "on_menu", "register_products", "ruled_out", "sales_by_menu_item", "set_house_per_category", "sold_as",
           "translate_picks"]

#: Items per category on the door screen's house menu unless the owner sets another number (an 800×480
#: screen fits about eight lines per column at a size readable from 2 m).
DEFAULT_HOUSE_PER_CATEGORY = 8
HOUSE_PER_CATEGORY_RANGE = (1, 30)


def on_menu():
    """SQL condition on :class:`CatalogueItem`: the item is a menu item (no product row, or mapped to itself)."""
    return ~exists().where(ProductMapping.product_id == CatalogueItem.id,
                           or_(ProductMapping.menu_item_id.is_(None), ProductMapping.menu_item_id != CatalogueItem.id))


def register_products(session: Session, item_ids: Iterable[str], *, source: str) -> int:
    """Record newly imported items as products that are not on the menu; returns how many rows were added."""
    rows = [{"product_id": i, "menu_item_id": None, "source": source[:16]} for i in item_ids]
    if rows:
        session.execute(ProductMapping.__table__.insert(), rows)
    return len(rows)


def map_products(session: Session, product_ids: Iterable[str], target: str | None, *, by: str | None) -> int:
    """Map products to a menu item.

    A product that was on the menu as itself and is mapped elsewhere (or taken off the menu) takes the products
    sold as it along to the same ``target`` (in the caller's transaction), so no product is left sold as an item
    that is no longer on the menu; :func:`sold_as` tells beforehand which ones those are.

    Args:
        product_ids: ids of products (rows without a product mapping are ignored: they are menu items).
        target: a menu item id; ``"self"`` for "one menu item per product"; None to take them off the menu.
        by: who (user e-mail).
    Returns:
        Number of products changed (the ones given; not counting those moved along).
    Raises:
        LookupError: ``target`` is not a menu item.
    """
    if target not in (None, "self"):
        menu_item = session.scalar(select(CatalogueItem).where(CatalogueItem.id == target, on_menu()))
        if menu_item is None:
            raise LookupError(f"{target} is not a menu item")
    changed = 0
    now = utcnow()
    ids = list(product_ids)
    leaders: list[str] = []  # products that were their own menu item and leave the menu as themselves
    for start in range(0, len(ids), 500):
        for row in session.scalars(select(ProductMapping).where(ProductMapping.product_id.in_(ids[start:start + 500]))):
            new = row.product_id if target == "self" else target
            if row.menu_item_id == row.product_id and new != row.product_id:
                leaders.append(row.product_id)
            row.menu_item_id = new
            row.mapped_by, row.mapped_at = by, now
            changed += 1
    session.flush()
    for start in range(0, len(leaders), 500):  # whatever was sold as them follows them
        session.execute(update(ProductMapping)
                        .where(ProductMapping.menu_item_id.in_(leaders[start:start + 500]),
                               ProductMapping.product_id != ProductMapping.menu_item_id)
                        .values(menu_item_id=target, mapped_by=by, mapped_at=now)
                        .execution_options(synchronize_session="fetch"))
    session.flush()
    return changed


def sold_as(session: Session, menu_item_ids: Iterable[str]) -> dict[str, str]:
    """``{product id: menu item id}`` of the *other* products sold as these menu items (the products that
    :func:`map_products` moves along when one of these, a product on the menu as itself, is re-mapped)."""
    ids = list(menu_item_ids)
    out: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        out.update(session.execute(select(ProductMapping.product_id, ProductMapping.menu_item_id)
                                   .where(ProductMapping.menu_item_id.in_(ids[start:start + 500]),
                                          ProductMapping.product_id != ProductMapping.menu_item_id)).all())
    return out


def map_by_name(session: Session, product_ids: Iterable[str], *, by: str | None) -> int:
    """Map each product whose name equals a menu item's name (case-insensitive) to that item; returns the count."""
    names = {name.casefold(): iid for iid, name in session.execute(
        select(CatalogueItem.id, CatalogueItem.name).where(on_menu(), CatalogueItem.retired.is_(False)))}
    changed = 0
    for product in _products(session, product_ids):
        target = names.get(product.name.casefold())
        if target is not None and target != product.id:
            changed += map_products(session, [product.id], target, by=by)
    return changed


def map_by_category(session: Session, product_ids: Iterable[str], *, by: str | None) -> tuple[int, int]:
    """Map each product to a menu item named after the product's category (made once per category, with that
    category, no price: the owner sets it). Products without a category are left as they are.

    Returns:
        (products mapped, menu items created).
    """
    existing = {(name.casefold(), (cat or "").casefold()): iid for iid, name, cat in session.execute(
        select(CatalogueItem.id, CatalogueItem.name, CatalogueItem.category).where(on_menu()))}
    created = changed = 0
    for product in _products(session, product_ids):
        if not product.category:
            continue
        key = (product.category.casefold(), product.category.casefold())
        target = existing.get(key)
        if target is None:
            ref = f"category-{product.category}"[:64]
            while session.scalar(select(CatalogueItem.id).where(CatalogueItem.ref == ref)):
                ref = f"category-{product.category}"[:55] + f"-{new_id()[:8]}"
            item = CatalogueItem(ref=ref, name=product.category, category=product.category, tags=[],
                                 description="", available=True, retired=False)
            session.add(item)
            session.flush()
            target = existing[key] = item.id
            created += 1
        changed += map_products(session, [product.id], target, by=by)
    return changed, created


def _products(session: Session, product_ids: Iterable[str]) -> list[CatalogueItem]:
    ids = list(product_ids)
    out: list[CatalogueItem] = []
    for start in range(0, len(ids), 500):
        out += session.scalars(select(CatalogueItem).join(ProductMapping, ProductMapping.product_id == CatalogueItem.id)
                               .where(CatalogueItem.id.in_(ids[start:start + 500]))).all()
    return out


def menu_item_map(session: Session, ids: Iterable[str] | None = None) -> dict[str, str | None]:
    """``{product id: menu item id or None}`` for every product (items not in the dict are menu items); with
    ``ids``, only for those of ``ids`` that are products and for the products sold as one of ``ids``."""
    query = select(ProductMapping.product_id, ProductMapping.menu_item_id)
    if ids is None:
        return dict(session.execute(query).all())
    wanted, out = list(dict.fromkeys(ids)), {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        out.update(session.execute(query.where(or_(ProductMapping.product_id.in_(chunk),
                                                   ProductMapping.menu_item_id.in_(chunk)))).all())
    return out


def ruled_out(disliked: Iterable[str], mapping: Mapping[str, str | None]) -> set[str]:
    """The menu items a customer's dislikes rule out under ``mapping`` (:func:`menu_item_map`): each disliked id
    and the menu item it is sold as now (a dislike recorded on a product covers the menu item it is sold as).
    A pick whose id or translated id is in the result is never offered to that customer."""
    out: set[str] = set()
    for item in disliked:
        out.add(item)
        target = mapping.get(item, item)
        if target is not None:
            out.add(target)
    return out


def expand_dislikes(dislikes: Mapping[str, Iterable[str]], mapping: Mapping[str, str | None]
                    ) -> dict[str, set[str]]:
    """``{customer: ids the recommender must never pick}``: the items :func:`ruled_out` by the customer's
    dislikes plus every product sold as one of them under ``mapping`` (the full :func:`menu_item_map`), so a
    dislike of a menu item excludes all its products and a dislike of a product its menu item's other products."""
    by_item: dict[str, list[str]] = {}
    for product, item in mapping.items():
        if item is not None:
            by_item.setdefault(item, []).append(product)
    out: dict[str, set[str]] = {}
    for customer, disliked in dislikes.items():
        items = ruled_out(disliked, mapping)
        out[customer] = items.union(*(by_item.get(i, ()) for i in items))
    return out


@dataclass(frozen=True)
class MenuScope:
    """What the recommender may pick and how a pick reaches the door (read once with :func:`menu_scope`).

    Attributes:
        usable: ids of the menu items the door can show (on the menu, available, not retired).
        mapping: ``{product id: menu item id or None}`` (:func:`menu_item_map`).
        available: ids of every available, not retired catalogue row (products and menu items).
    """

    usable: frozenset[str]
    mapping: Mapping[str, str | None]
    available: frozenset[str]

    def shown_as(self, item_id: str) -> str | None:
        """The usable menu item a pick of ``item_id`` is shown as, or None (not sold as a usable menu item)."""
        target = self.mapping.get(item_id, item_id)
        return target if target in self.usable else None

    def candidates(self) -> set[str]:
        """Ids the recommender may pick: the usable menu items and the available products sold as one. Before the
        owner has put anything usable on the menu: every available item (the dashboard shows those picks; the
        door gets none, as :func:`translate_picks` drops unmapped products)."""
        if not self.usable:
            return set(self.available)
        return set(self.usable) | {p for p in self.available if self.mapping.get(p, p) in self.usable}


def menu_scope(session: Session) -> MenuScope:
    """The current :class:`MenuScope` (three queries: menu items, products, availability)."""
    usable = frozenset(session.scalars(select(CatalogueItem.id).where(
        CatalogueItem.retired.is_(False), CatalogueItem.available.is_(True), on_menu())))
    available = frozenset(session.scalars(select(CatalogueItem.id).where(
        CatalogueItem.retired.is_(False), CatalogueItem.available.is_(True))))
    return MenuScope(usable=usable, mapping=menu_item_map(session), available=available)


def translate_picks(picks: list[dict], mapping: dict[str, str | None]) -> list[dict]:
    """A menu's picks (``[{"item_id", "score", "reasons"}]``, best first) in menu items.

    A product's pick becomes a pick of the menu item it is sold as; an unmapped product's pick is dropped;
    when several picks land on one menu item only the first (best) stays. Order is kept.
    """
    out: list[dict] = []
    seen: set[str] = set()
    for pick in picks:
        item_id = pick["item_id"]
        target = mapping.get(item_id, item_id)
        if target is None or target in seen:
            continue
        seen.add(target)
        out.append(pick if target == item_id else {**pick, "item_id": target})
    return out


def house_per_category(session: Session) -> int:
    """Items per category the door screen's house menu gets (:data:`DEFAULT_HOUSE_PER_CATEGORY` if unset)."""
    value = session.get(MenuSetting, "house_per_category")
    return int(value.value) if value is not None else DEFAULT_HOUSE_PER_CATEGORY


def set_house_per_category(session: Session, count: int) -> None:
    """Set the house menu's items per category.

    Raises:
        ValueError: ``count`` outside :data:`HOUSE_PER_CATEGORY_RANGE`.
    """
    low, high = HOUSE_PER_CATEGORY_RANGE
    if not low <= count <= high:
        raise ValueError(f"items per category must be between {low} and {high}, not {count}")
    row = session.get(MenuSetting, "house_per_category")
    if row is None:
        session.add(MenuSetting(key="house_per_category", value=str(count)))
    else:
        row.value = str(count)
    session.flush()


def sales_by_menu_item(session: Session) -> dict[str, float]:
    """Units sold per menu item, counting the sales of the products mapped to it (for the house ranking)."""
    mapped = func.coalesce(ProductMapping.menu_item_id, Purchase.item_id)
    rows = session.execute(select(mapped, func.sum(Purchase.quantity))
                           .select_from(Purchase)
                           .outerjoin(ProductMapping, and_(ProductMapping.product_id == Purchase.item_id,
                                                           ProductMapping.menu_item_id.is_not(None)))
                           .group_by(mapped))
    return {iid: float(q or 0) for iid, q in rows}
