"""1:N search of probe embeddings against an in-memory template matrix, with open-set acceptance.

The matrix holds the searchable templates of one embedder (``(M, D) float32`` unit rows, D = 128 for
SFace, 512 for FaceNet) and the customer owning each row. A probe is accepted as its best customer
when the cosine score reaches the threshold and leads the best *other* customer by the margin
(:class:`~dangol_edge.config.MatcherConfig`; the threshold itself comes from
:class:`~dangol_edge.calibration.OpenSetRule`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


@dataclass(frozen=True)
class _Index:
    """One loaded gallery, replaced whole: ``matrix`` ``(M, D) float32``; ``owners`` ``(M,) int32`` positions in
    ``owner_ids``; ``rows_of[i]`` the rows of ``owner_ids[i]``; ``basis`` ``(D, k)`` and ``coarse`` ``(M, k)``
    float32 for large galleries, else None."""

    matrix: np.ndarray
    owners: np.ndarray
    rows_of: list[np.ndarray]
    owner_ids: list[str]
    basis: np.ndarray | None
    coarse: np.ndarray | None


class Matcher:
    """Exact (or, for large galleries, coarse-then-exact) cosine search over a template matrix.

    For ``M >= COARSE_MIN`` templates a coarse index is also built: the rows projected onto the
    ``D / COARSE_FRACTION`` leading eigenvectors of the gallery's (uncentred) second-moment matrix, i.e.
    the subspace that best preserves inner products (Eckart–Young): 32 of SFace's 128 dimensions, 128 of
    FaceNet's 512. A 1:N search then reads a quarter of the memory and re-scores a shortlist exactly
    (see :meth:`match`).
    """

    #: Galleries at least this large get the coarse index (below it exact search is faster).
    COARSE_MIN = 20_000
    #: The coarse index keeps D / COARSE_FRACTION dimensions.
    COARSE_FRACTION = 4
    #: Templates re-scored exactly per probe.
    SHORTLIST = 256

    def __init__(self) -> None:
        self._index: _Index | None = None

    @property
    def loaded(self) -> bool:
        """True once :meth:`load` has been called (and not :meth:`clear`-ed since)."""
        return self._index is not None

    @property
    def size(self) -> int:
        """Number of searchable templates M."""
        index = self._index
        return 0 if index is None else len(index.matrix)

    @property
    def customers(self) -> int:
        """Number of distinct customers with a searchable template."""
        index = self._index
        return 0 if index is None else len(index.owner_ids)

    def clear(self) -> None:
        """Forget the matrix (the owner reloads it before the next search)."""
        self._index = None

    def load(self, matrix: np.ndarray, owners: list[str]) -> None:
        """Replace the search matrix. The new index is built aside and swapped in with one assignment, so a
        search running on another thread uses either the old gallery or the new one, never a mix.

        Args:
            matrix: ``(M, D) float32`` unit rows; owners: M customer ids.
        Raises:
            ValueError: ``matrix`` is not 2-D or its length differs from ``owners``.
        """
        m = np.ascontiguousarray(matrix, dtype=np.float32)
        if m.ndim != 2 or len(m) != len(owners):
            raise ValueError(f"expected (M, D) templates for {len(owners)} owners, got {m.shape}")
        ids = sorted(set(owners))
        pos = {c: i for i, c in enumerate(ids)}
        rows = np.array([pos[c] for c in owners], dtype=np.int32)
        order = np.argsort(rows, kind="stable")
        rows_of = np.split(order, np.cumsum(np.bincount(rows, minlength=len(ids)))[:-1])
        basis = coarse = None
        if len(m) >= self.COARSE_MIN:
            sample = m[:: max(1, len(m) // 20_000)]
            _, vecs = np.linalg.eigh(sample.T @ sample)
            k = max(1, m.shape[1] // self.COARSE_FRACTION)
            basis = np.ascontiguousarray(vecs[:, ::-1][:, :k], dtype=np.float32)
            coarse = np.ascontiguousarray(m @ basis)
        self._index = _Index(m, rows, rows_of, ids, basis, coarse)

    def match(self, probes: np.ndarray, threshold: float, margin: float) -> list[Match]:
        """1:N search: for each probe, the best customer and whether it is accepted.

        Args:
            probes: ``(N, D)`` or ``(D,)`` float32 unit vectors of the matrix's embedder.
            threshold: minimum cosine similarity; margin: minimum lead over the best other customer.
        Returns:
            N :class:`Match` objects. Cost: one ``(N, D) × (D, M)`` product plus two passes over M.
        Raises:
            ValueError: the probes' dimension is not the matrix's.
        """
        p = np.atleast_2d(np.asarray(probes, dtype=np.float32))
        index = self._index  # one gallery for the whole search, whatever another thread loads meanwhile
        if index is None or len(index.matrix) == 0:
            return [Match(None, -1.0, -1.0, False) for _ in p]
        m = index.matrix
        if p.shape[1] != m.shape[1]:
            raise ValueError(f"probe dimension {p.shape[1]} differs from the gallery's {m.shape[1]}")
        out = []
        if index.coarse is not None:
            # coarse scores for all, exact scores for a shortlist; a customer outside the shortlist
            # keeps its coarse score (which only underestimates the runner-up's lead less)
            coarse = (p @ index.basis) @ index.coarse.T  # (N, M)
            k = min(self.SHORTLIST, len(m) - 1)
            for q, cs in zip(p, coarse):
                short = np.argpartition(-cs, k)[:k]
                cs = cs.copy()
                cs[short] = m[short] @ q
                out.append(self._decide(index, cs, short[np.argmax(cs[short])], threshold, margin))
            return out
        for s in p @ m.T:  # (N, M) exact
            out.append(self._decide(index, s, int(np.argmax(s)), threshold, margin))
        return out

    @staticmethod
    def _decide(index: _Index, s: np.ndarray, j: int, threshold: float, margin: float) -> Match:
        """Accept or not; ``s`` (one probe's scores, a scratch copy) has the best owner's rows masked."""
        best_owner = index.owners[j]
        score = float(s[j])
        rows = index.rows_of[best_owner]
        s[rows] = -np.inf  # no allocation proportional to M: mask the best owner's few rows in place
        second = float(s.max()) if len(rows) < len(s) else -1.0
        return Match(index.owner_ids[best_owner], score, second, score >= threshold and score - second >= margin)
