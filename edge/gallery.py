"""The local face gallery: customers and their templates in SQLite (sqlite-utils, WAL), and 1:N search.

Tables:

* ``customers``: ``id`` (UUID text), ``display_name``, ``greet_name`` (what the door says, NULL: the rule of
  :func:`dangol_protocol.greeting_name` on the name; see :mod:`dangol_edge.gallery_names`), ``status``
  (``pending``/``active``),
  ``consent`` (the protocol's :class:`~dangol_protocol.Consent` as JSON, see :mod:`dangol_edge.gallery_consent`;
  NULL while pending), ``short_code``
  (pending enrolments), ``created_at``, ``updated_at``, ``expires_at`` (ISO 8601 UTC).
* ``templates``: ``id``, ``customer_id``, ``embedding`` (D little-endian float32: D = 128 for SFace, 512 for FaceNet),
  ``quality`` (0–1), ``model_sha256`` (the embedder that made it), ``created_at``.

Names, greetings, embeddings and enrolment photos are stored sealed with AES-256-GCM (:mod:`dangol_edge.crypto`,
:mod:`dangol_edge.gallery_names`);
the key comes from the environment or a systemd credential, never from this file. A deletion (an erasure, retention,
an expired sign-up, the end of a model upgrade, a key rotation's old values) leaves neither the database file
(``secure_delete``) nor the ``-wal`` file (a TRUNCATE checkpoint after it: :mod:`dangol_edge.sqlite`).

Only templates of *active* customers made by the *current* model are searched: a template from a
different model is never mixed in silently (:attr:`Gallery.stale_templates` reports them, and the
customer must be re-enrolled). Unknown faces are never stored.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from dangol_protocol import Consent, greeting_name

from .activation_reports import ActivationReports, create_table as create_activation_reports
from .crypto import FieldCipher
from .gallery_consent import InvalidConsent, dump_consent, load_consent
from .gallery_expiry import GalleryExpiry, TooManyUnseen  # noqa: F401  (re-exported)
from .gallery_models import ModelTemplates, NoCurrentTemplate  # noqa: F401  (re-exported)
from .gallery_names import SealedNames, add_greeting_column, clean_greeting
from .gallery_search import AlreadyRegular, Enrolled, GallerySearch  # noqa: F401  (re-exported)
from .matcher import Matcher
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
    """A gallery customer (no embeddings; see :meth:`Gallery.templates`). ``consent`` is None while pending,
    and also when the stored record fails validation: then ``consent_error`` says why, naming the customer.
    ``greet_name``: the greeting staff chose ("Greet as"), None for the rule (see :attr:`first_name`)."""

    id: str
    display_name: str
    status: str
    consent: Consent | None
    short_code: str | None
    created_at: str
    updated_at: str
    expires_at: str | None
    templates: int = 0
    consent_error: str | None = None
    greet_name: str | None = None

    @property
    def first_name(self) -> str:
        """What the welcome screen says ("Welcome back, <first_name>"): :attr:`greet_name`, else the rule of
        :func:`dangol_protocol.greeting_name` on the name ("Mina Park" → "Mina", "김 민준" → "김 민준")."""
        return self.greet_name or greeting_name(self.display_name) or ""


class Gallery(ActivationReports, GalleryExpiry, GallerySearch, ModelTemplates, SealedNames, SQLiteFile):
    """Customers and templates in one SQLite file, plus an in-memory matrix for 1:N search.

    Args:
        path: the SQLite file (created on :meth:`open`, with its folder).
        model_sha256: sha256 of the embedder in use; only its templates are searched.
        cipher: seals names and templates; default :meth:`FieldCipher.from_environment` at :meth:`open`
            (raises :class:`~dangol_edge.crypto.GalleryKeyError` when no key is configured).

    Thread-safe: one connection guarded by a lock (the daemon's recognition and web threads share it). Retention,
    sign-up expiry and their repair after a clock step: :class:`~dangol_edge.gallery_expiry.GalleryExpiry`.
    """

    def __init__(self, path: str | Path, model_sha256: str, cipher: FieldCipher | None = None):
        super().__init__(path)
        self.model_sha256 = model_sha256
        self.cipher = cipher
        self.matcher = Matcher()
        self._generation = 0  # bumped by every change of the searchable templates (see _load)
        self._seen_version = None  # (connection, PRAGMA data_version) last seen: other processes' writes
        self.consent_errors: dict[str, str] = {}  # customer id -> why its stored consent is invalid (logged once)

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
        add_greeting_column(db)
        if "templates" not in db.table_names():
            db["templates"].create(
                {"id": int, "customer_id": str, "embedding": bytes, "quality": float,
                 "model_sha256": str, "created_at": str, "photo": bytes},
                pk="id", foreign_keys=[("customer_id", "customers", "id")],
                not_null={"customer_id", "embedding", "model_sha256"},
            )
            db["templates"].create_index(["customer_id"])
        if "meta" not in db.table_names():
            db["meta"].create({"key": str, "value": str}, pk="key")
        if "erasure_reports" not in db.table_names():  # erased here, the cloud not told yet (gallery_expiry)
            db["erasure_reports"].create({"customer_id": str}, pk="customer_id")
        create_activation_reports(db)  # activated here, the cloud not told yet (activation_reports)

    # --- writes ------------------------------------------------------------------------------------
    def enroll(self, display_name: str, embeddings: np.ndarray, qualities: list[float] | None = None, *,
               status: str = "active", consent: Consent | None = None, pending_ttl_s: float | None = None,
               photos: list[bytes] | None = None, customer_id: str | None = None,
               greet_name: str | None = None) -> Customer:
        """Create a customer with its templates in one transaction (all or nothing).

        Args:
            display_name: the name shown on the welcome screen (non-empty).
            embeddings: ``(K, D) float32`` unit vectors made by the current model.
            qualities: K values in [0, 1]; default 1.0.
            status: ``active`` or ``pending`` (pending gets a 4-digit ``short_code`` and expires after
                ``pending_ttl_s`` seconds).
            consent: the protocol's consent record for an active customer.
            photos: optional encoded crops (only when enrolment photos are enabled).
            customer_id: a UUID to use (the customer's id in the cloud); default a new UUID4.
            greet_name: what the door says to them; default None (the rule on ``display_name``).
        Raises:
            ValueError: empty name, wrong embedding shape, an unknown status, an id already in use, or a greeting
                over 40 characters.
            TypeError: ``consent`` is not a :class:`~dangol_protocol.Consent`.
        """
        name = display_name.strip()
        if not name and status == "active":
            raise ValueError("display name must not be empty")
        emb = np.asarray(embeddings, dtype=np.float32)
        consent_json = dump_consent(consent)
        greeting = clean_greeting(greet_name)
        self.open()
        self._check_dim(emb)
        if status not in ("active", "pending"):
            raise ValueError(f"unknown status {status!r}")
        now = datetime.now(timezone.utc)
        cid = customer_id or str(uuid.uuid4())
        row: dict[str, Any] = {
            "id": cid, "display_name": self._seal_name(cid, name), "greet_name": self._seal_greeting(cid, greeting),
            "status": status,
            "consent": consent_json,
            "short_code": None,
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
            if status == "pending":
                row["short_code"] = self._free_short_code()
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

    def _free_short_code(self) -> str:
        """A random 4-digit code no other pending customer holds (inside :meth:`enroll`'s transaction): the
        kiosk shows it and staff pick the sign-up by it, so two pending customers must never share one.

        Raises:
            ValueError: all 10,000 codes are held by pending sign-ups (nothing is written).
        """
        used = {r[0] for r in self.db.execute(
            "SELECT short_code FROM customers WHERE status = 'pending' AND short_code IS NOT NULL")}
        free = sorted(set(range(10_000)) - {int(c) for c in used if c.isdigit()})
        if not free:
            self.db.execute("ROLLBACK")
            raise ValueError("no free sign-up code: 10,000 sign-ups are pending")
        return f"{free[secrets.randbelow(len(free))]:04d}"

    def activate(self, customer_id: str, display_name: str, consent: Consent, *, greet_name: str | None = None,
                 check: Callable[[], None] | None = None) -> Customer:
        """Record consent and a name for a pending customer, making it active (and searchable); the same transaction
        records the activation for the cloud's report (:mod:`dangol_edge.activation_reports`).

        Args:
            greet_name: what the door says to them (the staff page's "Greet as"); None: the rule on the name.
            check: run under the gallery's lock just before the change; whatever it raises refuses the activation
                with nothing changed (the staff page's :meth:`refuse_if_regular`).
        Raises:
            UnknownCustomer: no such id.  ValueError: empty name, no consent, or a greeting over 40 characters.
            TypeError: not a ``Consent``.
            NoCurrentTemplate: no template the door can search, now or after a running upgrade
                (:meth:`require_current_template`): re-enrol needed.
        """
        if not display_name.strip() or consent is None:
            raise ValueError("a name and a consent record are required to activate a customer")
        consent_json = dump_consent(consent)
        greeting = clean_greeting(greet_name)
        self.customer(customer_id)
        with self._lock:
            self.require_current_template(customer_id)
            if check is not None:
                check()
            with self.db.atomic():
                self.db["customers"].update(customer_id, {
                    "display_name": self._seal_name(customer_id, display_name.strip()),
                    "greet_name": self._seal_greeting(customer_id, greeting), "status": "active",
                    "consent": consent_json, "short_code": None, "expires_at": None, "updated_at": utcnow()})
                self.db.execute("INSERT OR IGNORE INTO activation_reports (customer_id) VALUES (?)", [customer_id])
        self._invalidate()
        return self.customer(customer_id)

    def delete(self, customer_id: str) -> None:
        """Erase a customer and all their templates (one transaction), then wipe their rows from the ``-wal`` file
        (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_deleted`: one a reader blocks is logged and finished by the next
        housekeeping pass, :meth:`expire_pending`); in the database file ``secure_delete`` zeroes them.

        Raises:
            UnknownCustomer: no such id.
        """
        self._delete(customer_id)
        self.wipe_deleted()

    def _delete(self, customer_id: str, report: bool = False) -> None:
        """:meth:`delete` without the wipe (marked due); with ``report``, the same transaction records the id for the
        cloud's report (:meth:`~dangol_edge.gallery_expiry.GalleryExpiry.unreported_erasures`). Raises
        UnknownCustomer."""
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            if not self.db.execute("SELECT 1 FROM customers WHERE id = ?", [customer_id]).fetchone():
                self.db.execute("ROLLBACK")
                raise UnknownCustomer(customer_id)
            self.db.execute("DELETE FROM templates WHERE customer_id = ?", [customer_id])
            self.db.execute("DELETE FROM customers WHERE id = ?", [customer_id])
            self.db.execute("DELETE FROM activation_reports WHERE customer_id = ?", [customer_id])
            if report:
                self.db.execute("INSERT OR IGNORE INTO erasure_reports (customer_id) VALUES (?)", [customer_id])
            self._wipe_due = True
        self.consent_errors.pop(customer_id, None)
        self._invalidate()

    # --- reads -------------------------------------------------------------------------------------
    def _row_to_customer(self, r: dict) -> Customer:
        name, greeting = self._open_names(r)
        consent, error = None, None
        try:
            consent = load_consent(r["id"], r["consent"])
        except InvalidConsent as exc:  # one bad row must not break the listing: reported, logged once, counted
            error = str(exc)
            if self.consent_errors.get(r["id"]) != error:
                log.error("%s", error)
            self.consent_errors[r["id"]] = error
        else:
            self.consent_errors.pop(r["id"], None)
        return Customer(
            id=r["id"], display_name=name, status=r["status"], consent=consent, short_code=r["short_code"],
            created_at=r["created_at"], updated_at=r["updated_at"], expires_at=r["expires_at"],
            templates=int(r.get("n", 0) or 0), consent_error=error, greet_name=greeting,
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
        """A customer's templates as dicts (``embedding`` decoded to ``(D,) float32``)."""
        with self._lock:
            rows = list(self.db.query("SELECT * FROM templates WHERE customer_id = ? ORDER BY id", [customer_id]))
        for r in rows:
            raw = self._open_value(r["embedding"], f"templates.embedding:{customer_id}")
            r["embedding"] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            if r.get("photo") is not None:
                r["photo"] = self._open_value(r["photo"], f"templates.photo:{customer_id}")
        return rows

    def _check_dim(self, emb: np.ndarray, model_sha256: str | None = None) -> None:
        """Raise ValueError unless ``emb`` is ``(K ≥ 1, D)`` with D that of this model's stored templates."""
        if emb.ndim != 2 or not 16 <= emb.shape[1] <= 4096 or len(emb) == 0:
            raise ValueError(f"expected (K, D) embeddings, got {emb.shape}")
        with self._lock:
            row = self.db.execute("SELECT customer_id, embedding FROM templates WHERE model_sha256 = ? LIMIT 1",
                                  [model_sha256 or self.model_sha256]).fetchone()
        if row is not None:
            dim = len(self._open_value(row[1], f"templates.embedding:{row[0]}")) // 4
            if dim != emb.shape[1]:
                raise ValueError(f"expected (K, {dim}) embeddings for this model, got {emb.shape}")

    @property
    def stale_templates(self) -> int:
        """Templates made by a different model than the current one (never searched)."""
        with self._lock:
            return int(self.db.execute(
                "SELECT COUNT(*) FROM templates WHERE model_sha256 != ?", [self.model_sha256]).fetchone()[0])
