"""recommender feedback: shown picks, likes and dislikes, customer segment

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:25:00

``pick_opinions`` holds each customer's latest like/dislike per item; ``pick_credits`` one row per purchase
line that bought a pick shown at the visit before it ("shown pick bought"); ``customer_segments`` the
age group and area an owner recorded for a customer (cold start); ``menu_dayparts`` a known customer's
picks per day-part (breakfast, lunch, afternoon, evening).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "pick_opinions",
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("item_id", sa.String(length=36), nullable=False),
        sa.Column("opinion", sa.String(length=8), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(length=254), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["item_id"], ["catalogue_items.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("customer_id", "item_id"),
    )
    op.create_table(
        "pick_credits",
        sa.Column("purchase_id", sa.Integer(), nullable=False),
        sa.Column("visit_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("item_id", sa.String(length=36), nullable=False),
        sa.Column("shown_rank", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["purchase_id"], ["purchases.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["visit_id"], ["visits.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["item_id"], ["catalogue_items.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("purchase_id"),
    )
    op.create_index("ix_pick_credits_visit_id", "pick_credits", ["visit_id"])
    op.create_index("ix_pick_credits_customer_id", "pick_credits", ["customer_id"])
    op.create_table(
        "customer_segments",
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("age_group", sa.String(length=20), nullable=True),
        sa.Column("area", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_table(
        "menu_dayparts",
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("dayparts", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version"], ["model_versions.version"]),
        sa.PrimaryKeyConstraint("customer_id"),
    )


def downgrade() -> None:
    op.drop_table("menu_dayparts")
    op.drop_table("customer_segments")
    op.drop_index("ix_pick_credits_customer_id", table_name="pick_credits")
    op.drop_index("ix_pick_credits_visit_id", table_name="pick_credits")
    op.drop_table("pick_credits")
    op.drop_table("pick_opinions")
