"""Menus from a trained model: which POS products the model may pick, how many it is asked for, and the trim to
``menu_size`` menu items; day-part menus; menus for a few customers with the newest model (no retraining).

The recommender learns on POS *products*; the door shows *menu items* (:mod:`dangol_cloud.menu_mapping`). So the
model may pick only products sold as a menu item the door can show (and those menu items themselves,
:meth:`~dangol_cloud.menu_mapping.MenuScope.candidates`), never anything a customer's dislikes rule out under the
current mapping (:func:`~dangol_cloud.menu_mapping.expand_dislikes`), and is asked for more picks when several
of them are sold as one menu item, so that each customer gets ``min(menu_size, menu items it can offer)``.
Stored picks stay products (the best-scored product of each menu item); publishing translates them. The picks of
a customer the model does not know (no purchases or other interactions: the cold-start list, what sells) are
marked :data:`COLD_START` (:func:`pick_rows`), so the published menu says it is not ``personal``.

Split out of :mod:`dangol_cloud.training` (which re-exports :func:`refresh_menus` and :func:`welcome_regulars`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pandas as pd
from sqlalchemy import select

from dangol_cloud.cold_start_menus import cold_start_twins
from dangol_cloud.db import Database
from dangol_cloud.menu_mapping import MenuScope
from dangol_cloud.models import Customer, CustomerSegment, Menu, ModelVersion, utcnow
from dangol_cloud.models_ops import CustomerOrigin, MenuDayparts
from dangol_cloud.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["COLD_START", "choose_picks", "daypart_menus", "is_personal", "known_customers", "origin_stores",
           "pick_rows", "refresh_menus", "welcome_regulars"]

#: Each further ask of a customer whose menu is still short asks the model for this many times more picks.
ASK_GROWTH = 4
#: Customers whose kept picks get their reasons from one ask (:func:`_with_reasons`).
REASON_CHUNK = 200
#: Key of a stored pick (``Menu.picks``) that is True on every pick of a cold-start list (:func:`pick_rows`).
COLD_START = "cold_start"


def pick_rows(picks, *, cold_start: bool = False) -> list[dict]:
    """``[{"item_id", "score", "reasons"}]`` (the stored pick format) of a list of recommender picks; with
    ``cold_start`` (the customer is not one of :func:`known_customers`) each also has ``"cold_start": True``."""
    mark = {COLD_START: True} if cold_start else {}
    return [{"item_id": p.item, "score": float(p.score), "reasons": list(p.reasons), **mark} for p in picks]


def known_customers(model) -> set[str]:
    """The customers ``model`` has interactions of: it ranks their own picks; anyone else gets its cold-start
    list."""
    return {str(c) for c in model.customers}


def is_personal(picks: list[dict]) -> bool:
    """Whether stored picks are the customer's own (``menu/1`` ``personal``): False when they are marked
    :data:`COLD_START`. Picks stored before the mark read as personal until the next training or refresh."""
    return not any(p.get(COLD_START) for p in picks)


def choose_picks(model, customers: Sequence[str], n: int, scope: MenuScope, exclude: Mapping[str, set[str]], *,
                 hour: int | None = None, segments: Mapping[str, Sequence[str]] | None = None,
                 stores: Mapping[str, str] | None = None) -> dict[str, list]:
    """Each customer's picks: at most ``n`` products (or menu items) sold as ``n`` distinct usable menu items.

    The model picks among ``scope.candidates()`` without ``exclude[customer]``; it is asked for ``n`` picks of
    every customer (with reasons). A customer whose picks translate to fewer than ``min(n, menu items still
    reachable for them)`` distinct menu items (several products sold as one) is asked again, without reasons and
    without the menu items (and all their products) already picked, for :data:`ASK_GROWTH` times as many, until
    the menu is full, has every menu item still reachable, or the model has nothing more to give. So a menu
    smaller than ``n`` costs no wider ask once its items are all there, and each wider ask spends its places on
    missing menu items only: at most ~log4(candidates / n) asks per customer, none longer than the candidates,
    no reasons computed for them. The kept picks of those customers then get their reasons and scores from one
    ask restricted to them (:func:`_with_reasons`): the same as an explained ask of a long list gives.

    Items nobody has bought yet (the model puts them at the end of a list) get at most as many places as the
    model gave them in its own list of ``n`` (its new-item slots: ``config.new_item_slots`` for a known customer
    with a good enough new item, none in a cold-start list), after the other picks; further ones (from the ends
    of the wider asks, in their order) only fill places that would otherwise stay empty (:func:`_menu_sized`).
    Before the owner has put anything on the menu the model's ``n`` picks are kept as they are (nothing to
    translate to).

    Args:
        model: a :class:`dangol_cloud.recommend.Recommender`.
        customers: customer ids; unknown ones get the cold-start list (``segments``-aware).
        n: menu size.
        scope: the current menu (:func:`dangol_cloud.menu_mapping.menu_scope`).
        exclude: ``{customer: ids never to pick}`` (:func:`dangol_cloud.menu_mapping.expand_dislikes`).
        hour: local hour for a day-part menu (:meth:`Recommender.recommend`).
        segments: ``{customer: ["<column>:<value>", ...]}`` of customers the model does not know.
        stores: ``{customer: store id}`` (:func:`origin_stores`): a customer the model does not know gets the
            cold-start list of that store (its sales, smoothed towards the chain's; the chain's for a store without
            sales); without one, the chain's. Known customers' picks do not depend on it.

    Cold-start customers of one store with the same segment values and dislikes get the same list: it is chosen
    once and shared with the others (:mod:`dangol_cloud.cold_start_menus`).

    Returns:
        ``{customer: [Pick, ...]}`` best first (the kept picks, in the model's order, then the new items); each
        customer's own list, but such customers share the Pick objects: read them, do not change them.
    """
    groups: dict[str | None, list[str]] = {}
    known = known_customers(model)
    trained = known if stores else set()
    for customer in customers:  # one ask per store of the cold-start customers; everyone else in one
        groups.setdefault(None if customer in trained else (stores or {}).get(customer), []).append(customer)
    out: dict[str, list] = {}
    for store, who in groups.items():
        twins = cold_start_twins(who, known, exclude, segments)
        out.update(_choose_at(model, who, n, scope, exclude, hour=hour, segments=segments, store=store, twins=twins))
    return {c: out[c] for c in customers}


def _choose_at(model, customers: Sequence[str], n: int, scope: MenuScope, exclude: Mapping[str, set[str]], *,
               hour: int | None, segments: Mapping[str, Sequence[str]] | None, store: str | None,
               twins: Mapping[str, str]) -> dict[str, list]:
    """:func:`choose_picks` of customers whose cold-start lists are all those of ``store`` (None: the chain's).
    Only the customers that are not ``twins`` (:func:`~dangol_cloud.cold_start_menus.cold_start_twins`) are asked;
    a twin gets its representative's picks in a list of its own."""
    candidates = scope.candidates()
    ask_model = lambda who, k, explain, without=exclude: model.recommend(  # noqa: E731
        who, n=k, available=candidates, hour=hour, store=store, exclude=without, segments=segments, explain=explain)
    shared = lambda out: {c: list(out[twins[c]]) if c in twins else out[c] for c in customers}  # noqa: E731
    work = [c for c in customers if c not in twins]
    if not scope.usable or n <= 0:
        return shared(ask_model(work, n, True))
    new = {str(i) for i in model.items[model.new_items()]}
    reach = _Reach(model, scope, candidates)
    slots_of = max(int(getattr(model.config, "new_item_slots", 0)), 0)
    heads: dict[str, list] = {}
    tails: dict[str, list] = {}
    slots: dict[str, int] = {}
    out: dict[str, list] = {}
    pending: list[str] = []
    first = ask_model(work, n, True)
    for customer in work:
        heads[customer], tails[customer] = _split(first[customer], scope, new)
        slots[customer] = min(slots_of, len(tails[customer]))  # the places the model gave new items in its n-list
        out[customer] = _menu_sized(heads[customer], tails[customer], n, slots[customer])
        if _short(out[customer], first[customer], n, n, len(candidates), reach.count(exclude.get(customer))):
            pending.append(customer)
    widened, ask = set(pending), n
    while pending:  # the next picks of each short customer, without the menu items it already has
        ask = min(ask * ASK_GROWTH, len(candidates))
        without = {c: reach.sources_of(heads[c] + tails[c], exclude.get(c)) for c in pending}
        picks = ask_model(pending, ask, False, without)
        short = []
        for customer in pending:
            head, tail = _split(picks[customer], scope, new)
            heads[customer] += head
            tails[customer] += tail
            out[customer] = _menu_sized(heads[customer], tails[customer], n, slots[customer])
            if _short(out[customer], picks[customer], n, ask, len(candidates), reach.count(exclude.get(customer))):
                short.append(customer)
        pending = short
    if widened:  # twins keep their places in the reason asks: known customers are asked as without twins
        long_list = lambda who: ask_model(who, len(candidates), True)  # noqa: E731
        kept = {c: out[twins.get(c, c)] for c in customers if twins.get(c, c) in widened}
        out.update(_with_reasons(model, kept, long_list, hour=hour, segments=segments, store=store, twins=twins))
    return shared(out)


def _short(menu: list, picks: list, n: int, ask: int, n_candidates: int, reachable: int) -> bool:
    """Whether a customer's menu needs a wider ask: fewer than ``min(n, reachable)`` menu items, and the model
    gave all ``ask`` picks asked for (it has more) while fewer than every candidate were asked for."""
    return len(menu) < min(n, reachable) and len(picks) >= ask and ask < n_candidates


class _Reach:
    """Which usable menu items the model can offer: ``sources[menu item]`` = the candidates the model knows that
    are (or are sold as) it."""

    def __init__(self, model, scope: MenuScope, candidates: set[str]):
        self.scope = scope
        self.sources: dict[str, set[str]] = {}
        for item in candidates & {str(i) for i in model.items}:
            target = scope.shown_as(item)
            if target is not None:
                self.sources.setdefault(target, set()).add(item)

    def count(self, excluded: set[str] | None) -> int:
        """How many distinct usable menu items a customer with ``excluded`` ids can still get: those with a
        source that is not excluded."""
        if not excluded:
            return len(self.sources)
        hit = {self.scope.shown_as(i) for i in excluded} - {None}
        return len(self.sources) - sum(1 for t in hit if t in self.sources and self.sources[t] <= excluded)

    def sources_of(self, picks: list, excluded: set[str] | None) -> set[str]:
        """``excluded`` plus every source of the menu items ``picks`` are shown as (so an ask without them gives
        only menu items not yet picked)."""
        out = set(excluded or ())
        for pick in picks:
            out |= self.sources.get(self.scope.shown_as(pick.item), {pick.item})
        return out


def _split(picks: list, scope: MenuScope, new: set[str]) -> tuple[list, list]:
    """``(head, tail)``: the first pick of each distinct usable menu item among ``picks`` (model order), split
    where the trailing run of never-bought items (``new``) begins."""
    split = len(picks)
    while split and picks[split - 1].item in new:
        split -= 1
    seen: set[str] = set()
    head, tail = [], []
    for k, pick in enumerate(picks):
        target = scope.shown_as(pick.item)
        if target is None or target in seen:
            continue
        seen.add(target)
        (head if k < split else tail).append(pick)
    return head, tail


def _menu_sized(head: list, tail: list, n: int, slots: int) -> list:
    """At most ``n`` picks: the first ``n - slots`` of ``head``, then ``slots`` new items of ``tail`` (the model's
    new-item slots), then more of ``tail`` only for places still empty.

    E.g. head ``[A, B, C, D, E]``, tail ``[N1, N2, ...]``, n 10, slots 1: ``[A, B, C, D, E, N1, N2, N3, N4, N5]``;
    n 4: ``[A, B, C, N1]``; n 4, slots 0: ``[A, B, C, D]``."""
    kept = head[:max(n - min(slots, len(tail)), 0)]
    return kept + tail[:n - len(kept)]


def _with_reasons(model, kept: Mapping[str, list], long_list, *, hour: int | None,
                  segments: Mapping[str, Sequence[str]] | None, store: str | None,
                  twins: Mapping[str, str]) -> dict[str, list]:
    """``kept`` (picks from asks without reasons) with their reasons and scores, from one explained ask whose
    lists are exactly each customer's kept items: the union of the kept items is what is available, every one
    of them a customer did not keep is excluded for them, and ``n`` is the size of the union (so the category
    cap cuts nothing). A pick's reasons and score depend on the customer and item only, not on which other items
    are available, so they equal those of the explained long list. Customers whose kept items do not all come
    back (a safeguard; not seen) are asked once more for the long list with reasons (``long_list(customers)``).
    Order and items stay those of ``kept``. ``twins`` (``{twin: representative}``, both in ``kept``) count in
    their chunk's union but are not asked: they get their representative's picks (a cold-start pick's reasons
    and score depend on its list's store, hour, segment values and item only)."""
    found: dict[str, dict] = {}
    customers = list(kept)
    for start in range(0, len(customers), REASON_CHUNK):  # a smaller union, fewer ids to exclude per customer
        chunk = customers[start:start + REASON_CHUNK]
        union = {p.item for c in chunk for p in kept[c]}
        asked = [c for c in chunk if c not in twins]
        if not union or not asked:
            continue
        others = {c: union - {p.item for p in kept[c]} for c in asked}
        got = model.recommend(asked, n=len(union), available=union, hour=hour, store=store, exclude=others,
                              segments=segments, explain=True)
        found.update({c: {p.item: p for p in got.get(c, [])} for c in asked})
    found.update({c: {} for c in customers if c not in found and c not in twins})
    missing = [c for c, picks in kept.items() if c not in twins and any(p.item not in found[c] for p in picks)]
    if missing:
        log.warning("%d customer(s) re-asked for the reasons of their kept picks", len(missing))
        found.update({c: {p.item: p for p in picks} for c, picks in long_list(missing).items()})
    found.update({c: found[twins[c]] for c in customers if c in twins})
    return {c: [found[c].get(p.item, p) for p in picks] for c, picks in kept.items()}


def daypart_menus(model, customers: list[str], n: int, scope: MenuScope, exclude: Mapping[str, set[str]], *,
                  segments: Mapping[str, Sequence[str]] | None = None, stores: Mapping[str, str] | None = None
                  ) -> list[dict]:
    """Rows for :class:`~dangol_cloud.models.MenuDayparts` (``customer_id``, ``dayparts``): each customer's picks per
    day-part, chosen like the all-day ones (:func:`choose_picks`) at the day-part's representative hour
    (:data:`~dangol_cloud.recommend.dayparts.DAYPART_HOURS`): a known customer's day-part menu, and for a customer
    the model does not know the cold-start list of that hour (±1 h) at their store (``stores``, else the chain's),
    ``segments``-aware and marked :data:`COLD_START`. None for data without times of day."""
    from dangol_cloud.recommend.dayparts import DAYPART_HOURS

    customers = list(dict.fromkeys(customers))
    if model.dayparts is None or not customers:
        return []
    slots = {name: choose_picks(model, customers, n, scope, exclude, hour=hour, segments=segments, stores=stores)
             for name, hour in DAYPART_HOURS.items()}
    known = known_customers(model)
    return [{"customer_id": c, "dayparts": {name: pick_rows(slot[c], cold_start=c not in known)
                                            for name, slot in slots.items()}} for c in customers]


def origin_stores(session, customer_ids: Sequence[str] | None = None) -> dict[str, str]:
    """``{customer id: store id}`` of the customers (all, or ``customer_ids``) with an origin store
    (:class:`~dangol_cloud.models_ops.CustomerOrigin`: the store whose door enrolled them, or the one an owner
    assigned): the store whose sales their cold-start list ranks (:func:`choose_picks`)."""
    query = select(CustomerOrigin.customer_id, CustomerOrigin.store_id).where(CustomerOrigin.store_id.is_not(None))
    if customer_ids is not None:
        query = query.where(CustomerOrigin.customer_id.in_(list(customer_ids)))
    return {str(c): str(s) for c, s in session.execute(query)}


def refresh_menus(db: Database, settings: Settings, customer_ids: list[str]) -> int:
    """Write menus for ``customer_ids`` with the newest saved model (no retraining), e.g. for a regular who
    just gave consent: known customers get their ranked picks, new ones the cold-start list of their origin store
    (:func:`origin_stores`), marked so (:data:`COLD_START`; both chosen by :func:`choose_picks` under the current
    menu and dislikes), and, for data with times of day, the picks per day-part (:func:`daypart_menus`).

    Returns:
        Number of menus written (0 if no model has been trained yet).

    A training that commits meanwhile deletes the model read here (only the current one is kept): the menus
    are then made once more with the new one.

    Raises:
        FileNotFoundError / ValueError: the newest model folder is missing or unreadable.
    """
    if not customer_ids:
        return 0
    for attempt in (1, 2):  # a training that commits meanwhile deletes the model read here: once more with its own
        try:
            return _refresh_menus_once(db, settings, customer_ids)
        except _ModelReplaced:
            if attempt == 2:
                raise FileNotFoundError("the newest model was replaced twice while menus were being written; "
                                        "they are written by the next training") from None
    return 0


class _ModelReplaced(Exception):
    """The model :func:`refresh_menus` read was replaced (row and folder deleted) by a newer training."""


def _refresh_menus_once(db: Database, settings: Settings, customer_ids: list[str]) -> int:
    from dangol_cloud.feedback import disliked_items
    from dangol_cloud.menu_mapping import expand_dislikes, menu_scope
    from dangol_cloud.recommend import Recommender
    from dangol_cloud.recommend.segments import segment_values

    with db.sessions() as session:
        latest = session.scalar(select(ModelVersion).order_by(ModelVersion.created_at.desc()).limit(1))
        if latest is None:
            return 0
        scope = menu_scope(session)
        exclude = expand_dislikes(disliked_items(session, customer_ids), scope.mapping)
        segments = pd.DataFrame(session.execute(
            select(CustomerSegment.customer_id, CustomerSegment.age_group, CustomerSegment.area)
            .where(CustomerSegment.customer_id.in_(customer_ids))).all(), columns=["customer", "age_group", "area"])
        stores = origin_stores(session, customer_ids)
    try:
        model = Recommender.load(latest.path)
    except FileNotFoundError:
        with db.sessions() as session:
            if session.get(ModelVersion, latest.version) is None:
                raise _ModelReplaced() from None
        raise
    segments = segment_values(segments)
    picks = choose_picks(model, customer_ids, settings.menu_size, scope, exclude, segments=segments, stores=stores)
    slots = daypart_menus(model, customer_ids, settings.menu_size, scope, exclude, segments=segments, stores=stores)
    known = known_customers(model)
    now = utcnow()
    with db.transaction() as session:
        if session.get(ModelVersion, latest.version) is None:
            raise _ModelReplaced()
        for customer_id, chosen in picks.items():
            menu = session.get(Menu, customer_id) or Menu(customer_id=customer_id)
            menu.model_version, menu.generated_at = latest.version, now
            menu.picks = pick_rows(chosen, cold_start=customer_id not in known)
            session.add(menu)
        for row in slots:
            parts = session.get(MenuDayparts, row["customer_id"]) or MenuDayparts(customer_id=row["customer_id"])
            parts.model_version, parts.dayparts = latest.version, row["dayparts"]
            session.add(parts)
    return len(picks)


def welcome_regulars(db: Database, settings: Settings, customer_ids: list[str]) -> int:
    """For customers who just became active (consent recorded): write their menus with the newest model
    (:func:`refresh_menus`) and, if a broker is configured, publish those menus to every store at once.

    Only customers still active with a consent record are welcomed: one who withdrew or was erased before a retry
    (:func:`dangol_cloud.background.welcomer`) gets no menu. Calling it again for the same customers is harmless
    (the menu is rewritten and sent again), so callers retry it until it succeeds.

    Returns:
        Number of menu messages published (0 without a broker, a trained model, or anyone still active).

    Raises:
        MqttError: the broker is configured but unreachable: the menus are written but not sent (a manual Publish
            or the next training sends them; the callers also retry this function).
        OSError / ValueError: the newest model cannot be loaded (folder missing or unreadable): nothing is
            written, and a Publish sends nothing for these customers until this succeeds or the next training
            writes every menu.
    """
    from dangol_cloud.publishing import publish

    with db.sessions() as session:
        active = set(session.scalars(select(Customer.id).where(
            Customer.id.in_(list(customer_ids)), Customer.status == "active", Customer.consent_at.is_not(None))))
    customer_ids = [c for c in customer_ids if c in active]
    if not refresh_menus(db, settings, customer_ids) or not settings.mqtt_url:
        return 0
    with db.transaction() as session:
        report = publish(session, settings.mqtt_url, currency=settings.currency, catalogue=False,
                         customer_ids=customer_ids)
    return report.menus
