"""Menu catalogue: list, create, edit, retire/restore items, photos, and Publish to the stores."""

from __future__ import annotations

import logging
from contextlib import contextmanager
import math
import uuid

from flask import Blueprint, abort, flash, redirect, render_template, request, send_from_directory, url_for
from flask_login import current_user, login_required
from pydantic import ValidationError
from sqlalchemy import func, or_, select

import dangol_protocol as proto
from dangol_cloud.app import get_db, get_session, get_settings
from dangol_cloud.menu_mapping import HOUSE_PER_CATEGORY_RANGE, house_per_category, on_menu
from dangol_cloud.models import CatalogueItem, CatalogueVersion, ProductMapping
from dangol_cloud.mqtt import MqttError
from dangol_cloud.publishing import ensure_current_version, photo_url_builder, publish, publish_catalogue_version
from dangol_cloud.store_prices import catalogue_currency, price_at_store, prices_by_item
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.catalogue_form import (code_problem, drop_held, held_photo, hold_photo, menu_currency,
                                              pos_code, price_problem, show_price_in, take_held, unique_code)
from dangol_cloud.web.confirm import confirmation_page
from dangol_cloud.web.forms import PRICE_MESSAGE, ActionForm, ItemForm
from dangol_cloud.web.params import page_arg
from dangol_cloud.web.photos import prepared_upload
from dangol_cloud.web.store_price_form import StorePrices, chain_prices

log = logging.getLogger(__name__)
bp = Blueprint("catalogue", __name__, url_prefix="/catalogue")


