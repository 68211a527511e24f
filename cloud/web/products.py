"""POS products (what purchase history names) and their mapping to menu items, plus bulk actions on the menu.

Routes live on the catalogue blueprint (``/catalogue/products``, ``/catalogue/bulk``, ``/catalogue/house``).
Bulk actions take the ticked rows (``ids``) or, with ``scope=all``, every row matching the page's filter (the menu's
bulk actions also ``scope=page``, every item on the page), so they work the same with 20 or 20,000 products and
without JavaScript. Mapping actions that change many products at once ask first (:data:`HANDFUL`).
"""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import func, or_, select
from sqlalchemy.orm import aliased

from dangol_cloud.app import get_session
from dangol_cloud.menu_mapping import (HOUSE_PER_CATEGORY_RANGE, house_per_category, map_by_category, map_by_name,
                                       map_products, on_menu, set_house_per_category, sold_as)
from dangol_cloud.models import CatalogueItem, ProductMapping, Purchase
from dangol_cloud.web.catalogue import bp, menu_query
from dangol_cloud.web.confirm import confirmation_page
from dangol_cloud.web.forms import ActionForm
from dangol_cloud.web.params import page_arg
from dangol_cloud.web.scope import store_filter

PAGE = 50
SHOWS = ("unmapped", "mapped", "all")
#: "One menu item per category" and "Take off the menu" act at once on at most this many ticked products; on more,
#: or on every product in the list, they show what will happen and ask first ("One menu item per product" always).
HANDFUL = 5
#: Formats whose product ids carry no name in the data set (the UI says so instead of inventing one).
CODE_ONLY_SOURCES = {"ta-feng": "Ta-Feng lists products by PRODUCT_SUBCLASS code only — the data set has no "
                                "product names. Map codes to your own menu items, or name the items you create."}


def _product_query(show: str, q: str):
    menu = aliased(CatalogueItem)
    query = (select(CatalogueItem, ProductMapping, menu.name)
             .join(ProductMapping, ProductMapping.product_id == CatalogueItem.id)
             .outerjoin(menu, menu.id == ProductMapping.menu_item_id))
    if show == "unmapped":
        query = query.where(ProductMapping.menu_item_id.is_(None))
    elif show == "mapped":
        query = query.where(ProductMapping.menu_item_id.is_not(None))
    if q:
        like = f"%{q.lower()}%"
        query = query.where(or_(func.lower(CatalogueItem.name).like(like),
                                func.lower(CatalogueItem.category).like(like),
                                CatalogueItem.ref.like(like)))
    return query


def _filters() -> tuple[str, str]:
    show = request.values.get("show", "unmapped")
    return (show if show in SHOWS else "unmapped"), (request.values.get("q") or "").strip()[:100]


