"""Menus from a trained model: which POS products the model may pick, how many it is asked for, and the trim to
``menu_size`` menu items; day-part menus; menus for a few customers with the newest model (no retraining).

The recommender learns on POS *products*; the door shows *menu items* (:mod:`dangol_cloud.menu_mapping`). So the
model may pick only products sold as a menu item the door can show (and those menu items themselves,
:meth:`~dangol_cloud.menu_mapping.MenuScope.candidates`), never anything a customer's dislikes rule out under the
current mapping (:func:`~dangol_cloud.menu_mapping.expand_dislikes`), and is asked for more picks when several
of them are sold as one menu item, so that each customer gets ``min(menu_size, menu items it can offer)``.
Stored picks stay products (the best-scored product of each menu item); publishing translates them.

Split out of :mod:`dangol_cloud.training` (which re-exports :func:`refresh_menus` and :func:`welcome_regulars`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from sqlalchemy import select

from dangol_cloud.db import Database
from dangol_cloud.menu_mapping import MenuScope
from dangol_cloud.models import CustomerSegment, Menu, ModelVersion, utcnow
from dangol_cloud.settings import Settings

__all__ = ["choose_picks", "daypart_menus", "pick_rows", "refresh_menus", "welcome_regulars"]

#: Each further ask of a customer whose menu is still short asks the model for this many times more picks.
ASK_GROWTH = 4


def pick_rows(picks) -> list[dict]:
    """``[{"item_id", "score", "reasons"}]`` (the stored pick format) of a list of recommender picks."""
    return [{"item_id": p.item, "score": float(p.score), "reasons": list(p.reasons)} for p in picks]


def choose_picks(model, customers: Sequence[str], n: int, scope: MenuScope, exclude: Mapping[str, set[str]], *,
                 hour: int | None = None, segments: Mapping[str, Sequence[str]] | None = None) -> dict[str, list]:
    """Each customer's picks: at most ``n`` products (or menu items) sold as ``n`` distinct usable menu items.

    The model picks among ``scope.candidates()`` without ``exclude[customer]``; a customer whose picks translate
    to fewer than ``n`` distinct menu items (several products sold as one) is asked again for
    :data:`ASK_GROWTH` times as many, until the list is full or the model has nothing more to give. The new-item
    slot (items nobody has bought yet, which the model puts at the end of a list) keeps its place at the end:
    the first picks are trimmed, not it. Before the owner has put anything on the menu the model's ``n`` picks
    are kept as they are (nothing to translate to).

    Args:
        model: a :class:`dangol_cloud.recommend.Recommender`.
        customers: customer ids; unknown ones get the cold-start list (``segments``-aware).
        n: menu size.
        scope: the current menu (:func:`dangol_cloud.menu_mapping.menu_scope`).
        exclude: ``{customer: ids never to pick}`` (:func:`dangol_cloud.menu_mapping.expand_dislikes`).
        hour: local hour for a day-part menu (:meth:`Recommender.recommend`).

    Returns:
        ``{customer: [Pick, ...]}`` best first (the kept picks, in the model's order).
    """
    candidates = scope.candidates()
    if not scope.usable or n <= 0:
        return model.recommend(customers, n=n, available=candidates, hour=hour, exclude=exclude, segments=segments)
    new = {str(i) for i in model.items[model.new_items()]}
    out: dict[str, list] = {}
    pending, ask = list(customers), n
    while pending:
        picks = model.recommend(pending, n=ask, available=candidates, hour=hour, exclude=exclude, segments=segments)
        short = []
        for customer in pending:
            out[customer] = _menu_sized(picks[customer], n, scope, new)
            if len(out[customer]) < n and len(picks[customer]) >= ask and ask < len(candidates):
                short.append(customer)
        pending, ask = short, min(ask * ASK_GROWTH, len(candidates))
    return {c: out[c] for c in customers}


def _menu_sized(picks: list, n: int, scope: MenuScope, new: set[str]) -> list:
    """The first pick of each distinct usable menu item among ``picks``, ``n`` at most, keeping the trailing run of
    new items (the model's new-item slot) at the end."""
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
    tail = tail[:n]
    return head[:n - len(tail)] + tail


def daypart_menus(model, customers: list[str], n: int, scope: MenuScope, exclude: Mapping[str, set[str]]
                  ) -> list[dict]:
    """Rows for :class:`~dangol_cloud.models.MenuDayparts` (``customer_id``, ``dayparts``): each known customer's
    picks per day-part, chosen like the all-day ones (:func:`choose_picks`); none for data without times of
    day."""
    from dangol_cloud.recommend.dayparts import DAYPART_HOURS

    trained = set(model.customers)
    known = [c for c in customers if c in trained]
    if model.dayparts is None or not known:
        return []
    slots = {name: choose_picks(model, known, n, scope, exclude, hour=hour) for name, hour in DAYPART_HOURS.items()}
    return [{"customer_id": c, "dayparts": {name: pick_rows(slot[c]) for name, slot in slots.items()}}
            for c in known]


def refresh_menus(db: Database, settings: Settings, customer_ids: list[str]) -> int:
    """Write menus for ``customer_ids`` with the newest saved model (no retraining), e.g. for a regular who
    just gave consent: known customers get their ranked picks, new ones the cold-start list (both chosen by
    :func:`choose_picks` under the current menu and dislikes).

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
    try:
        model = Recommender.load(latest.path)
    except FileNotFoundError:
        with db.sessions() as session:
            if session.get(ModelVersion, latest.version) is None:
                raise _ModelReplaced() from None
        raise
    picks = choose_picks(model, customer_ids, settings.menu_size, scope, exclude, segments=segment_values(segments))
    now = utcnow()
    with db.transaction() as session:
        if session.get(ModelVersion, latest.version) is None:
            raise _ModelReplaced()
        for customer_id, chosen in picks.items():
            menu = session.get(Menu, customer_id) or Menu(customer_id=customer_id)
            menu.model_version, menu.generated_at = latest.version, now
            menu.picks = pick_rows(chosen)
            session.add(menu)
    return len(picks)


def welcome_regulars(db: Database, settings: Settings, customer_ids: list[str]) -> int:
    """For customers who just became active (consent recorded): write their menus with the newest model
    and, if a broker is configured, publish those menus to every store at once.

    Returns:
        Number of menu messages published (0 without a broker or a trained model).

    Raises:
        MqttError: the broker is configured but unreachable (the menus stay in the database and go out
            with the next publish).
    """
    from dangol_cloud.publishing import publish

    if not refresh_menus(db, settings, customer_ids) or not settings.mqtt_url:
        return 0
    with db.transaction() as session:
        report = publish(session, settings.mqtt_url, currency=settings.currency, catalogue=False,
                         customer_ids=customer_ids)
    return report.menus