@bp.route("/")
@login_required
def index():
    """GET /catalogue/?show=active|retired&q=TEXT&page=N: the items, 60 per page, and the Publish button."""
    s = get_session()
    show = request.args.get("show", "active")
    q = (request.args.get("q") or "").strip()
    query = menu_query(show, q)
    page = page_arg()
    total = s.scalar(select(func.count()).select_from(query.subquery()))
    items = s.scalars(query.limit(60).offset((page - 1) * 60)).all()
    version = s.scalar(select(CatalogueVersion).order_by(CatalogueVersion.version.desc()).limit(1))
    unmapped = s.scalar(select(func.count()).select_from(ProductMapping).where(ProductMapping.menu_item_id.is_(None)))
    currency, differing = menu_currency(s, get_settings().currency)  # read only: a GET never writes
    return render_template("catalogue.html", items=items, version=version, show=show, q=q, page=page, total=total,
                           pages=max((total + 59) // 60, 1), action=ActionForm(), unmapped=unmapped,
                           house=house_per_category(s), house_range=HOUSE_PER_CATEGORY_RANGE, currency=currency,
                           currency_differs=differing, at_stores=store_lines(s, items, currency))


def store_lines(s, items, currency: str) -> dict[str, list[tuple[str, float | None, str]]]:
    """``{item id: [(store name, price or None, store currency)]}``: per item of a chain's list, each store that
    shows another price than the catalogue price — its own, or none (a store selling in another currency without
    its own price: :func:`dangol_cloud.store_prices.price_at_store`); empty for a single café without store prices
    (:func:`~dangol_cloud.web.store_price_form.chain_prices`: one kept from a chain is still listed)."""
    prices = chain_prices(s, get_settings().currency)
    if not prices.stores:
        return {}
    own = prices_by_item(s, [i.id for i in items])
    out: dict[str, list] = {}
    for item in items:
        for sid, name, code in prices.stores:
            price = price_at_store(item.price, own.get(item.id, {}).get(sid), code, currency)
            if sid in own.get(item.id, {}) and price is not None and (code != currency or price != item.price):
                out.setdefault(item.id, []).append((name, price, code))
            elif price is None and item.price is not None:
                out.setdefault(item.id, []).append((name, None, code))
    return out


def menu_query(show: str, q: str):
    """The menu list's items in its order: retired ones for ``show="retired"``, else those on the menu, whose name,
    category or POS code holds ``q`` (case-insensitive); never the POS products (``/catalogue/products``). The list
    page shows it and the bulk actions' "every item in this list" act on it."""
    query = select(CatalogueItem).order_by(CatalogueItem.category, CatalogueItem.name)
    query = query.where(CatalogueItem.retired.is_(show == "retired"), on_menu())  # POS products: /products
    if q:
        like = f"%{q.lower()}%"
        query = query.where(or_(func.lower(CatalogueItem.name).like(like), func.lower(CatalogueItem.category).like(like),
                                CatalogueItem.ref.like(like)))
    return query


def _save_photo(form: ItemForm, slot: str) -> str | None:
    """The photo to store with the item: the one attached now (a photo held for this form is dropped), else the
    one held from a refused submit of the same form (``slot``), else None."""
    file = form.photo.data
    if not file or not getattr(file, "filename", ""):
        return take_held(slot)
    drop_held()
    data = prepared_upload(form.photo)  # made by the form's check (one decode): resized, upright, no EXIF
    name = f"{uuid.uuid4().hex}.jpg"
    folder = get_settings().photos_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return name


def _fill(item: CatalogueItem, form: ItemForm, slot: str) -> tuple[str | None, str | None]:
    """Copy the form's fields into ``item``; returns ``(photo, replaced)``: the file name of a photo written or taken
    from the held ones for this save (else None), and of the photo it replaced (else None)."""
    item.name = form.name.data.strip()
    item.category = (form.category.data or "").strip() or None
    item.price = float(form.price.data) if form.price.data is not None else None
    item.description = (form.description.data or "").strip()
    item.tags = [t.strip() for t in (form.tags.data or "").split(",") if t.strip()]
    item.available = bool(form.available.data)
    photo = _save_photo(form, slot)
    replaced = None
    if photo:
        replaced, item.photo = (item.photo if item.photo != photo else None), photo
    return photo, replaced


def _drop_photo(s, name: str | None) -> None:
    """Remove the photo file ``name`` from the photos folder unless an item shows it."""
    if name and s.scalar(select(func.count()).where(CatalogueItem.photo == name)) == 0:
        (get_settings().photos_dir / name).unlink(missing_ok=True)


@contextmanager
def _saving_photos(s, photos: tuple[str | None, str | None]):
    """Around an item's save and commit (``photos``: :func:`_fill`'s ``(photo, replaced)``): if anything in it fails,
    roll back and remove the photo file written for it (nothing half-written is left), then re-raise; once it has
    committed, remove the replaced photo's file (the doors got it inlined, never linked) unless another item shows
    it."""
    photo, replaced = photos
    try:
        yield
    except BaseException:
        s.rollback()
        if photo != replaced:
            _drop_photo(s, photo)
        raise
    _drop_photo(s, replaced)


def _code_ok(s, form: ItemForm, item: CatalogueItem | None) -> bool:
    """Check a typed POS code (blank: keep the current one, or make one from the name); a refused code becomes
    the field's error (:func:`~dangol_cloud.web.catalogue_form.code_problem`; an imported POS product keeps the code
    of the purchase files, which imports find it by). True when it may be saved."""
    typed = (form.ref.data or "").strip()
    if not typed or (item is not None and form.ref.data == item.ref):
        return True
    if item is not None and s.get(ProductMapping, item.id) is not None:  # the importer finds it by this code
        problem = (f"POS code: {item.ref!r} is this product's code in your purchase files; it cannot be changed "
                   "here (importing a file again would not find the product and would store its sales twice).")
    else:
        problem = code_problem(s, typed, item.id if item is not None else None)
    if problem:
        form.ref.errors = [*form.ref.errors, problem]
    return problem is None


def _price_ok(form: ItemForm) -> bool:
    """Check a submitted price against the catalogue's currency (:func:`~dangol_cloud.web.catalogue_form.price_problem`:
    no fractional won); a refused price becomes the field's error. True when it may be saved (always on a GET)."""
    if not form.is_submitted():
        return True
    currency, _differing = menu_currency(get_session(), get_settings().currency)
    problem = price_problem(form.price, currency)
    if problem:
        form.price.errors = [*form.price.errors, problem]
    return problem is None


def _form_page(form: ItemForm, item: CatalogueItem | None, slot: str, prices: StorePrices, stored: dict):
    """The item form, its price labelled with the catalogue's currency and taking its decimals (``step`` 1 for won,
    0.01 for dollars: :func:`~dangol_cloud.web.catalogue_form.show_price_in`), and in a chain one price per store in
    that store's currency (:mod:`~dangol_cloud.web.store_price_form`; ``stored``: the item's stored store prices); a
    photo attached to a refused submit is kept for the next one (:func:`~dangol_cloud.web.catalogue_form.hold_photo`),
    and a fresh form drops any."""
    if request.method == "POST":
        hold_photo(form, slot)
    else:
        drop_held()
    currency, differing = menu_currency(get_session(), get_settings().currency)
    form.price.label.text = f"{'Catalogue price' if prices.stores else 'Price'} ({currency})"
    step = show_price_in(form.price, currency)
    default = float(form.price.data) if form.price.data is not None and not form.price.errors else None
    unused = bool(prices.stores) and all(code != currency for _sid, _name, code in prices.stores)
    return render_template("item_form.html", form=form, item=item, action=ActionForm(), held=held_photo(slot),
                           currency=currency, currency_differs=differing, price_step=step, default_unused=unused,
                           store_prices=prices.view(form, default, stored))


@bp.route("/new", methods=["GET", "POST"])
@login_required
def new():
    """GET/POST /catalogue/new: create an item. Its POS code is the one typed, else made from the name
    (:func:`~dangol_cloud.web.catalogue_form.pos_code`, made unique with ``-2``, ``-3``…); a typed code that is
    refused (:func:`~dangol_cloud.web.catalogue_form.code_problem`), or a price with more decimals than the currency
    has (:func:`~dangol_cloud.web.catalogue_form.price_problem`: 4500.5 won), is an error on the form, like any other
    field, and the attached photo is kept for the next submit."""
    s = get_session()
    prices = chain_prices(s, get_settings().currency)
    form = prices.form_class()()
    valid = form.validate_on_submit() & _code_ok(s, form, None) & _price_ok(form)  # &: every field's errors at once
    if valid & (not form.is_submitted() or prices.check(form, request.form)):
        typed = (form.ref.data or "").strip()
        item = CatalogueItem(ref=typed or unique_code(s, pos_code(form.name.data)), name="", tags=[])
        with _saving_photos(s, _fill(item, form, "new")):
            s.add(item)
            s.flush()
            prices.save(s, item.id, form)
            catalogue_currency(s, get_settings().currency)  # stored with the first price (the one the form showed)
            s.commit()
        flash(f"Added “{item.name}” (POS code {item.ref}). Publish to send it to the stores.", "success")
        return redirect(url_for("catalogue.index"))
    return _form_page(form, None, "new", prices, {})


@bp.route("/<item_id>", methods=["GET", "POST"])
@login_required
def edit(item_id: str):
    """GET/POST /catalogue/<id>: edit an item, its POS code included (blank keeps it; a refused one is an error on
    the form); 404 if unknown."""
    s = get_session()
    item = s.get(CatalogueItem, item_id) or abort(404)
    prices = chain_prices(s, get_settings().currency)
    stored = prices_by_item(s, [item.id]).get(item.id, {})
    form = prices.form_class()(obj=item) if request.method == "GET" else prices.form_class()()
    if request.method == "GET":
        form.tags.data = ", ".join(item.tags or [])
        prices.fill(form, stored)
        if item.price is not None and not math.isfinite(item.price):  # stored before prices were bounded
            form.price.errors = [f"The stored price ({item.price}) cannot be published. {PRICE_MESSAGE}"]
    valid = form.validate_on_submit() & _code_ok(s, form, item) & _price_ok(form)  # &: every field's errors at once
    if valid & (not form.is_submitted() or prices.check(form, request.form)):
        if (form.ref.data or "").strip() and form.ref.data != item.ref:
            item.ref = form.ref.data.strip()
        with _saving_photos(s, _fill(item, form, item.id)):
            prices.save(s, item.id, form)
            catalogue_currency(s, get_settings().currency)  # stored with the first price (the one the form showed)
            s.commit()
        flash(f"Saved “{item.name}” (POS code {item.ref}). Publish to send the change to the stores.", "success")
        return redirect(url_for("catalogue.index"))
    return _form_page(form, item, item.id, prices, stored)


@bp.route("/<item_id>/retire", methods=["POST"])
@login_required
def retire(item_id: str):
    """POST /catalogue/<id>/retire: retire (after the confirmation page: ``confirm=yes``) or restore an item."""
    s = get_session()
    item = s.get(CatalogueItem, item_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    if not item.retired:
        page = confirmation_page(title=f"Retire “{item.name}”?", button="Retire item",
                                 detail="It leaves the menu and every regular's picks at the next Publish. You can "
                                        "restore it later from the Retired tab.",
                                 cancel_url=url_for("catalogue.index"))
        if page is not None:
            return page
    item.retired = not item.retired
    s.commit()
    flash(f"“{item.name}” {'retired' if item.retired else 'restored'}. Publish to update the stores.", "success")
    return redirect(url_for("catalogue.index"))


def unpublishable_items(session) -> list[tuple[str, str]]:
    """``(name, refused fields)`` of each non-retired menu item that the ``catalogue/1`` protocol refuses, so it
    cannot go into a snapshot (e.g. an infinite price stored before prices were bounded), by name."""
    refused = []
    for item in session.scalars(select(CatalogueItem).where(CatalogueItem.retired.is_(False), on_menu())
                                .order_by(CatalogueItem.name)):
        try:
            proto.CatalogueItem(id=item.id, name=item.name, category=item.category, price=item.price,
                                description=item.description, tags=list(item.tags or []), available=item.available)
        except ValidationError as exc:
            refused.append((item.name, ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))))
    return refused


