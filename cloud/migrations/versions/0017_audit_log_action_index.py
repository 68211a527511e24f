"""index the audit log by (action, at): the owner's home page finds each background run's newest entry at once

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 14:00:00

The owner's "Needs attention" card (:func:`dangol_cloud.web.home.background_warnings`) asks for the newest audit
entry of each background-run action (:data:`dangol_cloud.background.RUN_ACTIONS`) on every view. With only the
``at`` index each lookup walked the log backwards from the newest entry until one of that action turned up — the
whole log when there is none (a healthy chain never has a ``retention-failed``): ~0.8 s per lookup at a million
entries. With this index each lookup is one probe (the newest ``at`` of that action).
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0017"
down_revision: Union[str, None] = "0016"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_audit_log_action_at", "audit_log", ["action", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_log_action_at", table_name="audit_log")
