"""Imported purchases keyed by an HMAC; erased loyalty ids remembered

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 05:00:00

**Keyed purchase keys.** From revision 0008 an imported purchase's idempotency key (``purchases.idempotency_key``,
in clear) was an *unkeyed* SHA-1 of its content — store, customer, item, product id, UTC time, quantity, amount,
occurrence. Amount and product id are the encrypted columns, and the key gave them away: trying plausible amounts
and a public barcode list against the other, clear, columns recovered them without the data key (15 of 15 real
Ta-Feng lines). Imports now key a line with an HMAC-SHA256 under a sub-key of the data key
(:func:`dangol_cloud.purchase_keys.purchase_key`, ``<format>:<64 hex>``), and this migration re-keys every stored
``<format>:<40 hex>`` key (POS API keys ``pos:…`` are left alone) from the stored purchase, its amount and product id
decrypted. A line keeps the occurrence it was imported with: it is read back from its SHA-1 key
(:func:`dangol_cloud.purchase_keys.rekeyed`), so a history line stored as occurrence 1 next to a store's occurrence 0
keeps 1, and re-importing any file imported before this revision inserts nothing.

How the migration gets the data key: as revisions 0003 and 0008, from the connection's dialect, where
``Database(url, data_key=…)`` attaches the keyring — every ``dangol-cloud`` command migrates at start with the
configured key (``DANGOL_DATA_KEY`` / credential). A database holding purchases and no key configured fails with a
DataKeyError naming ``DANGOL_DATA_KEY`` before anything is changed. Re-keying at first start in code or in a CLI step
instead would leave the leaking keys in place until someone ran it; here it happens in the upgrade's transaction.

**Erased loyalty ids.** A new table ``erased_refs`` (:class:`dangol_cloud.models.ErasedRef`) keeps the keyed hash
and the ciphertext of an erased customer's loyalty id, so an import or the POS API cannot bring them back
(:mod:`dangol_cloud.erased_refs`). Erasures before this revision deleted their loyalty ids: they cannot be added.

Downgrade drops ``erased_refs`` and puts the SHA-1 keys back (the older code finds only those), which needs the
data key again.
"""
import hashlib
import json
import re
from datetime import timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: Union[str, None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BATCH = 2000
SHA1_KEY = re.compile(r"^([A-Za-z0-9_.-]+):[0-9a-f]{40}$")
HMAC_KEY = re.compile(r"^([A-Za-z0-9_.-]+):[0-9a-f]{64}$")


def _text(content: tuple, occurrence: int) -> str:
    """A frozen copy of the hashed text of :mod:`dangol_cloud.purchase_keys` at this revision."""
    return json.dumps([*content, occurrence], separators=(",", ":"))


def sha1_key(prefix: str, content: tuple, occurrence: int) -> str:
    """The key of revisions 0008-0010 (unkeyed SHA-1)."""
    return f"{prefix}:{hashlib.sha1(_text(content, occurrence).encode('utf-8')).hexdigest()}"


def _hmac_key(ring):
    """The key from this revision on (HMAC under the data key's purchase-key sub-key)."""
    return lambda prefix, content, occurrence: f"{prefix}:{ring.purchase_hash(_text(content, occurrence))}"


def _keyring(bind):
    from dangol_cloud.crypto import keyring_of

    return keyring_of(bind.dialect)


def _open(ring, value, context: str):
    return None if value is None else ring.decrypt(value, context).decode("utf-8")


def _rekey(bind, pattern: re.Pattern, old_key, new_key, ring) -> None:
    """Re-key the stored imported purchases whose key matches ``pattern`` from ``old_key`` to ``new_key``."""
    from dangol_cloud.purchase_keys import rekeyed

    purchases = sa.table("purchases", sa.column("id", sa.Integer), sa.column("idempotency_key", sa.String),
                         sa.column("store_id", sa.String), sa.column("customer_id", sa.String),
                         sa.column("item_id", sa.String), sa.column("product_id", sa.Text),
                         sa.column("ts", sa.DateTime(timezone=True)), sa.column("quantity", sa.Float),
                         sa.column("amount", sa.Text))

    def rows():
        result = bind.execute(sa.select(purchases).order_by(purchases.c.id))
        while chunk := result.fetchmany(BATCH):
            for pid, key, store_id, customer_id, item_id, product, ts, quantity, amount in chunk:
                if pattern.match(key) is None:
                    continue
                amount = _open(ring, amount, "purchases.amount")
                ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
                yield pid, key, (store_id, customer_id, item_id, _open(ring, product, "purchases.product_id"),
                                 ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f"), float(quantity),
                                 None if amount is None else float(amount))

    updates = [{"pid": pid, "new_key": key} for pid, key in rekeyed(rows(), pattern, old_key, new_key).items()]
    stmt = (sa.update(purchases).where(purchases.c.id == sa.bindparam("pid"))
            .values(idempotency_key=sa.bindparam("new_key")))
    for start in range(0, len(updates), BATCH):
        bind.execute(stmt, updates[start:start + BATCH])


def _ring_if_purchases(bind):
    """The keyring when purchases exist (raises DataKeyError naming DANGOL_DATA_KEY without one), else None.
    Called before any DDL: SQLite's DDL is not transactional here."""
    if bind.execute(sa.text("SELECT 1 FROM purchases LIMIT 1")).first() is None:
        return None
    return _keyring(bind)


def upgrade() -> None:
    bind = op.get_bind()
    ring = _ring_if_purchases(bind)
    op.create_table(
        "erased_refs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ref_hash", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("erasure_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retention", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ref_hash", name="uq_erased_refs_ref_hash"),
    )
    if ring is not None:
        _rekey(bind, SHA1_KEY, sha1_key, _hmac_key(ring), ring)


def downgrade() -> None:
    bind = op.get_bind()
    ring = _ring_if_purchases(bind)
    if ring is not None:
        _rekey(bind, HMAC_KEY, _hmac_key(ring), sha1_key, ring)
    op.drop_table("erased_refs")