@bp.route("/publish", methods=["POST"])
@login_required
def publish_now():
    """POST /catalogue/publish: freeze the next catalogue version if the catalogue changed since the newest one
    (else that one is reused: no copy of an unchanged snapshot), and publish it (and menus) over MQTT either way:
    the owner pressed Publish, so the retained messages are sent again."""
    if not ActionForm().validate_on_submit():
        abort(400)
    settings = get_settings()
    refused = unpublishable_items(get_session())
    if refused:
        shown = ", ".join(f"“{name}” ({fields})" for name, fields in refused[:12])
        flash(f"Not published: {len(refused)} menu item(s) cannot be sent to the stores: {shown}"
              f"{'…' if len(refused) > 12 else ''}. Edit them (or retire them) and Publish again.", "error")
        return redirect(url_for("catalogue.index"))
    with get_db().transaction() as s:
        before = s.scalar(select(func.max(CatalogueVersion.version)))
        photos = photo_url_builder(settings.photos_dir)
        version = (ensure_current_version(s, published_by=current_user.email, photo_url=photos)
                   or publish_catalogue_version(s, published_by=current_user.email, photo_url=photos))  # empty
        number, count, again = version.version, len(version.items), version.version == before
    if not settings.mqtt_url:
        saved = f"is still version {number}, nothing changed" if again else f"version {number} saved"
        flash(f"Catalogue {saved} ({count} items). No broker is configured (DANGOL_MQTT_URL), "
              "so the stores were not updated.", "warning")
        return redirect(url_for("catalogue.index"))
    try:
        with get_db().transaction() as s:
            report = publish(s, settings.mqtt_url, currency=settings.currency, menus=True,
                             timezone=settings.door_timezone)
    except MqttError as exc:
        log.error("publishing catalogue version %s failed: %s", number, exc)
        flash(f"Catalogue version {number} {'is current' if again else 'saved'}, but the stores could not be "
              f"reached: {exc}. "
              "Try Publish again later.", "error")
        return redirect(url_for("catalogue.index"))
    what = f"{number} again (nothing changed; {count} items)" if again else f"{number} ({count} items)"
    flash(f"Published catalogue version {what} to {report.stores} store(s).", "success")
    return redirect(url_for("catalogue.index"))


