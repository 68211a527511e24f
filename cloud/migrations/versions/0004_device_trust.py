"""device trust: customer origins, refusals per device, dead letters, erasures requested by devices

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:25:00

``customer_origins`` records the store (and device) that created each customer; it is filled here from the
stored enrolment events (the first enrolment of a customer names the device, hence the store).
``device_trust`` counts refused and dead-lettered messages per device; ``dead_letters`` keeps the newest of
them (no payload, only size and SHA-256); ``erasure_requests`` holds erasures a device asked for, which an
owner confirms or dismisses.

Times devices sent before the bounds existed (``9999-12-31`` made the dashboard's pages fail in time zones east
of UTC, year 1 west of it) are repaired: a visit's or event's ``ts`` outside [now − 3 years, now + 1 day] becomes
the time the cloud received the event, a device's ``status_at`` in the future is cleared, and a consent time in
the future becomes the customer's creation time.
"""
from datetime import datetime, timedelta, timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _backfill_origins(bind) -> None:
    events = sa.table("device_events", sa.column("device_id", sa.String), sa.column("kind", sa.String),
                      sa.column("payload", sa.JSON), sa.column("received_at", sa.DateTime(timezone=True)))
    devices = sa.table("devices", sa.column("id", sa.String), sa.column("store_id", sa.String))
    customers = sa.table("customers", sa.column("id", sa.String), sa.column("created_at", sa.DateTime(timezone=True)))
    origins = sa.table("customer_origins", sa.column("customer_id", sa.String), sa.column("store_id", sa.String),
                       sa.column("device_id", sa.String), sa.column("created_at", sa.DateTime(timezone=True)))
    stores = dict(bind.execute(sa.select(devices.c.id, devices.c.store_id)).all())
    existing = dict(bind.execute(sa.select(customers.c.id, customers.c.created_at)).all())
    rows: dict[str, dict] = {}
    query = (sa.select(events.c.device_id, events.c.payload).where(events.c.kind == "enrolment")
             .order_by(events.c.received_at))
    for device_id, payload in bind.execute(query):
        customer_id = payload.get("customer_id") if isinstance(payload, dict) else None
        if customer_id in existing and customer_id not in rows:
            rows[customer_id] = {"customer_id": customer_id, "store_id": stores.get(device_id),
                                 "device_id": device_id, "created_at": existing[customer_id]}
    if rows:
        bind.execute(sa.insert(origins), list(rows.values()))


def _repair_device_times(bind) -> None:
    now = datetime.now(timezone.utc)
    hi, lo = now + timedelta(days=1), now - timedelta(days=3 * 365)
    if bind.dialect.name == "sqlite":  # stored as naive UTC there
        hi, lo = hi.replace(tzinfo=None), lo.replace(tzinfo=None)
    ts_type = sa.DateTime(timezone=True)
    events = sa.table("device_events", sa.column("event_id", sa.String), sa.column("ts", ts_type),
                      sa.column("received_at", ts_type))
    visits = sa.table("visits", sa.column("event_id", sa.String), sa.column("ts", ts_type))
    devices = sa.table("devices", sa.column("status_at", ts_type))
    customers = sa.table("customers", sa.column("consent_at", ts_type), sa.column("created_at", ts_type))
    received = sa.select(events.c.received_at).where(events.c.event_id == visits.c.event_id).scalar_subquery()
    bind.execute(sa.update(visits).where(sa.or_(visits.c.ts > hi, visits.c.ts < lo),
                                         sa.exists().where(events.c.event_id == visits.c.event_id))
                 .values(ts=received))
    bind.execute(sa.update(events).where(sa.or_(events.c.ts > hi, events.c.ts < lo)).values(ts=events.c.received_at))
    bind.execute(sa.update(devices).where(devices.c.status_at > hi).values(status_at=None))
    bind.execute(sa.update(customers).where(customers.c.consent_at > hi).values(consent_at=customers.c.created_at))


def upgrade() -> None:
    op.create_table(
        "customer_origins",
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("store_id", sa.String(length=36), nullable=True),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_index("ix_customer_origins_store_id", "customer_origins", ["store_id"])
    op.create_table(
        "device_trust",
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("dead_letters", sa.Integer(), nullable=False),
        sa.Column("last_reason", sa.String(length=500), nullable=True),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"])
    op.create_index("ix_dead_letters_device_id", "dead_letters", ["device_id"])
    op.create_table(
        "erasure_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("decided_by", sa.String(length=254), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("erasure_id", sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_erasure_requests_device_id", "erasure_requests", ["device_id"])
    op.create_index("ix_erasure_requests_customer_id", "erasure_requests", ["customer_id"])
    _backfill_origins(op.get_bind())
    _repair_device_times(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_erasure_requests_customer_id", table_name="erasure_requests")
    op.drop_index("ix_erasure_requests_device_id", table_name="erasure_requests")
    op.drop_table("erasure_requests")
    op.drop_index("ix_dead_letters_device_id", table_name="dead_letters")
    op.drop_index("ix_dead_letters_received_at", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_table("device_trust")
    op.drop_index("ix_customer_origins_store_id", table_name="customer_origins")
    op.drop_table("customer_origins")
