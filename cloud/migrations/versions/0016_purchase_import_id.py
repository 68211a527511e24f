"""purchase imports: the dashboard import that wrote each line, so an import into the wrong store can be undone

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 11:00:00

An upload into the wrong store could not be taken back: nothing said which lines an upload wrote, and "Remove
store" refused a store holding sales. ``purchase_imports`` records each dashboard upload (when, who, the files, the
store, the lines), ``purchases.import_id`` the upload that wrote a line and ``purchases.filed_import_id`` the upload
that filed a store-less (history) line under its store; "Undo this import" (:mod:`dangol_cloud.import_undo`) removes
exactly that upload's lines and returns the history lines it filed. Lines imported before this revision have
neither (NULL): their uploads cannot be undone. Downgrade drops the columns and the table.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: Union[str, None] = "0015"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "purchase_imports",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("started_by", sa.String(length=254), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("fmt", sa.String(length=32), nullable=False),
        sa.Column("customer_source", sa.String(length=10), nullable=False),
        sa.Column("store_id", sa.String(length=36), nullable=True),
        sa.Column("store_name", sa.String(length=120), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("filed", sa.Integer(), nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_by", sa.String(length=254), nullable=True),
        sa.Column("undone_lines", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_purchase_imports_finished_at", "purchase_imports", ["finished_at"], unique=False)
    with op.batch_alter_table("purchases") as batch:
        batch.add_column(sa.Column("import_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("filed_import_id", sa.String(length=32), nullable=True))
        batch.create_index("ix_purchases_import_id", ["import_id"], unique=False)
        batch.create_index("ix_purchases_filed_import_id", ["filed_import_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.drop_index("ix_purchases_filed_import_id")
        batch.drop_index("ix_purchases_import_id")
        batch.drop_column("filed_import_id")
        batch.drop_column("import_id")
    op.drop_index("ix_purchase_imports_finished_at", table_name="purchase_imports")
    op.drop_table("purchase_imports")
