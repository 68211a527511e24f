"""Data key rotation: re-encrypt every encrypted column and recompute the keyed hashes under a new key.

The keyed hashes are the loyalty-id lookup hashes (``customers.external_ref_hash`` and ``erased_refs.ref_hash``,
from the decrypted id, see :data:`LOOKUP_HASHES`) and imported purchases' idempotency keys (from each line's
decrypted content, its occurrence read back from the old key: :func:`dangol_cloud.purchase_keys.rekeyed`), so
that an import after the rotation still finds the loyalty ids, the erased ones and the lines already stored.

Run by ``dangol-cloud rotate-key --new-key-file PATH`` with the current key still configured
(``DANGOL_DATA_KEY`` / credential). Everything happens in one transaction: if anything fails (e.g. a
value that the current key cannot decrypt) nothing is changed and the old key stays valid. Afterwards
the operator replaces the configured key with the new one and restarts the service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa

from dangol_cloud.crypto import DataKeyError, EncryptedText, Keyring
from dangol_cloud.db import Database
from dangol_cloud.models import Base
from dangol_cloud.models_base import UTCDateTime
from dangol_cloud.purchase_keys import IMPORT_KEY, content_of, keyed, rekeyed

__all__ = ["RotationReport", "encrypted_columns", "rotate_key"]

log = logging.getLogger(__name__)
BATCH = 2000
#: ``{table: (encrypted column, its keyed lookup-hash column)}``: the hash is recomputed from the decrypted value.
LOOKUP_HASHES = {"customers": ("external_ref", "external_ref_hash"), "erased_refs": ("ref", "ref_hash")}


@dataclass
class RotationReport:
    """Values re-encrypted per ``table.column``, and the old/new key ids (not secret)."""

    old_key_id: str
    new_key_id: str
    values: dict[str, int]


def encrypted_columns() -> dict[str, list[tuple[str, str]]]:
    """``{table: [(column, AAD context), ...]}`` of every :class:`EncryptedText` column in the model."""
    found: dict[str, list[tuple[str, str]]] = {}
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, EncryptedText):
                found.setdefault(table.name, []).append((column.name, column.type.context))
    return found


def rotate_key(db: Database, new_key: bytes, *, actor: str = "cli") -> RotationReport:
    """Re-encrypt all encrypted values of ``db`` (read with its current key) under ``new_key`` and recompute every
    keyed hash under it (:data:`LOOKUP_HASHES`; imported purchases' idempotency keys), in one transaction.

    Raises:
        DataKeyError: no current key, the new key equals the current one, or a value cannot be decrypted
            (nothing is changed in any of these cases).
    """
    from dangol_cloud.erasure import audit

    old = db.keyring
    if old is None:
        raise DataKeyError("rotate-key needs the current key in DANGOL_DATA_KEY (or the dangol-data-key credential)")
    new = Keyring(new_key)
    if new.key_id == old.key_id:
        raise DataKeyError("--new-key-file holds the key that is already configured; generate a new one "
                           "with `dangol-cloud gen-key`")
    counts: dict[str, int] = {}
    with db.transaction() as session:
        conn = session.connection()
        for table_name, columns in encrypted_columns().items():
            table = Base.metadata.tables[table_name]
            pk = [c.name for c in table.primary_key.columns]
            raw = sa.table(table_name, *(sa.column(n) for n in pk), *(sa.column(n, sa.Text) for n, _ in columns))
            rows = conn.execute(sa.select(*(raw.c[n] for n in pk), *(raw.c[n] for n, _ in columns))).all()
            updates = []
            for row in rows:
                values = {}
                for (name, context), value in zip(columns, row[len(pk):]):
                    if value is not None:
                        values[name] = new.encrypt(old.decrypt(value, context), context)
                        counts[f"{table_name}.{name}"] = counts.get(f"{table_name}.{name}", 0) + 1
                    else:
                        values[name] = None
                hashed = LOOKUP_HASHES.get(table_name)
                if hashed is not None:
                    ref = values.get(hashed[0])
                    values[hashed[1]] = None if ref is None else new.lookup_hash(
                        new.decrypt(ref, f"{table_name}.{hashed[0]}").decode("utf-8"))
                updates.append({**{f"k_{n}": v for n, v in zip(pk, row[:len(pk)])}, **values})
            if not updates:
                continue
            names = [n for n, _ in columns] + ([LOOKUP_HASHES[table_name][1]] if table_name in LOOKUP_HASHES else [])
            plain = sa.table(table_name, *(sa.column(n) for n in pk), *(sa.column(n) for n in names))
            stmt = sa.update(plain).values({n: sa.bindparam(n) for n in names})
            for n in pk:
                stmt = stmt.where(plain.c[n] == sa.bindparam(f"k_{n}"))
            for start in range(0, len(updates), BATCH):
                conn.execute(stmt, updates[start:start + BATCH])
        counts["purchases.idempotency_key"] = _rekey_purchases(conn, old, new)
        audit(session, actor, "key-rotated", detail=f"data key {old.key_id} -> {new.key_id}; "
              + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    log.info("data key rotated %s -> %s (%s)", old.key_id, new.key_id, counts)
    return RotationReport(old_key_id=old.key_id, new_key_id=new.key_id, values=counts)


def _rekey_purchases(conn, old: Keyring, new: Keyring) -> int:
    """Recompute the idempotency key of every imported purchase under ``new`` (after its amount and product id were
    re-encrypted under ``new``), its occurrence read back from its key under ``old``. Returns how many changed."""
    purchases = sa.table("purchases", sa.column("id", sa.Integer), sa.column("idempotency_key", sa.String),
                         sa.column("store_id", sa.String), sa.column("customer_id", sa.String),
                         sa.column("item_id", sa.String), sa.column("product_id", sa.Text),
                         sa.column("ts", UTCDateTime()), sa.column("quantity", sa.Float), sa.column("amount", sa.Text))

    def opened(value, context: str):
        return None if value is None else new.decrypt(value, context).decode("utf-8")

    def rows():
        result = conn.execute(sa.select(purchases).order_by(purchases.c.id))
        while chunk := result.fetchmany(BATCH):
            for pid, key, store_id, customer_id, item_id, product, ts, quantity, amount in chunk:
                if IMPORT_KEY.match(key) is None:  # a POS API line: keyed by its store's Idempotency-Key
                    continue
                amount = opened(amount, "purchases.amount")
                yield pid, key, content_of(store_id=store_id, customer_id=customer_id, item_id=item_id,
                                           product_id=opened(product, "purchases.product_id"), ts=ts,
                                           quantity=quantity, amount=None if amount is None else float(amount))

    updates = [{"pid": pid, "new_key": key} for pid, key in rekeyed(rows(), IMPORT_KEY, keyed(old), keyed(new)).items()]
    stmt = (sa.update(purchases).where(purchases.c.id == sa.bindparam("pid"))
            .values(idempotency_key=sa.bindparam("new_key")))
    for start in range(0, len(updates), BATCH):
        conn.execute(stmt, updates[start:start + BATCH])
    return len(updates)
