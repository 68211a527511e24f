"""The zone an imported line's naive sale time was read in

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 09:00:00

A file's naive sale times are read in the store's own zone or else in the ``TIMEZONE`` setting and stored in UTC,
and an imported line's idempotency key hashes that UTC time. Nothing recorded the zone: after the owner changed
``TIMEZONE`` (typically in the first hour: import, notice the hours are off, set the zone) a re-import of the same
export read every naive line at another UTC time, under another key, and stored the whole history a second time.
``purchases.read_zone`` (:mod:`dangol_cloud.sale_zones`) now records it for each imported line whose file time had no
offset (NULL: the time came with its offset — the POS API, Complete Journey's UTC times, a CSV time with an
offset); when the zone of its store changes, the line is moved to the same wall-clock time in the new zone and
re-keyed, so a re-import adds nothing.

Lines imported before this revision: the file is gone, so which ones had an offset is not known. Complete Journey
lines (``source`` ``completejourney``: marked UTC by the importer) and POS lines (``pos``) are left NULL; every other
imported line is taken as naive — a CSV line whose file gave an offset would be moved by a later zone change, and a
re-import would then store it once more. A line of a store with its own zone was read in it (the Stores page refused
to change the zone of a store holding imports), so it gets that zone. Any other line was read in the ``TIMEZONE`` of
the day, which a migration cannot know: it gets the mark ``TIMEZONE``
(:data:`dangol_cloud.sale_zones.SETTING_AT_IMPORT`), and the next import or zone change takes it as read in the
zone its store reads naive times in then. A ``TIMEZONE`` changed *before* this revision and not yet followed by an
import is not noticed. Downgrade drops the column.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: Union[str, None] = "0012"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

#: Frozen copy of :data:`dangol_cloud.sale_zones.SETTING_AT_IMPORT`.
SETTING_AT_IMPORT = "TIMEZONE"


def upgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.add_column(sa.Column("read_zone", sa.String(length=64), nullable=True))
    purchases = sa.table("purchases", sa.column("store_id", sa.String), sa.column("source", sa.String),
                         sa.column("read_zone", sa.String))
    settings = sa.table("store_settings", sa.column("store_id", sa.String), sa.column("timezone", sa.String))
    own_zone = (sa.select(settings.c.timezone).where(settings.c.store_id == purchases.c.store_id)
                .scalar_subquery())
    op.get_bind().execute(sa.update(purchases).where(purchases.c.source.not_in(["pos", "completejourney"]))
                          .values(read_zone=sa.func.coalesce(own_zone, SETTING_AT_IMPORT)))


def downgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.drop_column("read_zone")
