"""Fold the dashboard's fanned-out product opinions back onto the menu item

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 03:00:00

Until this revision a like or dislike given on the dashboard's customer page was stored on the menu item *and* on
every POS product sold as it then. Those product rows outlived any later change: a "like" or "none" for the item
(e.g. through the store API) left them banning it, a product re-mapped to another item carried the ban there, and a
like counted once per product at training. Opinions are now stored on the item named only, and expanded through the
current mapping where they are used (:func:`dangol_cloud.menu_mapping.expand_dislikes`).

Which rows are folded (deleted): an opinion is recorded with ``by``: the dashboard user's e-mail, or
``store:<id>`` for the store API, which names one item per request. A ``pick_opinions`` row is deleted when

* its item is a POS product that is not on the menu as itself now (a ``product_mappings`` row mapping it to
  nothing or to another item), and
* ``by`` is set and is not a store (``store:%``): a product opinion the store API sent on its own is never lost, and
* the same customer has a row on a menu item (an item with no ``product_mappings`` row, or mapped to itself) with
  the same ``opinion``, the same ``at`` (the one time the dashboard wrote on all of them, to the microsecond) and the
  same ``by``: the row the product row mirrors.

Everything else is kept, also a mirror whose menu item is no longer on the menu or a product the owner has since put
on the menu as itself (both then name what the door shows; nothing is guessed). Downgrade keeps the data: the
product rows cannot be told apart again once folded (a dislike still covers them through the mapping).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: Union[str, None] = "0009"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    opinions = sa.table("pick_opinions", sa.column("customer_id", sa.String), sa.column("item_id", sa.String),
                        sa.column("opinion", sa.String), sa.column("at", sa.DateTime(timezone=True)),
                        sa.column("by", sa.String))
    mappings = sa.table("product_mappings", sa.column("product_id", sa.String), sa.column("menu_item_id", sa.String))
    lead = opinions.alias("mirror")

    def product(item_id, name: str):  # a POS product not on the menu as itself
        mapped = mappings.alias(name)
        return sa.exists().where(mapped.c.product_id == item_id,
                                 sa.or_(mapped.c.menu_item_id.is_(None), mapped.c.menu_item_id != mapped.c.product_id))

    mirrored = sa.exists().where(lead.c.customer_id == opinions.c.customer_id, lead.c.item_id != opinions.c.item_id,
                                 lead.c.opinion == opinions.c.opinion, lead.c.at == opinions.c.at,
                                 lead.c.by == opinions.c.by, ~product(lead.c.item_id, "mirror_mapped"))
    op.execute(sa.delete(opinions).where(opinions.c.by.is_not(None), ~opinions.c.by.like("store:%"),
                                         product(opinions.c.item_id, "mapped"), mirrored))


def downgrade() -> None:
    pass  # data only: folded rows are not re-created (see the docstring)
