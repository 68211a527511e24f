"""The local face gallery: customers and their templates in SQLite (sqlite-utils, WAL), and 1:N search.

Tables:

* ``customers``: ``id`` (UUID text), ``display_name``, ``status`` (``pending``/``active``),
  ``consent`` (JSON: who recorded it, when, text version; NULL while pending), ``short_code``
  (pending enrolments), ``created_at``, ``updated_at``, ``expires_at`` (ISO 8601 UTC).
* ``templates``: ``id``, ``customer_id``, ``embedding`` (512 little-endian float32 = 2048 bytes),
  ``quality`` (0–1), ``model_sha256`` (the embedder that made it), ``created_at``.

Names, embeddings and enrolment photos are stored sealed with AES-256-GCM (:mod:`dangol_edge.crypto`);
the key comes from the environment or a systemd credential, never from this file.

Only templates of *active* customers made by the *current* model are searched: a template from a
different model is never mixed in silently (:attr:`Gallery.stale_templates` reports them, and the
customer must be re-enrolled). Unknown faces are never stored.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from .crypto import FieldCipher, GalleryKeyError
from .embed import EMBEDDING_DIM
from .sqlite import SQLiteFile, connect

log = logging.getLogger(__name__)


class UnknownCustomer(KeyError):
    """No customer with this id; ``str()`` names the id."""

    def __str__(self) -> str:
        return f"no customer with id {self.args[0]!r}"


class GalleryError(RuntimeError):
    """The gallery file cannot be opened or written; the message names the file."""


def utcnow() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Customer:
    """A gallery customer (no embeddings; see :meth:`Gallery.templates`)."""

    id: str
    display_name: str
    status: str
    consent: dict | None
    short_code: str | None
    created_at: str
    updated_at: str
    expires_at: str | None
    templates: int = 0

    @property
    def first_name(self) -> str:
        """First word of the display name (what the welcome screen shows)."""
        return self.display_name.split()[0] if self.display_name.strip() else ""


@dataclass(frozen=True)
class Match:
    """Result of a 1:N search for one probe.

    Attributes:
        customer_id: best customer, or None if the gallery is empty.
        score: cosine similarity to that customer's best template.
        second: best score of any *other* customer (-1 if none).
        accepted: ``score >= threshold and score - second >= margin``.
    """

    customer_id: str | None
    score: float
    second: float
    accepted: bool


class Gallery(SQLiteFile):
    """Customers and templates in one SQLite file, plus an in-memory matrix for 1:N search.

    Args:
        path: the SQLite file (created on :meth:`open`, with its folder).
        model_sha256: sha256 of the embedder in use; only its templates are searched.
        cipher: seals names and templates; default :meth:`FieldCipher.from_environment` at :meth:`open`
            (raises :class:`~dangol_edge.crypto.GalleryKeyError` when no key is configured).

    Thread-safe: one connection guarded by a lock (the daemon's recognition and web threads share it).
    """

    def __init__(self, path: str | Path, model_sha256: str, cipher: FieldCipher | None = None):
        super().__init__(path)
        self.model_sha256 = model_sha256
        self.cipher = cipher
        self._matrix: np.ndarray | None = None
        self._owners: np.ndarray | None = None
        self._owner_ids: list[str] = []
        self._coarse: np.ndarray | None = None
        self._basis: np.ndarray | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def open(self) -> "Gallery":
        """Open or create the database (WAL journal, foreign keys on).

        Raises:
            GalleryError: the file or folder cannot be created, or the file is not a database.
        """
        if self._db is not None:
            return self
        if self.cipher is None:
            self.cipher = FieldCipher.from_environment()
        try:
            db = connect(self.path)
            self._create(db)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise GalleryError(f"{self.path}: cannot open gallery: {exc}") from exc
        self._db = db
        return self

    @staticmethod
    def _create(db: sqlite_utils.Database) -> None:
        if "customers" not in db.table_names():
            db["customers"].create(
                {"id": str, "display_name": str, "status": str, "consent": str, "short_code": str,
                 "created_at": str, "updated_at": str, "expires_at": str},
                pk="id", not_null={"display_name", "status", "created_at", "updated_at"},
            )
            db["customers"].create_index(["status"])
        if "last_seen_at" not in db["customers"].columns_dict:
            db["customers"].add_column("last_seen_at", str)
        if "templates" not in db.table_names():
            db["templates"].create(
                {"id": int, "customer_id": str, "embedding": bytes, "quality": float,
                 "model_sha256": str, "created_at": str, "photo": bytes},
                pk="id", foreign_keys=[("customer_id", "customers", "id")],
                not_null={"customer_id", "embedding", "model_sha256"},
            )
            db["templates"].create_index(["customer_id"])

    # --- writes ------------------------------------------------------------------------------------
    def enroll(self, display_name: str, embeddings: np.ndarray, qualities: list[float] | None = None, *,
               status: str = "active", consent: dict | None = None, pending_ttl_s: float | None = None,
               photos: list[bytes] | None = None, customer_id: str | None = None) -> Customer:
        """Create a customer with its templates in one transaction (all or nothing).

        Args:
            display_name: the name shown on the welcome screen (non-empty).
            embeddings: ``(K, 512) float32`` unit vectors made by the current model.
            qualities: K values in [0, 1]; default 1.0.
            status: ``active`` or ``pending`` (pending gets a 4-digit ``short_code`` and expires after
                ``pending_ttl_s`` seconds).
            consent: the consent record for an active customer.
            photos: optional encoded crops (only when enrolment photos are enabled).
            customer_id: a UUID to use (the customer's id in the cloud); default a new UUID4.
        Raises:
            ValueError: empty name, wrong embedding shape, an unknown status, or an id already in use.
        """
        name = display_name.strip()
        if not name and status == "active":
            raise ValueError("display name must not be empty")
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != EMBEDDING_DIM or len(emb) == 0:
            raise ValueError(f"expected (K, {EMBEDDING_DIM}) embeddings, got {emb.shape}")
        if status not in ("active", "pending"):
            raise ValueError(f"unknown status {status!r}")
        now = datetime.now(timezone.utc)
        cid = customer_id or str(uuid.uuid4())
        self.open()
        row: dict[str, Any] = {
            "id": cid, "display_name": self._seal_name(cid, name), "status": status,
            "consent": json.dumps(consent) if consent else None,
            "short_code": f"{secrets.randbelow(10000):04d}" if status == "pending" else None,
            "created_at": now.isoformat(timespec="seconds"), "updated_at": now.isoformat(timespec="seconds"),
            "expires_at": (now + timedelta(seconds=pending_ttl_s)).isoformat(timespec="seconds")
            if status == "pending" and pending_ttl_s else None,
        }
        q = qualities or [1.0] * len(emb)
        with self._lock, self.db.conn:  # one transaction
            self.db.execute("BEGIN IMMEDIATE")
            if self.db.execute("SELECT 1 FROM customers WHERE id = ?", [row["id"]]).fetchone():
                self.db.execute("ROLLBACK")
                raise ValueError(f"customer id {row['id']} is already enrolled")
            self.db["customers"].insert(row)
            self.db["templates"].insert_all(
                {"customer_id": row["id"],
                 "embedding": self.cipher.seal(e.astype("<f4").tobytes(), f"templates.embedding:{cid}"),
                 "quality": float(qq), "model_sha256": self.model_sha256, "created_at": row["created_at"],
                 "photo": self.cipher.seal(photos[i], f"templates.photo:{cid}") if photos else None}
                for i, (e, qq) in enumerate(zip(emb, q))
            )
        self._invalidate()
        return self.customer(row["id"])

    def activate(self, customer_id: str, display_name: str, consent: dict) -> Customer:
        """Record consent and a name for a pending customer, making it active (and searchable).

        Raises:
            UnknownCustomer: no such id.  ValueError: empty name or consent.
        """
        if not display_name.strip() or not consent:
            raise ValueError("a name and a consent record are required to activate a customer")
        self.customer(customer_id)
        with self._lock:
            self.db["customers"].update(customer_id, {
                "display_name": self._seal_name(customer_id, display_name.strip()), "status": "active", "consent": json.dumps(consent),
                "short_code": None, "expires_at": None, "updated_at": utcnow()})
        self._invalidate()
        return self.customer(customer_id)

    def delete(self, customer_id: str) -> None:
        """Erase a customer and all their templates (one transaction).

        Raises:
            UnknownCustomer: no such id.
        """
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            if not self.db.execute("SELECT 1 FROM customers WHERE id = ?", [customer_id]).fetchone():
                self.db.execute("ROLLBACK")
                raise UnknownCustomer(customer_id)
            self.db.execute("DELETE FROM templates WHERE customer_id = ?", [customer_id])
            self.db.execute("DELETE FROM customers WHERE id = ?", [customer_id])
        self._invalidate()

    def touch(self, customer_id: str, now: datetime | None = None) -> None:
        """Record that a customer was recognised now (drives retention)."""
        ts = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
        with self._lock:
            self.db.execute("UPDATE customers SET last_seen_at = ? WHERE id = ?", [ts, customer_id])

    def expire_unseen(self, days: int, now: datetime | None = None) -> list[str]:
        """Erase active customers neither seen nor enrolled/updated in the last ``days`` days; returns their ids."""
        cutoff = ((now or datetime.now(timezone.utc)) - timedelta(days=days)).isoformat(timespec="seconds")
        ids = [r[0] for r in self.db.execute(
            "SELECT id FROM customers WHERE status = 'active' AND COALESCE(last_seen_at, updated_at) < ?", [cutoff])]
        for cid in ids:
            self.delete(cid)
        return ids

    def expire_pending(self, now: datetime | None = None) -> list[str]:
        """Erase pending customers past their ``expires_at``; returns their ids."""
        ts = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
        ids = [r[0] for r in self.db.execute(
            "SELECT id FROM customers WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?", [ts])]
        for cid in ids:
            self.delete(cid)
        return ids

    def rotate_key(self, new: FieldCipher) -> int:
        """Re-seal every name, template and photo under ``new`` in one transaction (legacy plaintext rows
        get sealed too); afterwards this gallery uses ``new``. Returns the number of values re-sealed.

        Raises:
            GalleryKeyError: a value cannot be opened with the current key (nothing is changed).
        """
        n = 0
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for cid, name in self.db.execute("SELECT id, display_name FROM customers").fetchall():
                    ctx = f"customers.display_name:{cid}"
                    self.db.execute("UPDATE customers SET display_name = ? WHERE id = ?",
                                    [new.seal(self._open_value(name, ctx), ctx), cid])
                    n += 1
                for tid, cid, emb, photo in self.db.execute(
                        "SELECT id, customer_id, embedding, photo FROM templates").fetchall():
                    e_ctx, p_ctx = f"templates.embedding:{cid}", f"templates.photo:{cid}"
                    self.db.execute("UPDATE templates SET embedding = ?, photo = ? WHERE id = ?", [
                        new.seal(self._open_value(emb, e_ctx), e_ctx),
                        None if photo is None else new.seal(self._open_value(photo, p_ctx), p_ctx), tid])
                    n += 1 + (photo is not None)
            except GalleryKeyError:
                self.db.execute("ROLLBACK")
                raise
        self.cipher = new
        self._invalidate()
        return n

    # --- reads -------------------------------------------------------------------------------------
    def _seal_name(self, customer_id: str, name: str) -> bytes:
        return self.cipher.seal(name.encode("utf-8"), f"customers.display_name:{customer_id}")

    def _open_value(self, value, context: str) -> bytes:
        """Unseal a stored value; legacy plaintext (galleries from before encryption) passes through."""
        if FieldCipher.is_sealed(value):
            return self.cipher.open(value, context)
        return value.encode("utf-8") if isinstance(value, str) else value

    def _row_to_customer(self, r: dict) -> Customer:
        name = self._open_value(r["display_name"], f"customers.display_name:{r['id']}").decode("utf-8")
        return Customer(
            id=r["id"], display_name=name, status=r["status"],
            consent=json.loads(r["consent"]) if r["consent"] else None, short_code=r["short_code"],
            created_at=r["created_at"], updated_at=r["updated_at"], expires_at=r["expires_at"],
            templates=int(r.get("n", 0) or 0),
        )

    def customers(self, status: str | None = None) -> list[Customer]:
        """All customers (optionally of one status), oldest first, with their template counts."""
        sql = ("SELECT c.*, (SELECT COUNT(*) FROM templates t WHERE t.customer_id = c.id) AS n "
               "FROM customers c")
        args: list = []
        if status:
            sql += " WHERE c.status = ?"
            args.append(status)
        with self._lock:
            rows = list(self.db.query(sql + " ORDER BY c.created_at, c.id", args))
        return [self._row_to_customer(r) for r in rows]

    def customer(self, customer_id: str) -> Customer:
        """One customer. Raises :class:`UnknownCustomer`."""
        with self._lock:
            rows = list(self.db.query(
                "SELECT c.*, (SELECT COUNT(*) FROM templates t WHERE t.customer_id = c.id) AS n "
                "FROM customers c WHERE c.id = ?", [customer_id]))
        if not rows:
            raise UnknownCustomer(customer_id)
        return self._row_to_customer(rows[0])

    def templates(self, customer_id: str) -> list[dict]:
        """A customer's templates as dicts (``embedding`` decoded to ``(512,) float32``)."""
        with self._lock:
            rows = list(self.db.query("SELECT * FROM templates WHERE customer_id = ? ORDER BY id", [customer_id]))
        for r in rows:
            raw = self._open_value(r["embedding"], f"templates.embedding:{customer_id}")
            r["embedding"] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            if r.get("photo") is not None:
                r["photo"] = self._open_value(r["photo"], f"templates.photo:{customer_id}")
        return rows

    @property
    def stale_templates(self) -> int:
        """Templates made by a different model than the current one (never searched)."""
        with self._lock:
            return int(self.db.execute(
                "SELECT COUNT(*) FROM templates WHERE model_sha256 != ?", [self.model_sha256]).fetchone()[0])

    # --- search ------------------------------------------------------------------------------------
    def _invalidate(self) -> None:
        self._matrix = None

    def _load(self) -> None:
        with self._lock:
            rows = list(self.db.execute(
                "SELECT t.customer_id, t.embedding FROM templates t JOIN customers c ON c.id = t.customer_id "
                "WHERE c.status = 'active' AND t.model_sha256 = ? ORDER BY t.customer_id, t.id",
                [self.model_sha256]))
        raw = b"".join(self._open_value(r[1], f"templates.embedding:{r[0]}") for r in rows)
        self.load_matrix(
            np.frombuffer(raw, dtype="<f4").reshape(-1, EMBEDDING_DIM).astype(np.float32), [r[0] for r in rows])

    def load_matrix(self, matrix: np.ndarray, owners: list[str]) -> None:
        """Replace the in-memory search matrix (used by :meth:`match`; benchmarks feed it directly).

        For ``M >= COARSE_MIN`` templates a coarse index is also built: the rows projected onto the
        ``COARSE_DIM`` leading eigenvectors of the gallery's (uncentred) second-moment matrix, i.e. the
        subspace that best preserves inner products (Eckart–Young). A 1:N search then reads a quarter
        of the memory and re-scores a shortlist exactly (see :meth:`match`).

        Args:
            matrix: ``(M, 512) float32`` unit rows; owners: M customer ids.
        """
        ids = sorted(set(owners))
        pos = {c: i for i, c in enumerate(ids)}
        self._owner_ids = ids
        self._owners = np.array([pos[c] for c in owners], dtype=np.int32)
        self._matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self._coarse = self._basis = None
        if len(self._matrix) >= self.COARSE_MIN:
            m = self._matrix
            sample = m[:: max(1, len(m) // 20_000)]
            _, vecs = np.linalg.eigh(sample.T @ sample)
            self._basis = np.ascontiguousarray(vecs[:, ::-1][:, : self.COARSE_DIM], dtype=np.float32)
            self._coarse = np.ascontiguousarray(m @ self._basis)

    #: Galleries at least this large get the coarse index (below it exact search is faster).
    COARSE_MIN = 20_000
    #: Dimensions of the coarse index.
    COARSE_DIM = 128
    #: Templates re-scored exactly per probe.
    SHORTLIST = 256

    def match(self, probes: np.ndarray, threshold: float, margin: float) -> list[Match]:
        """1:N search: for each probe, the best customer and whether it is accepted.

        Args:
            probes: ``(N, 512)`` or ``(512,)`` float32 unit vectors.
            threshold: minimum cosine similarity; margin: minimum lead over the best other customer.
        Returns:
            N :class:`Match` objects. Cost: one ``(N, 512) × (512, M)`` product plus two passes over M.
        """
        if self._matrix is None:
            self._load()
        p = np.atleast_2d(np.asarray(probes, dtype=np.float32))
        m = self._matrix
        if m is None or len(m) == 0:
            return [Match(None, -1.0, -1.0, False) for _ in p]
        out = []
        if self._coarse is not None:
            # coarse scores for all, exact scores for a shortlist; a customer outside the shortlist
            # keeps its coarse score (which only underestimates the runner-up's lead less)
            coarse = (p @ self._basis) @ self._coarse.T  # (N, M)
            k = min(self.SHORTLIST, len(m) - 1)
            for q, cs in zip(p, coarse):
                short = np.argpartition(-cs, k)[:k]
                cs = cs.copy()
                cs[short] = m[short] @ q
                out.append(self._decide(cs, short[np.argmax(cs[short])], threshold, margin))
            return out
        for s in p @ m.T:  # (N, M) exact
            out.append(self._decide(s, int(np.argmax(s)), threshold, margin))
        return out

    def _decide(self, s: np.ndarray, j: int, threshold: float, margin: float) -> Match:
        owners = self._owners
        best_owner = owners[j]
        others = s[owners != best_owner]
        second = float(others.max()) if len(others) else -1.0
        score = float(s[j])
        return Match(self._owner_ids[best_owner], score, second, score >= threshold and score - second >= margin)
