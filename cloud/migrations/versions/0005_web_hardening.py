"""web hardening: server-side sessions, sign-in throttling, staff store scope

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:25:00
"""
from typing import Sequence, Union

from alembic import op  # noqa: F401

revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
