"""An erased loyalty id allowed again keeps its cut-off; a retention erasure records its retention period; product
dislikes reversed on their menu item dropped

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 06:30:00

**Allowed again.** Until this revision the Privacy page's "Allow again" deleted the ``erased_refs`` row, so the next
upload of the shop's unchanged cumulative export brought back every erased sale under a new customer, although the
page promised only the sales "from now on". ``erased_refs.allowed_from`` (NULL: not allowed again) now records when
the owner allowed the loyalty id again; only its sales from then on are imported and recorded
(:mod:`dangol_cloud.erased_refs`). Loyalty ids allowed again before this revision were deleted: nothing keeps their
old sales out any more, and nothing here can bring the rows back.

**Retention period.** ``erasures.kept_before``: a retention erasure's start of the retention period of its run (its
time minus ``RETENTION_DAYS``). A sale of the customer from then on — in a shop export not imported when they were
erased — still comes in, as a new customer; before this revision every sale before the erasure stayed out, and so
do those of the retention erasures made before it (the column is NULL: the erasure's own time is the cut-off).

**Reversed product dislikes (a repair of 0010).** Revision 0010 folded the dashboard's fanned-out product rows back
onto the menu item only where the menu item's row still mirrored them (same opinion, time and user). Where the
store API had changed the menu item's opinion since — ``like`` (the row rewritten, later) or ``none`` (the row
deleted) — the old code left the product rows alone, and they survived 0010: a product dislike rules its menu item
out, so the item the customer liked (or forgot) stayed banned. This revision deletes a ``pick_opinions`` row when

* it is a ``dislike`` written by the dashboard (``by`` set and not ``store:%``: the store API's own rows are kept),
* on a POS product sold as another menu item M now (``product_mappings.menu_item_id`` set, not the product
  itself), mapped so already when the row was written (``mapped_at`` NULL or not after the row's ``at``: a product
  put under M later was no mirror of M), and
* the same customer's row on M is later than it (the opinion changed on M alone), or there is no row on M and the
  row is a mirror by its signature: the product was sold as M when it was written (``mapped_at`` set), or, with
  ``mapped_at`` unknown (NULL), another product of M has a dislike of the same customer, time and user (the
  fan-out wrote every product of M at once). A lone product dislike of unknown history is kept, as 0010 kept it.

A later row on M that is itself a dislike loses nothing: a dislike of M rules out every product sold as M.
Downgrade drops ``erasures.kept_before`` and ``erased_refs.allowed_from`` (the older code deletes a row allowed again: such rows are deleted
too, as that code would have); deleted opinion rows are not re-created.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: Union[str, None] = "0011"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BATCH = 500


def _reversed_dislikes(bind) -> list[tuple[str, str]]:
    """``(customer_id, item_id)`` of the product dislike rows to delete (the module docstring's rule)."""
    opinions = sa.table("pick_opinions", sa.column("customer_id", sa.String), sa.column("item_id", sa.String),
                        sa.column("opinion", sa.String), sa.column("at", sa.DateTime(timezone=True)),
                        sa.column("by", sa.String))
    mappings = sa.table("product_mappings", sa.column("product_id", sa.String),
                        sa.column("menu_item_id", sa.String), sa.column("mapped_at", sa.DateTime(timezone=True)))
    row, mapped, lead = opinions.alias("row"), mappings.alias("mapped"), opinions.alias("lead")
    sibling, sibling_mapped = opinions.alias("sibling"), mappings.alias("sibling_mapped")
    on_m = sa.and_(lead.c.customer_id == row.c.customer_id, lead.c.item_id == mapped.c.menu_item_id)
    fanned_out = sa.exists().where(
        sibling.c.customer_id == row.c.customer_id, sibling.c.item_id != row.c.item_id,
        sibling.c.opinion == "dislike", sibling.c.at == row.c.at, sibling.c.by == row.c.by,
        sibling_mapped.c.product_id == sibling.c.item_id,
        sibling_mapped.c.menu_item_id == mapped.c.menu_item_id)
    query = (sa.select(row.c.customer_id, row.c.item_id)
             .join(mapped, mapped.c.product_id == row.c.item_id)
             .where(row.c.opinion == "dislike", row.c.by.is_not(None), ~row.c.by.like("store:%"),
                    mapped.c.menu_item_id.is_not(None), mapped.c.menu_item_id != mapped.c.product_id,
                    sa.or_(mapped.c.mapped_at.is_(None), mapped.c.mapped_at <= row.c.at),
                    sa.or_(sa.exists().where(on_m, lead.c.at > row.c.at),
                           sa.and_(~sa.exists().where(on_m),
                                   sa.or_(mapped.c.mapped_at.is_not(None), fanned_out)))))
    return [(customer, item) for customer, item in bind.execute(query)]


def upgrade() -> None:
    bind = op.get_bind()
    doomed = _reversed_dislikes(bind)  # read in full before any row goes: a deleted sibling still counts
    opinions = sa.table("pick_opinions", sa.column("customer_id", sa.String), sa.column("item_id", sa.String))
    stmt = sa.delete(opinions).where(opinions.c.customer_id == sa.bindparam("c"),
                                     opinions.c.item_id == sa.bindparam("i"))
    for start in range(0, len(doomed), BATCH):
        bind.execute(stmt, [{"c": c, "i": i} for c, i in doomed[start:start + BATCH]])
    with op.batch_alter_table("erased_refs") as batch:
        batch.add_column(sa.Column("allowed_from", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("erasures") as batch:
        batch.add_column(sa.Column("kept_before", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("erasures") as batch:
        batch.drop_column("kept_before")
    op.execute("DELETE FROM erased_refs WHERE allowed_from IS NOT NULL")
    with op.batch_alter_table("erased_refs") as batch:
        batch.drop_column("allowed_from")
