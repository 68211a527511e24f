"""Templates per embedder model: what model upgrades need of the gallery (a mixin of
:class:`dangol_edge.gallery.Gallery`, which provides the connection, lock, cipher and customers).

Each template row carries the sha256 of the model that made it; only the current model's are searched.
These methods add templates to an existing customer, read one model's templates, report which models each
customer has, drop the other models' templates, and keep small facts (when an upgrade started) in the
gallery's ``meta`` table. See :mod:`dangol_edge.upgrade`.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import EdgeConfig
    from .embed import Embedder

#: The ``meta`` key holding when a model upgrade started (ISO 8601 UTC); present while one runs.
UPGRADE_STARTED_KEY = "upgrade_started_at"


class NoCurrentTemplate(ValueError):
    """A customer was not activated: no template of the current model (e.g. a sign-up made with a previous face model
    whose upgrade ended before it was activated, deleting those templates), so the door could never greet them.
    ``str()`` says so and names the id."""

    def __init__(self, customer_id: str):
        super().__init__(f"customer {customer_id}: re-enrol needed: no template of the current model (the sign-up was "
                         "made with a previous face model); discard it and sign up again")
        self.customer_id = customer_id


class ModelTemplates:
    """Template-per-model operations; needs ``db``, ``_lock``, ``cipher``, ``model_sha256``,
    ``_open_value``, ``_check_dim``, ``_invalidate`` and ``UnknownCustomer`` handling from the gallery."""

    def add_templates(self, customer_id: str, embeddings: np.ndarray, qualities: list[float],
                      model_sha256: str | None = None, *, max_per_model: int | None = None) -> int:
        """Add templates to an existing customer (one transaction); returns how many were added.

        Args:
            embeddings: ``(K, D) float32`` unit vectors made by ``model_sha256`` (default: the current model).
            qualities: K values in [0, 1].
            max_per_model: keep at most this many templates of that model for the customer: the
                lowest-quality ones beyond it are dropped (refreshes never grow the gallery forever); the next
                housekeeping pass wipes them from the ``-wal`` file
                (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_if_due`).
        Raises:
            UnknownCustomer: no such id.  ValueError: wrong shape or quality count.
        """
        emb = np.asarray(embeddings, dtype=np.float32)
        sha = model_sha256 or self.model_sha256
        self._check_dim(emb, sha)
        if len(emb) != len(qualities):
            raise ValueError(f"{len(emb)} embeddings but {len(qualities)} qualities")
        from .gallery import utcnow

        now = utcnow()
        with self._lock, self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            if not self.db.execute("SELECT 1 FROM customers WHERE id = ?", [customer_id]).fetchone():
                self.db.execute("ROLLBACK")
                from .gallery import UnknownCustomer

                raise UnknownCustomer(customer_id)
            self.db["templates"].insert_all(
                {"customer_id": customer_id, "quality": float(q), "model_sha256": sha, "created_at": now,
                 "embedding": self.cipher.seal(e.astype("<f4").tobytes(), f"templates.embedding:{customer_id}")}
                for e, q in zip(emb, qualities))
            if max_per_model is not None and self.db.execute(
                    "DELETE FROM templates WHERE customer_id = ? AND model_sha256 = ? AND id NOT IN ("
                    " SELECT id FROM templates WHERE customer_id = ? AND model_sha256 = ?"
                    " ORDER BY quality DESC, id DESC LIMIT ?)", [customer_id, sha, customer_id, sha, max_per_model]
            ).rowcount:
                self._wipe_due = True  # the next housekeeping pass wipes the -wal file (no checkpoint on this thread)
        self._invalidate()
        return len(emb)

    def template_models(self) -> dict[str, dict[str, int]]:
        """Per customer id, the number of templates of each model sha256."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for cid, sha, n in self.db.execute(
                    "SELECT customer_id, model_sha256, COUNT(*) FROM templates GROUP BY customer_id, model_sha256"):
                out.setdefault(cid, {})[sha] = int(n)
        return out

    def other_models(self) -> dict[str, int]:
        """Per model sha256 other than the current one, how many templates it made (a model upgrade's old
        templates; never searched)."""
        with self._lock:
            return {sha: int(n) for sha, n in self.db.execute(
                "SELECT model_sha256, COUNT(*) FROM templates WHERE model_sha256 != ? GROUP BY model_sha256",
                [self.model_sha256])}

    def require_current_template(self, customer_id: str) -> None:
        """Raise :class:`NoCurrentTemplate` unless the customer has a template of the current model, or only older
        models' templates while a model upgrade runs (``meta`` :data:`UPGRADE_STARTED_KEY`: it migrates them at the
        customer's next visit). For :meth:`Gallery.activate`, under the gallery's lock."""
        with self._lock:
            current, other = self.db.execute(
                "SELECT COALESCE(SUM(model_sha256 = ?), 0), COALESCE(SUM(model_sha256 != ?), 0) FROM templates "
                "WHERE customer_id = ?", [self.model_sha256, self.model_sha256, customer_id]).fetchone()
        if not current and not (other and self.meta(UPGRADE_STARTED_KEY) is not None):
            raise NoCurrentTemplate(customer_id)

    def drop_other_models(self) -> int:
        """Delete every template not made by the current model (the end of an upgrade), wiping them from the ``-wal``
        file too (:meth:`~dangol_edge.sqlite.SQLiteFile.wipe_deleted`); returns how many."""
        with self._lock, self.db.conn:
            n = self.db.execute("DELETE FROM templates WHERE model_sha256 != ?", [self.model_sha256]).rowcount
        self._invalidate()
        if n:
            self.wipe_deleted()
        return int(n)

    def matrix_for(self, model_sha256: str, statuses: tuple[str, ...] = ("active",)) -> tuple[np.ndarray, list[str]]:
        """The ``(M, D) float32`` templates made by one model of the customers of ``statuses``, and their owners."""
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            rows = list(self.db.execute(
                "SELECT t.customer_id, t.embedding FROM templates t JOIN customers c ON c.id = t.customer_id "
                f"WHERE c.status IN ({marks}) AND t.model_sha256 = ? ORDER BY t.customer_id, t.id",
                [*statuses, model_sha256]))
        vecs = [np.frombuffer(self._open_value(r[1], f"templates.embedding:{r[0]}"), dtype="<f4") for r in rows]
        matrix = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, 1), np.float32)
        return matrix, [r[0] for r in rows]

    def meta(self, key: str, default: str | None = None) -> str | None:
        """A value of the gallery's ``meta`` table (e.g. when a model upgrade started)."""
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or, with None, delete) a ``meta`` value."""
        with self._lock, self.db.conn:
            if value is None:
                self.db.execute("DELETE FROM meta WHERE key = ?", [key])
            else:
                self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])


def stored_template_models(path: str | Path) -> dict[str, int]:
    """Per model sha256, how many templates the gallery file ``path`` holds, read without opening the gallery (no
    key needed, nothing created or written: for ``dangol-edge check-config``); empty when the file or its
    ``templates`` table is not there yet.

    Raises:
        sqlite3.Error: the file is not a readable SQLite database.
    """
    p = Path(path)
    if not p.is_file():
        return {}
    with closing(sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'templates'").fetchone():
            return {}
        return {sha: int(n) for sha, n in db.execute(
            "SELECT model_sha256, COUNT(*) FROM templates GROUP BY model_sha256")}


def previous_embedder(config: "EdgeConfig", others: dict[str, int]) -> "Embedder | None":
    """A model upgrade's previous model as ``config`` names it (``embedder.previous_model_path``; nothing loaded yet)
    while the gallery holds templates of another model than the current one (``others``: per model sha256, their
    count, :meth:`ModelTemplates.other_models`). None when no previous model is configured or no such template is
    left, without looking at its file: once an upgrade has ended the file may be deleted and the config line kept.

    Raises:
        ModelError: templates of another model remain and the previous model's file is missing (the message names the
            file, how many templates wait, and what to do).
    """
    from .embed import Embedder, ModelError

    path = config.embedder.previous_model_path
    if path is None or not others:
        return None
    if not Path(path).is_file():
        raise ModelError(
            f"{path}: the previous face model (embedder.previous_model_path) is missing, but the gallery still holds "
            f"{sum(others.values())} template(s) of another model than the current one, for a model upgrade to "
            "migrate: put the file back (the upgrade then migrates those customers at their next visit), or remove "
            "embedder.previous_model_path from the config (those customers must then re-enrol)")
    return Embedder(path, threads=config.embedder.threads)
