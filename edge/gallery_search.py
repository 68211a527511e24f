"""1:N search over the gallery's searchable templates (a mixin of :class:`dangol_edge.gallery.Gallery`).

The in-memory :class:`~dangol_edge.matcher.Matcher` holds the current model's templates of active customers; every
committed change of them calls :meth:`GallerySearch._invalidate` and the next search reloads the matrix, safely
against changes committed while it was being read (a generation counter).
"""

from __future__ import annotations

import numpy as np

from .matcher import Match


class GallerySearch:
    """Search over the gallery; needs ``_lock``, ``_generation``, ``matcher``, ``model_sha256`` and ``matrix_for``
    from the gallery."""

    def _invalidate(self) -> None:
        """Called after every committed change of the searchable templates: the next search reloads."""
        with self._lock:
            self._generation += 1
            self.matcher.clear()

    def _load(self) -> None:
        """Rebuild the search matrix from the database. A change committed while the templates were being read
        (e.g. an erasure from the staff page) bumps the generation, and the read is repeated, so the stale
        matrix is never installed (a change committed after the check clears it again in :meth:`_invalidate`)."""
        while True:
            with self._lock:
                generation = self._generation
            matrix, owners = self.matrix_for(self.model_sha256)
            with self._lock:
                if generation == self._generation:
                    self.matcher.load(matrix, owners)
                    return

    @property
    def size(self) -> int:
        """Searchable templates (active customers, current model)."""
        if not self.matcher.loaded:
            self._load()
        return self.matcher.size

    def load_matrix(self, matrix: np.ndarray, owners: list[str]) -> None:
        """Replace the in-memory search matrix (benchmarks feed it directly); see :meth:`Matcher.load`."""
        self.matcher.load(matrix, owners)

    def match(self, probes: np.ndarray, threshold: float, margin: float) -> list[Match]:
        """1:N search of ``(N, D)`` probes of the current model; see :meth:`Matcher.match`."""
        if not self.matcher.loaded:
            self._load()
        return self.matcher.match(probes, threshold, margin)
