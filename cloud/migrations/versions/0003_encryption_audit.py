"""encrypt personal fields at rest; lookup hash of external refs; erasure targets; audit log; sign-in failures

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 04:40:00

Personal columns become TEXT holding AES-GCM ciphertext (``dangol_cloud.crypto``); values already in the
database are encrypted here, in the migration's transaction, with the data key attached to the connection's
dialect (``Database(..., data_key=...)``). A database holding personal data and no data key configured
fails with a DataKeyError naming DANGOL_DATA_KEY, and nothing is changed.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BATCH = 2000
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _keyring(bind):
    from dangol_cloud.crypto import keyring_of

    return keyring_of(bind.dialect)


def _seal(ring, value, context: str):
    return None if value is None else ring.encrypt(str(value).encode("utf-8"), context)


def _encrypt_existing(bind) -> None:
    customers = sa.table("customers", sa.column("id", sa.String), sa.column("display_name", sa.Text),
                         sa.column("external_ref", sa.Text), sa.column("consent_by", sa.Text),
                         sa.column("external_ref_hash", sa.String))
    purchases = sa.table("purchases", sa.column("id", sa.Integer), sa.column("product_id", sa.Text),
                         sa.column("amount", sa.Text))
    rows = bind.execute(sa.select(customers.c.id, customers.c.display_name, customers.c.external_ref,
                                  customers.c.consent_by)).all()
    if rows:
        ring = _keyring(bind)
        updates = [{"cid": cid, "display_name": _seal(ring, name, "customers.display_name"),
                    "external_ref": _seal(ring, ref, "customers.external_ref"),
                    "external_ref_hash": None if ref is None else ring.lookup_hash(ref),
                    "consent_by": _seal(ring, by, "customers.consent_by")}
                   for cid, name, ref, by in rows]
        stmt = (sa.update(customers).where(customers.c.id == sa.bindparam("cid"))
                .values(display_name=sa.bindparam("display_name"), external_ref=sa.bindparam("external_ref"),
                        external_ref_hash=sa.bindparam("external_ref_hash"), consent_by=sa.bindparam("consent_by")))
        for start in range(0, len(updates), BATCH):
            bind.execute(stmt, updates[start:start + BATCH])
    result = bind.execute(sa.select(purchases.c.id, purchases.c.product_id, purchases.c.amount)
                          .where(sa.or_(purchases.c.product_id.is_not(None), purchases.c.amount.is_not(None))))
    stmt = (sa.update(purchases).where(purchases.c.id == sa.bindparam("pid"))
            .values(product_id=sa.bindparam("product_id"), amount=sa.bindparam("amount")))
    ring = None
    while chunk := result.fetchmany(BATCH):
        ring = ring or _keyring(bind)
        bind.execute(stmt, [
            {"pid": pid, "product_id": _seal(ring, product, "purchases.product_id"),
             "amount": _seal(ring, None if amount is None else repr(float(amount)), "purchases.amount")}
            for pid, product, amount in chunk])


def _scrub_enrolment_events(bind) -> None:
    """Stored enrolment events keep no name and no consent recorder (they live encrypted on the customer)."""
    events = sa.table("device_events", sa.column("event_id", sa.String), sa.column("kind", sa.String),
                      sa.column("payload", sa.JSON))
    for event_id, payload in bind.execute(sa.select(events.c.event_id, events.c.payload)
                                          .where(events.c.kind == "enrolment")).all():
        if not isinstance(payload, dict):
            continue
        payload = {**payload, "display_name": None}
        if isinstance(payload.get("consent"), dict):
            payload["consent"] = {**payload["consent"], "recorded_by": None}
        bind.execute(sa.update(events).where(events.c.event_id == event_id).values(payload=payload))


def upgrade() -> None:
    bind = op.get_bind()
    # Before any DDL (SQLite's DDL is not transactional here): personal data present needs the key.
    if any(bind.execute(sa.text(f"SELECT 1 FROM {t} LIMIT 1")).first() for t in ("customers", "purchases")):
        _keyring(bind)
    postgres = bind.dialect.name == "postgresql"
    with op.batch_alter_table("customers", naming_convention=NAMING) as batch:
        if postgres:
            batch.drop_constraint("customers_external_ref_key", type_="unique")
        else:
            batch.drop_constraint("uq_customers_external_ref", type_="unique")
        for name in ("display_name", "external_ref", "consent_by"):
            batch.alter_column(name, type_=sa.Text(), existing_nullable=True)
        batch.add_column(sa.Column("external_ref_hash", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_customers_external_ref_hash", ["external_ref_hash"])
    with op.batch_alter_table("purchases") as batch:
        batch.alter_column("product_id", type_=sa.Text(), existing_nullable=True)
        batch.alter_column("amount", type_=sa.Text(), existing_nullable=True, postgresql_using="amount::text")
    with op.batch_alter_table("erasures") as batch:
        batch.add_column(sa.Column("targets", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("last_published_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=254), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=True),
        sa.Column("erasure_id", sa.String(length=36), nullable=True),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_customer_id", "audit_log", ["customer_id"])
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email_sha256", sa.String(length=64), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_login_failures_key", "login_failures", ["email_sha256", "remote_addr", "at"])
    # erasures published before this revision: every device had its chance; treat them as complete
    op.execute("UPDATE erasures SET completed_at = published_at WHERE published_at IS NOT NULL")
    _encrypt_existing(bind)
    _scrub_enrolment_events(bind)


def downgrade() -> None:
    raise NotImplementedError("0003 encrypts personal data; restore a backup to go back")
