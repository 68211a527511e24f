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
        self._matrix: np.ndarray | None = None
        self._owners = np.zeros(0, dtype=np.int32)
        self._rows_of: list[np.ndarray] = []
        self._owner_ids: list[str] = []
        self._coarse: np.ndarray | None = None
        self._basis: np.ndarray | None = None

    @property
    def loaded(self) -> bool:
        """True once :meth:`load` has been called (and not :meth:`clear`-ed since)."""
        return self._matrix is not None

    @property
    def size(self) -> int:
        """Number of searchable templates M."""
        return 0 if self._matrix is None else len(self._matrix)

    @property
    def customers(self) -> int:
        """Number of distinct customers with a searchable template."""
        return len(self._owner_ids)

    def clear(self) -> None:
        """Forget the matrix (the owner reloads it before the next search)."""
        self._matrix = None

    def load(self, matrix: np.ndarray, owners: list[str]) -> None:
        """Replace the search matrix.

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
        self._owner_ids = ids
        self._owners = np.array([pos[c] for c in owners], dtype=np.int32)
        order = np.argsort(self._owners, kind="stable")
        self._rows_of = np.split(order, np.cumsum(np.bincount(self._owners, minlength=len(ids)))[:-1])
        self._matrix = m
        self._coarse = self._basis = None
        if len(m) >= self.COARSE_MIN:
            sample = m[:: max(1, len(m) // 20_000)]
            _, vecs = np.linalg.eigh(sample.T @ sample)
            k = max(1, m.shape[1] // self.COARSE_FRACTION)
            self._basis = np.ascontiguousarray(vecs[:, ::-1][:, :k], dtype=np.float32)
            self._coarse = np.ascontiguousarray(m @ self._basis)

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
        m = self._matrix
        if m is None or len(m) == 0:
            return [Match(None, -1.0, -1.0, False) for _ in p]
        if p.shape[1] != m.shape[1]:
            raise ValueError(f"probe dimension {p.shape[1]} differs from the gallery's {m.shape[1]}")
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
        """Accept or not; ``s`` (one probe's scores, a scratch copy) has the best owner's rows masked."""
        best_owner = self._owners[j]
        score = float(s[j])
        rows = self._rows_of[best_owner]
        s[rows] = -np.inf  # no allocation proportional to M: mask the best owner's few rows in place
        second = float(s.max()) if len(rows) < len(s) else -1.0
        return Match(self._owner_ids[best_owner], score, second, score >= threshold and score - second >= margin)