@bp.route("/products")
@login_required
def products():
    """GET /catalogue/products?show=unmapped|mapped|all&q=TEXT&page=N: POS products from imports, 50 a page,
    with units sold, the menu item each is sold as, and the mapping actions."""
    s = get_session()
    show, q = _filters()
    query = _product_query(show, q)
    total = s.scalar(select(func.count()).select_from(query.subquery()))
    page = page_arg()
    rows = s.execute(query.order_by(CatalogueItem.category, CatalogueItem.name).limit(PAGE)
                     .offset((page - 1) * PAGE)).all()
    ids = [item.id for item, _m, _n in rows]
    sold_query = select(Purchase.item_id, func.sum(Purchase.quantity)).where(Purchase.item_id.in_(ids))
    scope = store_filter(Purchase.store_id)  # staff: units sold at their stores only
    if scope is not None:
        sold_query = sold_query.where(scope)
    sold = dict(s.execute(sold_query.group_by(Purchase.item_id)).all()) if ids else {}
    counts = dict(s.execute(select(ProductMapping.menu_item_id.is_(None), func.count())
                            .group_by(ProductMapping.menu_item_id.is_(None))).all())
    sources = set(s.scalars(select(ProductMapping.source).distinct()))
    menu_items = s.execute(select(CatalogueItem.id, CatalogueItem.name, CatalogueItem.category)
                           .where(on_menu(), CatalogueItem.retired.is_(False))
                           .order_by(CatalogueItem.category, CatalogueItem.name)).all()
    return render_template("products.html", rows=rows, sold=sold, show=show, q=q, page=page, total=total,
                           pages=max((total + PAGE - 1) // PAGE, 1), unmapped=counts.get(True, 0),
                           mapped=counts.get(False, 0), notes=[CODE_ONLY_SOURCES[x] for x in sorted(sources)
                                                               if x in CODE_ONLY_SOURCES],
                           menu_items=menu_items, action=ActionForm())


def _selected_products(show: str, q: str) -> list[str]:
    if request.form.get("scope") == "all":
        query = _product_query(show, q).with_only_columns(CatalogueItem.id)
        return list(get_session().scalars(query))
    return [i for i in request.form.getlist("ids") if i][:10_000]


def _keep(show: str, q: str, ids: list[str]) -> list[tuple[str, str]]:
    keep = [("op", request.form.get("op", "")), ("show", show), ("q", q), ("scope", request.form.get("scope", ""))]
    keep += [("target", request.form.get("target", ""))]
    return keep + [("ids", i) for i in request.form.getlist("ids")]


@bp.route("/products/map", methods=["POST"])
@login_required
def map_selected():
    """POST /catalogue/products/map: ``op`` = ``map`` (to ``target``), ``name``, ``category``, ``self`` (one menu
    item per product: asks for a confirmation first) or ``unmap``, on the ticked ``ids`` or ``scope=all``;
    ``category`` and ``unmap`` ask first too on more than :data:`HANDFUL` products or ``scope=all``."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    show, q = _filters()
    back = url_for("catalogue.products", show=show, q=q or None)
    op = request.form.get("op", "")
    ids = _selected_products(show, q)
    if not ids:
        flash("Tick some products first (or choose “every product in this list”).", "warning")
        return redirect(back)
    by = current_user.email
    chosen = set(ids)
    followers = {p: m for p, m in sold_as(s, ids).items() if p not in chosen}  # moved along if their item goes
    if op == "map":
        try:
            n = map_products(s, ids, request.form.get("target") or "", by=by)
        except LookupError:
            flash("Choose the menu item to sell these products as.", "error")
            return redirect(back)
        message = f"{n} product(s) now sold as one menu item."
    elif op == "name":
        n = map_by_name(s, ids, by=by)
        message = f"{n} of {len(ids)} product(s) matched a menu item of the same name."
    elif op == "category":
        if request.form.get("scope") == "all" or len(ids) > HANDFUL:
            page = confirmation_page(title=f"Map {len(ids):,} product(s) to one menu item per category?",
                                     detail=_category_preview(s, ids), button="Map by category", cancel_url=back,
                                     keep=_keep(show, q, ids))
            if page is not None:
                return page
        n, created = map_by_category(s, ids, by=by)
        message = (f"{n} product(s) mapped to the menu item of their category ({created} new menu item(s), named "
                   "after the category, without a price: set it on the menu).")
    elif op == "self":
        page = confirmation_page(title=f"Put {len(ids):,} product(s) on the menu one by one?",
                                 detail="Each selected product becomes its own menu item, under its POS name and "
                                        "category. The door screen shows at most "
                                        f"{house_per_category(s)} items per category (best sellers first).",
                                 button="Add them to the menu", cancel_url=back, keep=_keep(show, q, ids))
        if page is not None:
            return page
        n = map_products(s, ids, "self", by=by)
        message = f"{n} product(s) are now menu items."
    elif op == "unmap":
        if request.form.get("scope") == "all" or len(ids) > HANDFUL:
            along = f" {len(followers):,} other product(s) sold as them leave the menu too." if followers else ""
            page = confirmation_page(title=f"Take {len(ids):,} product(s) off the menu?",
                                     button="Take them off the menu", cancel_url=back, keep=_keep(show, q, ids),
                                     detail="They are no longer sold as menu items: those on the menu as themselves "
                                            "leave it, and the door screen and regulars' picks, at the next Publish."
                                            f"{along} Their sales stay for learning and analytics; map them again "
                                            "at any time.")
            if page is not None:
                return page
        n = map_products(s, ids, None, by=by)
        message = f"{n} product(s) taken off the menu."
    else:
        abort(400)
    moved = _moved(s, followers)
    if moved:
        it = "it" if n == 1 else "them"
        message += (f" {moved} other product(s) sold as {it} left the menu too." if op == "unmap"
                    else f" {moved} other product(s) sold as {it} moved with {it}.")
    s.commit()
    flash(message + " Publish to update the stores.", "success")
    return redirect(back)


def _category_preview(s, ids: list[str]) -> str:
    """What "one menu item per category" will do to these products, in a sentence or two (for its question)."""
    categories: set[str] = set()
    uncategorised = 0
    for start in range(0, len(ids), 500):
        for category in s.scalars(select(CatalogueItem.category).where(CatalogueItem.id.in_(ids[start:start + 500]))):
            if category:
                categories.add(category.casefold())
            else:
                uncategorised += 1
    existing = {name.casefold() for name, category in s.execute(select(CatalogueItem.name, CatalogueItem.category)
                                                                .where(on_menu()))
                if category and name.casefold() == category.casefold()}
    new = len(categories - existing)
    text = (f"Their {len(categories):,} categories become one menu item each, named after the category, and every "
            f"product is sold as its category's item: {new:,} new menu item(s) without a price (set it on the menu)"
            f"{f', {len(categories) - new:,} already on the menu' if new < len(categories) else ''}.")
    return text + (f" {uncategorised:,} product(s) without a category stay as they are." if uncategorised else "")


def _moved(s, before: dict[str, str]) -> int:
    """How many of these ``{product id: menu item id}`` mappings the session now holds differently."""
    ids = list(before)
    now: dict[str, str | None] = {}
    for start in range(0, len(ids), 500):
        now.update(s.execute(select(ProductMapping.product_id, ProductMapping.menu_item_id)
                             .where(ProductMapping.product_id.in_(ids[start:start + 500]))).all())
    return sum(1 for p, m in before.items() if now.get(p) != m)


BULK_OPS = ("retire", "restore", "available", "soldout", "category")
#: The bulk actions that ask first, naming how many items and which: ``op: (question, button, what happens)``
#: (``{n}`` items, ``{category}`` typed). Restore and "Mark available" act at once: they take nothing off a door.
BULK_QUESTIONS = {
    "retire": ("Retire {n} item(s)?", "Retire items",
               "They leave the menu and every regular's picks at the next Publish: "),
    "soldout": ("Mark {n} item(s) sold out?", "Mark sold out",
                "The door screens leave them out of the menus and every regular's picks at the next Publish, until "
                "you mark them available again: "),
    "category": ("Move {n} item(s) to “{category}”?", "Set category",
                 "Their category becomes “{category}” (the one they have now is not kept), on the door screens at "
                 "the next Publish: "),
}


@bp.route("/bulk", methods=["POST"])
@login_required
def bulk():
    """POST /catalogue/bulk: ``op`` in retire, soldout, category (``new_category``) — each after a confirmation
    page naming the items (:data:`BULK_QUESTIONS`) — restore, available on the ticked menu items ``ids``, with
    ``scope=page`` on every item of the page the form was on (``page_ids``), with ``scope=all`` on every item of the
    list (``show``, ``q``: at most 10,000); the items in the list's order (category, name)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    op = request.form.get("op", "")
    if op not in BULK_OPS:
        abort(400)
    show = "retired" if request.form.get("show") == "retired" else "active"
    q = (request.form.get("q") or "").strip()[:100]
    back = url_for("catalogue.index", show=show if show == "retired" else None, q=q or None)
    scope = request.form.get("scope")
    if scope == "all":
        items = s.scalars(menu_query(show, q).limit(10_000)).all()
    else:
        ids = [i for i in request.form.getlist("page_ids" if scope == "page" else "ids") if i][:10_000]
        items = s.scalars(select(CatalogueItem).where(CatalogueItem.id.in_(ids), on_menu())
                          .order_by(CatalogueItem.category, CatalogueItem.name)).all() if ids else []
    if not items:
        flash("Tick some items first (or choose “all on this page”).", "warning")
        return redirect(back)
    category = (request.form.get("new_category") or "").strip()[:80]
    if op == "category" and not category:
        flash("Type the category to set.", "error")
        return redirect(back)
    if op in BULK_QUESTIONS:
        title, button, detail = (text.format(n=len(items), category=category) for text in BULK_QUESTIONS[op])
        names = ", ".join(i.name for i in items[:12]) + ("…" if len(items) > 12 else ".")
        page = confirmation_page(title=title, button=button, cancel_url=back, detail=detail + names,
                                 keep=[("op", op), ("show", show), ("q", q), ("new_category", category)]
                                 + [("ids", i.id) for i in items])
        if page is not None:
            return page
    for item in items:
        if op in ("retire", "restore"):
            item.retired = op == "retire"
        elif op in ("available", "soldout"):
            item.available = op == "available"
        else:
            item.category = category
    s.commit()
    done = {"retire": "retired", "restore": "restored", "available": "marked available",
            "soldout": "marked sold out", "category": f"moved to “{category}”"}[op]
    flash(f"{len(items)} item(s) {done}. Publish to update the stores.", "success")
    return redirect(back)


@bp.route("/house", methods=["POST"])
@login_required
def house():
    """POST /catalogue/house: ``per_category`` = items per category on the door screen's house menu."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    try:
        set_house_per_category(s, int(request.form.get("per_category", "")))
    except ValueError:
        low, high = HOUSE_PER_CATEGORY_RANGE
        flash(f"Items per category: a whole number from {low} to {high}.", "error")
        return redirect(url_for("catalogue.index"))
    s.commit()
    flash("Saved. Publish to update the stores.", "success")
    return redirect(url_for("catalogue.index"))
