"""Cold-start customers who get the same list: it is computed once and shared with the others.

A customer the model does not know gets the cold-start list (:meth:`dangol_cloud.recommend.Recommender.recommend`):
what sells at a store and hour, blended with what customers of their recorded segment values buy, without what
they exclude (dislikes). For one ask (:func:`dangol_cloud.training_menus.choose_picks` asks per store and hour)
that list, and every step :mod:`dangol_cloud.training_menus` takes to turn it into a menu, depends only on the
customer's segment values (in their order) and their set of excluded ids. So of the cold-start customers with the
same ``(segment values, excluded ids)`` only the first is computed (the *representative*); the others (its
*twins*) get a list of their own holding its picks (the same :class:`~dangol_cloud.recommend.model.Pick` objects:
they are read, never changed, after choosing; :func:`dangol_cloud.training_menus.pick_rows` copies them). A
training with 20,000 enrolled customers without purchases ranks a few dozen lists per store and hour, not 20,000.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

__all__ = ["cold_start_twins"]


def cold_start_twins(customers: Sequence[str], known: Collection[str], exclude: Mapping[str, Collection[str]],
                     segments: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """``{twin: representative}``: each cold-start customer (not in ``known``) whose segment values and excluded
    ids equal those of an earlier cold-start customer in ``customers``, mapped to the first such customer.

    The key is ``(tuple(segments[c]), frozenset(exclude[c]))`` (a missing or empty entry: no values / nothing
    excluded, as the recommender reads them), so a representative's picks are exactly what each of its twins
    would get when asked alone in the same ask (same store, hour, candidates and ``n``). Representatives,
    known customers and a customer listed again are not keys of the result.

    Args:
        customers: customer ids of one ask, in order.
        known: ids the model knows (:func:`dangol_cloud.training_menus.known_customers`).
        exclude: ``{customer: ids never to pick}``.
        segments: ``{customer: ["<column>:<value>", ...]}`` or None.
    """
    first: dict[tuple, str] = {}
    twins: dict[str, str] = {}
    for customer in customers:
        if str(customer) in known:
            continue
        key = (tuple((segments or {}).get(customer) or ()), frozenset(exclude.get(customer) or ()))
        representative = first.setdefault(key, customer)
        if representative != customer:
            twins[customer] = representative
    return twins

