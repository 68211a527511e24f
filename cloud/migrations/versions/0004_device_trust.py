"""device trust: refusals per device, dead letters

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:25:00
"""
from typing import Sequence, Union

from alembic import op  # noqa: F401

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
