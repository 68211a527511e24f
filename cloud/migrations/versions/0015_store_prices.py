"""an item's own price at one store, in that store's currency

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 10:30:00

``store_prices``: a chain selling in several currencies (Seoul in won, Taipei in New Taiwan dollars) prices an
item per store. The catalogue's ``price`` stays the default, in the catalogue's currency; a store gets its own
price while its currency is the one the price was set in, else the default if it sells in the catalogue's
currency, else no price (:mod:`dangol_cloud.store_prices`). Nothing stored changes: the table starts empty.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: Union[str, None] = "0014"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "store_prices",
        sa.Column("item_id", sa.String(length=36), sa.ForeignKey("catalogue_items.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("store_id", sa.String(length=36), sa.ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_store_prices_store_id", "store_prices", ["store_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_store_prices_store_id", table_name="store_prices")
    op.drop_table("store_prices")
