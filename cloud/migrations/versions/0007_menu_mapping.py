"""POS products vs menu items: product → menu item mapping, menu settings

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:20:00

Purchase history names *products* (the POS's items: a Ta-Feng subclass code, a Complete Journey
``product_category``); the *menu* is what the owner publishes. ``product_mappings`` has one row per product
an import created: ``menu_item_id`` NULL = not on the menu yet, = ``product_id`` = the product is its own menu
item (chosen explicitly), another item's id = sold as that menu item. ``menu_settings`` holds dashboard
settings of the menu (``house_per_category``: how many items per category the door screen's house menu gets);
``store_settings`` a store's own currency (ISO 4217; NULL = the ``CURRENCY`` setting).

Existing databases: items an import made before this revision (name equal to the ref, bought only through an
import) become unmapped products, so they leave the door screen's menu at the next Publish.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

IMPORT_SOURCES = ("ta-feng", "completejourney", "csv")


def upgrade() -> None:
    op.create_table(
        "product_mappings",
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("menu_item_id", sa.String(length=36), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("mapped_by", sa.String(length=254), nullable=True),
        sa.Column("mapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["catalogue_items.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["menu_item_id"], ["catalogue_items.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("product_id"),
    )
    op.create_index("ix_product_mappings_menu_item_id", "product_mappings", ["menu_item_id"])
    op.create_table(
        "menu_settings",
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "store_settings",
        sa.Column("store_id", sa.String(length=36), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("store_id"),
    )
    sources = ", ".join(f"'{s}'" for s in IMPORT_SOURCES)
    op.execute(
        "INSERT INTO product_mappings (product_id, menu_item_id, source) "
        "SELECT c.id, NULL, 'import' FROM catalogue_items c WHERE c.name = c.ref "
        f"AND EXISTS (SELECT 1 FROM purchases p WHERE p.item_id = c.id AND p.source IN ({sources})) "
        f"AND NOT EXISTS (SELECT 1 FROM purchases p WHERE p.item_id = c.id AND p.source NOT IN ({sources}))"
    )


def downgrade() -> None:
    op.drop_table("store_settings")
    op.drop_table("menu_settings")
    op.drop_index("ix_product_mappings_menu_item_id", table_name="product_mappings")
    op.drop_table("product_mappings")
