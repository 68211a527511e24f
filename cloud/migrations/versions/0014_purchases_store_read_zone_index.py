"""index purchases by (store, zone read in): the no-op re-time check is two index probes

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 10:00:00

Every start, import, training run and store zone change calls
:func:`dangol_cloud.sale_zones.retime_naive_sales`, which used to UPDATE and then group every purchase line to find
the ones read in another zone than their store's now — a full scan of the history each time, even when nothing
moved (the usual case). With this index :func:`dangol_cloud.sale_zones.pending_stores` answers "nothing to move"
with two range probes per zone in use and no write; it also makes a store's count of naive lines (the Stores
page's zone change) an index range.
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0014"
down_revision: Union[str, None] = "0013"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_purchases_store_read_zone", "purchases", ["store_id", "read_zone"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_purchases_store_read_zone", table_name="purchases")
