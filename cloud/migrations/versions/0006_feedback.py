"""recommender feedback: shown picks, likes and dislikes, customer segment

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:25:00
"""
from typing import Sequence, Union

from alembic import op  # noqa: F401

revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
