"""The customer list (``GET /customers/``, on the ``customers`` blueprint): search, tabs, paging in SQL, and per
row the visit count, latest visit (on its store's clock) and the consent date on the clock of the store the
customer is registered at (:func:`~dangol_cloud.web.customers.origin_stores`). Staff see the customers of their
stores only (:mod:`dangol_cloud.web.scope`)."""

from __future__ import annotations

import re

from flask import render_template, request
from flask_login import login_required
from sqlalchemy import func, or_, select

from dangol_cloud.app import get_session
from dangol_cloud.models import Customer, Purchase, Visit, external_ref_hash
from dangol_cloud.web.customers import bp, origin_stores
from dangol_cloud.web.params import page_arg
from dangol_cloud.web.scope import clauses, customer_filter, store_filter

__all__ = ["PAGE", "index"]

PAGE = 50


@bp.route("/")
@login_required
def index():
    """GET /customers/?show=enrolled|pending|all&q=TEXT&page=N: customers with visit/purchase counts.

    Fast at any size: filtering, ordering (consented first, then newest) and paging happen in SQL, and only the
    50 rows shown are decrypted and counted. ``q`` finds a loyalty id exactly (through its keyed hash
    ``external_ref_hash``), a customer id by prefix, or a part of a name (only named customers — those who
    enrolled or gave consent — have a name to decrypt). Each row's last visit is read on the clock of the store it
    was at, as on the customer page, and its consent date on the clock of the store the customer is registered at
    (the enrolling door's; none: the chain's). One query finds every shown customer's visit count, latest visit and
    its store (window functions, SQLite and PostgreSQL alike)."""
    s = get_session()
    show = request.args.get("show", "enrolled")
    q = (request.args.get("q") or "").strip()[:120]
    where = []
    if show == "enrolled":
        where.append(or_(Customer.source == "edge", Customer.consent_at.is_not(None)))
    elif show == "pending":
        where.append(Customer.status == "pending")
    scope = customer_filter(s)
    if scope is not None:
        where.append(scope)
    if q:
        needle = q.casefold()
        named = [cid for cid, name in s.execute(select(Customer.id, Customer.display_name)
                                                .where(Customer.display_name.is_not(None), *where))
                 if name and needle in name.casefold()]
        matches = [Customer.external_ref_hash == external_ref_hash(s, q)]
        if re.fullmatch(r"[0-9a-f-]{4,36}", q.lower()):
            matches.append(Customer.id.like(q.lower() + "%"))
        if named:
            matches.append(Customer.id.in_(named))
        where.append(or_(*matches))
    total = s.scalar(select(func.count()).select_from(Customer).where(*where))
    page = page_arg()
    customers = s.scalars(select(Customer).where(*where)
                          .order_by(Customer.consent_at.is_(None), Customer.created_at.desc(), Customer.id)
                          .limit(PAGE).offset((page - 1) * PAGE)).all()
    ids = [c.id for c in customers]
    # counted at the staff user's stores only, as on the customer page (owners: every store)
    bought = dict(s.execute(select(Purchase.customer_id, func.count())
                            .where(Purchase.customer_id.in_(ids), *clauses(store_filter(Purchase.store_id)))
                            .group_by(Purchase.customer_id)).all()) if ids else {}
    visited = _latest_visits(s, ids)
    rows = [(c, bought.get(c.id, 0), *visited.get(c.id, (0, None, None))) for c in customers]
    return render_template("customers.html", rows=rows, show=show, q=q, page=page, total=total,
                           pages=max((total + PAGE - 1) // PAGE, 1), homes=origin_stores(s, ids))


def _latest_visits(s, ids: list[str]) -> dict[str, tuple]:
    """``{customer id: (visits, latest visit's ts, its store id)}`` of ``ids`` at the staff user's stores (owners:
    every store), in one query: each visit numbered newest first per customer, with the customer's count."""
    if not ids:
        return {}
    per_customer = {"partition_by": Visit.customer_id}
    ranked = (select(Visit.customer_id, Visit.ts, Visit.store_id, func.count().over(**per_customer).label("n"),
                     func.row_number().over(**per_customer, order_by=(Visit.ts.desc(), Visit.id.desc())).label("k"))
              .where(Visit.customer_id.in_(ids), *clauses(store_filter(Visit.store_id))).subquery())
    return {cid: (n, ts, store) for cid, n, ts, store in s.execute(
        select(ranked.c.customer_id, ranked.c.n, ranked.c.ts, ranked.c.store_id).where(ranked.c.k == 1))}
