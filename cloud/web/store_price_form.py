"""The item form's prices per store, for a chain (more than one store; also a single store with a store price kept
from when there were several, or selling in another currency than the catalogue's: :func:`chain_prices`): one
optional field per store, in that store's currency, labelled "<store> (<currency>)". Blank: the store shows the
catalogue price if it sells in the catalogue's currency, else no price (:mod:`dangol_cloud.store_prices`). Used
by :mod:`dangol_cloud.web.catalogue`.

Each field takes the checks of the catalogue price (0 to :data:`~dangol_cloud.web.forms.MAX_PRICE`, finite, the
decimals of the store's currency: :func:`~dangol_cloud.web.catalogue_form.price_problem`), and every refusal names
the store and its currency ("Price at Taipei (TWD): …").
"""

from __future__ import annotations

from decimal import Decimal

from dangol_cloud.app import shown_money
from dangol_cloud.store_prices import (StoreCurrency, has_store_prices, read_catalogue_currency,
                                       set_store_prices, store_currencies)
from dangol_cloud.web.catalogue_form import price_problem, show_price_in
from dangol_cloud.web.forms import item_form_class, store_price_field

__all__ = ["StorePrices", "chain_prices", "currency_input"]


class StorePrices:
    """The stores whose prices the item form shows (``stores``: every store, or none for a single café whose
    catalogue price is its price: :func:`chain_prices`) and the catalogue's currency (``menu_currency``)."""

    def __init__(self, stores: list[StoreCurrency], menu_currency: str):
        self.stores = stores
        self.menu_currency = menu_currency

    def form_class(self):
        """The item form class with one price field per store (:func:`dangol_cloud.web.forms.item_form_class`)."""
        return item_form_class(self.stores)

    def fields(self, form):
        """``(store id, name, currency, field)`` of each store's price field of ``form``."""
        return [(sid, name, code, getattr(form, store_price_field(sid))) for sid, name, code in self.stores]

    def fill(self, form, stored: dict[str, dict]) -> None:
        """Show an item's stored prices (``{store id: {"price", "currency"}}``) in a fresh form: those set in the
        store's current currency (one set before the store changed currency is not sent: :meth:`view` says so)."""
        for sid, _name, code, field in self.fields(form):
            own = stored.get(sid)
            if own is not None and own["currency"] == code:
                field.data = Decimal(repr(float(own["price"])))

    def check(self, form, posted) -> bool:
        """Check each submitted store price against its store's currency (the decimals); every error of the field
        (its validators' too) is put in the store's name. A price typed while the form showed another currency for
        the store (``posted``, the request's form data: :func:`currency_input` — the store's currency changed on the
        Stores page meanwhile) is refused, never saved in the new one. True when all may be saved."""
        ok = True
        for sid, name, code, field in self.fields(form):
            label = f"Price at {name} ({code})"
            problem = price_problem(field, code, label)
            shown = posted.get(currency_input(sid))
            if field.raw_data and field.raw_data[0].strip() and shown is not None and shown != code:
                problem = (f"{label}: {name} now sells in {code}, not {str(shown)[:3]!r} as this form said (its "
                           "currency was changed meanwhile). Check the price and save again.")
            errors = [*field.errors, *([problem] if problem else [])]
            field.errors = [e if str(e).startswith(label) else f"{label}: {e}" for e in errors]
            ok = ok and not field.errors
        return ok

    def save(self, session, item_id: str, form) -> None:
        """Store the submitted prices of item ``item_id``, each in its store's currency (blank deletes one; a store
        whose field was not submitted — added after the form was opened — keeps its price);
        :func:`dangol_cloud.store_prices.set_store_prices`. The caller checked them (:meth:`check`) and commits."""
        set_store_prices(session, item_id, {
            sid: (float(field.data) if field.data is not None else None, code)
            for sid, _name, code, field in self.fields(form) if field.raw_data})

    def view(self, form, default: float | None, stored: dict[str, dict]) -> list[dict]:
        """What the template shows of each store's field: ``{"field", "step", "hint"}``; the hint says what the
        store's door shows when the field is blank, and names a price kept from the store's former currency."""
        out = []
        for sid, _name, code, field in self.fields(form):
            step = show_price_in(field, code)
            if code == self.menu_currency:
                shown = f" ({shown_money(default, code)})" if default is not None else ""
                blank = f"Blank: the catalogue price{shown}."
            else:
                blank = (f"Blank: this store's door shows no price (the catalogue price is in {self.menu_currency}, "
                         f"the store sells in {code}).")
            old = stored.get(sid)
            if old is not None and old["currency"] != code:
                before = shown_money(old["price"], old["currency"])
                blank += (f" The price set before, {before}, is in the store's former currency and is not sent: enter "
                          f"a {code} price.")
            out.append({"field": field, "step": step, "hint": blank, "currency_input": currency_input(sid),
                         "currency": code})
        return out


def currency_input(store_id: str) -> str:
    """The name of the item form's hidden input holding the currency the form showed for store ``store_id``."""
    return "store_currency_" + store_id.replace("-", "")


def chain_prices(session, default: str) -> StorePrices:
    """The :class:`StorePrices` of the chain and the catalogue's currency
    (:func:`dangol_cloud.store_prices.read_catalogue_currency`: never writes); ``default`` is the ``CURRENCY``
    setting. Every store is shown when there are two or more, and also a single store when any store price exists
    (one set while there were several stays live: the owner sees and edits what the door gets) or when it sells in
    another currency than the catalogue's (its door shows no catalogue price; only its own)."""
    stores = store_currencies(session, default)
    menu = read_catalogue_currency(session, default)
    shown = (len(stores) > 1 or any(code != menu for _sid, _name, code in stores)
             or (bool(stores) and has_store_prices(session)))
    return StorePrices(stores if shown else [], menu)
