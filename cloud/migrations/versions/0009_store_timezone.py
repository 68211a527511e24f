"""A store's own time zone

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 21:00:00

``store_settings.timezone``: the IANA zone of one store (NULL = the ``TIMEZONE`` setting), for a chain whose
stores are in different zones: naive sale times of that store's imports are read in it, training reads the hour
of its purchases in it, and its doors get it in ``catalogue/1`` (their day-part clock). Existing stores keep the
setting's zone (NULL), so nothing stored changes.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: Union[str, None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("store_settings") as batch:
        batch.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("store_settings") as batch:
        batch.drop_column("timezone")