@bp.route("/currency", methods=["POST"])
@owner_required
def set_currency():
    """POST /catalogue/currency: the currency the catalogue prices are in (an ISO 4217 code in use, any case:
    :func:`dangol_cloud.store_prices.set_catalogue_currency`); anything else is refused by name and nothing changes.
    The prices' numbers are kept as they are (not converted), and the page says so."""
    from dangol_protocol.money import CurrencyError

    from dangol_cloud.store_prices import set_catalogue_currency

    if not ActionForm().validate_on_submit():
        abort(400)
    from dangol_cloud.erasure import audit

    s = get_session()
    was = catalogue_currency(s, get_settings().currency)
    try:
        code = set_catalogue_currency(s, request.form.get("currency") or "")
    except CurrencyError as exc:
        s.rollback()
        flash(f"Catalogue currency: {exc}.", "error")
        return redirect(url_for("catalogue.index"))
    if code != was:  # every door's prices now mean another currency: on the audit log
        audit(s, current_user.email, "catalogue-currency", detail=f"{was} -> {code} (prices not converted)")
    s.commit()
    log.info("catalogue currency set to %s by %s", code, current_user.email)
    flash(f"Catalogue prices are now in {code}. Their numbers were not converted: check them, then Publish.",
          "success")
    return redirect(url_for("catalogue.index"))


@bp.route("/photos/<path:filename>")
@login_required
def photo(filename: str):
    """Item photos, for signed-in dashboard users only (the door screen gets them inlined in the snapshot)."""
    response = send_from_directory(get_settings().photos_dir.resolve(), filename, max_age=86400)
    response.cache_control.public, response.cache_control.private = False, True  # never in a shared cache
    return response


from dangol_cloud.web import products as _products  # noqa: E402,F401 - POS products and bulk routes on this bp
from dangol_cloud.web import item_detail as _item_detail  # noqa: E402,F401 - the item detail page on this bp
