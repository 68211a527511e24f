"""index purchases by time (dashboard lists and 7-day counts)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:05:00
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0002"
down_revision: Union[str, None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_purchases_ts", "purchases", ["ts"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_purchases_ts", table_name="purchases")
