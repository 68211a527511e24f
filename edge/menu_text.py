"""Which items the door screen offers a customer: the one place picks are chosen and filtered.

Inputs are the protocol's objects as the cache keeps them (:class:`dangol_protocol.Catalogue`,
:class:`dangol_protocol.Menu`). The rules, in order:

1. **Day-part**: a menu with ``dayparts`` offers the current day-part's picks (:meth:`dangol_protocol.Menu.picks_at`:
   breakfast 05–10, lunch 11–13, afternoon 14–16, evening 17–04), else its all-day ``items``; the day-part's picks
   are followed by the all-day ``items`` as a top-up, so that a day-part list whose picks are sold out (all or some)
   or ruled out for the customer is filled from the all-day list by rules 2–4 (the same availability rules; each item
   once, from the first list that has it: a topped-up pick keeps its all-day reasons, :attr:`Picks.reasons`). The
   hour is read on the clock the cloud trained the day-parts in: the catalogue's ``timezone`` (:func:`door_time`,
   which the door's greeting and clock read too), else (an older cloud's catalogue) the box's local time. No menu
   (a regular the cloud has no menu for yet): the catalogue's house items in catalogue order (cold start). A menu whose
   ``personal`` is False (the cloud's cold-start list of a customer with no purchases: what sells) is offered as
   it is, but not as the customer's own (:attr:`Picks.own`).
2. **Available**: only items the current catalogue lists with ``available=true`` (no catalogue: nothing); any
   listed item, on the house menu or not.
3. **Not disliked**: the cloud leaves disliked items out of the menus it publishes; ``disliked`` drops
   any item ids the caller knows of on top.
4. At most ``limit``, each item once, best first.

The arrival worker chooses the picks with :func:`choose_picks` when a customer arrives; the menu page
re-applies :func:`available_items` to the chosen ids whenever the catalogue changes while the welcome is up.

Formatting for the pages (prices, the house menu, greetings) is in :mod:`dangol_edge.web.formatting`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from dangol_protocol import Catalogue, CatalogueItem, Menu, MenuPick

__all__ = ["Picks", "available_items", "choose_picks", "daypart_hour", "door_time", "door_zone", "menu_item_ids"]

log = logging.getLogger(__name__)


def door_time(catalogue: Catalogue | None, at: datetime) -> datetime:
    """The café's wall-clock time at instant ``at``, an aware datetime: on the catalogue's ``timezone`` clock
    (:meth:`dangol_protocol.Catalogue.local_time`), else the box's local time (no catalogue, or one of an older
    cloud without a zone). ``at`` is aware, or naive in the box's local time (as ``datetime.now()``). The day-part,
    the greeting and the door's clock all read it.

    A zone is validated when the catalogue arrives; one the box's time zone database cannot resolve any more
    falls back to the box's local time with a warning, so an arrival or a page never fails on it.
    """
    if catalogue is not None and catalogue.timezone is not None:
        try:
            return catalogue.local_time(at)
        except (LookupError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
            log.warning("the catalogue's time zone %r cannot be used (%s): the box's local time is the café's",
                        catalogue.timezone, exc)
    return at.astimezone()  # a naive ``at`` is taken as local time


def door_zone(catalogue: Catalogue | None) -> str | None:
    """The IANA name of the zone :func:`door_time` reads (the catalogue's, when the box can resolve it), or None
    for the box's local time."""
    zone = catalogue.timezone if catalogue is not None else None
    if zone is None:
        return None
    try:
        ZoneInfo(zone)
    except (LookupError, ValueError, OSError):
        return None
    return zone


def daypart_hour(catalogue: Catalogue | None, at: datetime) -> int:
    """The hour (0–23) that picks the day-part at instant ``at``: the hour of :func:`door_time` (the catalogue's
    ``timezone`` clock, else the box's local time)."""
    return door_time(catalogue, at).hour


def menu_item_ids(menu: Menu | None, catalogue: Catalogue | None, at: datetime) -> list[str]:
    """Candidate item ids, best first, at instant ``at`` (rule 1 of the module docstring): the current day-part's
    picks then the all-day picks (an id may come twice: :func:`available_items` keeps its first place)."""
    return [pick.item_id for pick in _menu_picks(menu, catalogue, at)] if menu is not None else [
        item.id for item in (catalogue.items if catalogue else []) if item.house]


def _menu_picks(menu: Menu, catalogue: Catalogue | None, at: datetime) -> list[MenuPick]:
    """The menu's picks at ``at``, best first: the day-part's (:meth:`dangol_protocol.Menu.picks_at`, the all-day
    list when the menu has none for it), then the all-day list as the top-up."""
    return [*menu.picks_at(daypart_hour(catalogue, at)), *menu.items]


def available_items(ids: Iterable[str], catalogue: Catalogue | None, limit: int,
                    disliked: Iterable[str] = ()) -> list[CatalogueItem]:
    """The catalogue's items for ``ids`` that are available and not ``disliked``, in the order of ``ids``,
    each once, at most ``limit`` (rules 2–4).

    Raises:
        ValueError: ``limit`` < 0.
    """
    if limit < 0:
        raise ValueError(f"limit {limit} must be >= 0")
    if catalogue is None or limit == 0:
        return []
    items = {item.id: item for item in catalogue.items if item.available}
    skip = {str(i) for i in disliked}
    out: list[CatalogueItem] = []
    for item_id in ids:
        item = items.get(str(item_id))
        if item is None or item.id in skip or item in out:
            continue
        out.append(item)
        if len(out) >= limit:
            break
    return out


class Picks(list):
    """The items chosen for a customer (:class:`~dangol_protocol.CatalogueItem`, best first), and whose they are:
    ``own`` is True when they come from the customer's own menu (the cloud's picks from their purchases), False when
    they are not the customer's own: the catalogue's house items of a customer with no menu yet (rule 1's cold
    start), or a menu the cloud marked not ``personal`` (its cold-start list of a customer with no purchases). The
    door must not call those "your usual". ``reasons`` maps each chosen item id to the reasons of the menu pick it was
    taken from (the day-part's, or the all-day list's for a pick that topped a day-part list up; none for the house
    items)."""

    def __init__(self, items: Iterable[CatalogueItem] = (), own: bool = False,
                 reasons: dict[str, list[str]] | None = None):
        super().__init__(items)
        self.own = own
        self.reasons = reasons or {}


def choose_picks(menu: Menu | None, catalogue: Catalogue | None, *, limit: int, at: datetime,
                 disliked: Iterable[str] = ()) -> Picks:
    """The picks to welcome a customer with at local time ``at``: every rule of the module docstring (the current
    day-part's available picks, topped up from the all-day list to ``limit``), with :attr:`Picks.own` True when
    they are the customer's own menu's (False: the house items, no menu; or a menu that is not ``personal``, the
    cloud's cold-start list) and :attr:`Picks.reasons` those of the list each pick was taken from.

    Args:
        menu: the customer's cached menu, or None (cold start: the catalogue's first available house items).
        catalogue: the cached catalogue, or None (nothing can be shown as available).
        limit: ``display.picks``.
        at: the instant (aware, or naive in the box's local time); its hour on the catalogue's clock picks the
            day-part (:func:`daypart_hour`).
        disliked: item ids never to offer this customer.

    Raises:
        ValueError: ``limit`` < 0.
    """
    if menu is None:
        return Picks(available_items(menu_item_ids(None, catalogue, at), catalogue, limit, disliked))
    picks = _menu_picks(menu, catalogue, at)
    items = available_items([p.item_id for p in picks], catalogue, limit, disliked)
    first: dict[str, list[str]] = {}
    for pick in picks:
        first.setdefault(str(pick.item_id), list(pick.reasons))
    return Picks(items, own=menu.personal, reasons={item.id: first[item.id] for item in items})
