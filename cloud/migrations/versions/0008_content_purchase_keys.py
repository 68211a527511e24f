"""Imported purchases keyed by content, not line number

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 15:00:00

Before this revision an imported purchase's idempotency key (``purchases.idempotency_key``, unique) hashed the
row's *line number* with its content, so a newer POS export holding the earlier sales at other line numbers
stored them a second time. Imports now key a purchase on its content and its occurrence among identical rows of
the file (:func:`dangol_cloud.ingest.purchase_key`).

Why re-key rather than let old and new keys coexist: the key is stored, and a key scheme that cannot find the
old rows would import every earlier file once more (the old keys need the line numbers, which are not stored;
checking both schemes would need the line numbers too). So every stored import key (``<format>:<40 hex>``; POS
API keys ``pos:<store>:<key>:<n>`` and others are left alone) is recomputed here from the stored purchase —
store, customer, item, product id and amount (decrypted with the data key), UTC time, quantity — numbering
identical purchases of one format 0, 1, 2, … in id order as their occurrences. Re-importing a file imported
before this revision then inserts nothing, and an overlapping newer export only its new sales.

Purchases an earlier overlapping import already doubled stay (they cannot be told from a file that genuinely
lists a line twice); they become occurrences 1, 2, … and are never doubled again.

Needs the data key when imported purchases exist (like 0003). Downgrade leaves the keys as they are (the line
numbers are gone): imports by the older code would key the same rows differently.
"""
import hashlib
import json
import re
from datetime import timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: Union[str, None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BATCH = 2000
IMPORT_KEY = re.compile(r"^([A-Za-z0-9_.-]+):[0-9a-f]{40}$")


def purchase_key(prefix, *, store_id, customer_id, item_id, product_id, ts, quantity, amount, occurrence=0) -> str:
    """A frozen copy of :func:`dangol_cloud.ingest.purchase_key` at this revision (``ts`` aware)."""
    content = json.dumps([store_id, customer_id, item_id, product_id,
                          ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f"), float(quantity),
                          None if amount is None else float(amount), occurrence], separators=(",", ":"))
    return f"{prefix}:{hashlib.sha1(content.encode('utf-8')).hexdigest()}"


def _keyring(bind):
    from dangol_cloud.crypto import keyring_of

    return keyring_of(bind.dialect)


def _open(ring, value, context: str):
    return None if value is None else ring.decrypt(value, context).decode("utf-8")


def upgrade() -> None:
    bind = op.get_bind()
    purchases = sa.table("purchases", sa.column("id", sa.Integer), sa.column("idempotency_key", sa.String),
                         sa.column("store_id", sa.String), sa.column("customer_id", sa.String),
                         sa.column("item_id", sa.String), sa.column("product_id", sa.Text),
                         sa.column("ts", sa.DateTime(timezone=True)), sa.column("quantity", sa.Float),
                         sa.column("amount", sa.Text))
    result = bind.execute(sa.select(purchases.c.id, purchases.c.idempotency_key, purchases.c.store_id,
                                    purchases.c.customer_id, purchases.c.item_id, purchases.c.product_id,
                                    purchases.c.ts, purchases.c.quantity, purchases.c.amount)
                          .order_by(purchases.c.id))
    ring = None
    occurrences: dict[str, int] = {}
    updates: list[dict] = []
    while chunk := result.fetchmany(BATCH):
        for pid, key, store_id, customer_id, item_id, product, ts, quantity, amount in chunk:
            match = IMPORT_KEY.match(key)
            if match is None:
                continue
            ring = ring or _keyring(bind)
            amount = _open(ring, amount, "purchases.amount")
            values = {"store_id": store_id, "customer_id": customer_id, "item_id": item_id,
                      "product_id": _open(ring, product, "purchases.product_id"),
                      "ts": ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc), "quantity": quantity,
                      "amount": None if amount is None else float(amount)}
            first = purchase_key(match.group(1), **values)
            seen = occurrences.get(first, 0)
            occurrences[first] = seen + 1
            updates.append({"pid": pid, "new_key": first if seen == 0 else
                            purchase_key(match.group(1), **values, occurrence=seen)})
    stmt = (sa.update(purchases).where(purchases.c.id == sa.bindparam("pid"))
            .values(idempotency_key=sa.bindparam("new_key")))
    for start in range(0, len(updates), BATCH):
        bind.execute(stmt, updates[start:start + BATCH])


def downgrade() -> None:
    pass  # the line numbers of the old keys are not stored (see the module docstring)
