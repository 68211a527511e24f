"""The previous model's templates a running model upgrade searches (:class:`~dangol_edge.upgrade.ModelUpgrade`):
regulars first; a sign-up still pending staff's consent only where no regular is accepted, only with a lead over
every regular, and never one that is a regular's own face.

A pending sign-up is not a customer yet: staff may discard it, and one that is a regular's face (a second sign-up of
someone already a regular) is refused at activation (:meth:`~dangol_edge.gallery_search.GallerySearch.
refuse_if_regular`). While both wait in the old model's gallery, the regular's visit could elect the sign-up (its
template made from a frame closer to today's) and the upgrade migrated the sign-up instead of the regular, at every
visit, until staff discarded it: the regular then had no template of the new model and was a stranger at the door.
So :class:`OldTemplates`

* leaves out of the search every pending sign-up whose old templates are an active customer's face by the door's
  rule of the previous model (:attr:`OldTemplates.duplicates`; the same vote as the staff page's check: a
  ``min_votes`` / ``vote_share`` majority of its templates accepted as one regular, at the door's FPIR and margin);
* searches the regulars alone first (their acceptance is not spoilt by a duplicate's look-alike templates: the margin
  compares regulars only), and the other sign-ups only for a face no regular accepted, accepting one only when it also
  leads the best regular's score by the margin.

:class:`~dangol_edge.upgrade.ModelUpgrade` also never migrates a sign-up on a track where a regular was accepted
(:attr:`OldTemplates.signups`). Not thread-safe for :meth:`OldTemplates.load` (the upgrade serialises reloads); a
search meanwhile sees the old pair of matrices or the new one (swapped whole).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from .matcher import Match, Matcher

log = logging.getLogger(__name__)


def _elected(found: list[Match], min_votes: int, vote_share: float) -> str | None:
    """The customer a majority of ``found`` (one search per template) was accepted as, by the door's vote: at least
    ``min(min_votes, K)`` and ``vote_share`` of the K templates; else None."""
    votes = Counter(m.customer_id for m in found if m.accepted)
    if not votes:
        return None
    cid, n = votes.most_common(1)[0]
    return cid if n >= min(min_votes, len(found)) and n >= vote_share * len(found) else None


class OldTemplates:
    """Regulars' and pending sign-ups' templates of the previous model, searched as the module docstring says.

    Attributes:
        signups: the pending sign-ups searched (after the regulars).
        duplicates: pending sign-up id → the regular whose face it is (left out of the search).
    """

    def __init__(self) -> None:
        self._pair: tuple[Matcher, Matcher] = (Matcher(), Matcher())  # (regulars, sign-ups), swapped whole
        self.signups: frozenset[str] = frozenset()
        self.duplicates: dict[str, str] = {}
        self._ids: frozenset[str] = frozenset()

    @property
    def loaded(self) -> bool:
        """True once :meth:`load` has been called (and not :meth:`clear`-ed since)."""
        return self._pair[0].loaded

    @property
    def size(self) -> int:
        """Searchable templates: the regulars' and the searched sign-ups' (the open-set rule's gallery size)."""
        regulars, signups = self._pair
        return regulars.size + signups.size

    @property
    def customers(self) -> int:
        """Customers with a searchable template (regulars and searched sign-ups)."""
        regulars, signups = self._pair
        return regulars.customers + signups.customers

    @property
    def ids(self) -> frozenset[str]:
        """Every customer loaded, duplicates included (an erasure of any of them calls for a reload)."""
        return self._ids

    def clear(self) -> None:
        """Forget everything (the owner reloads before the next search)."""
        self._pair = (Matcher(), Matcher())
        self.signups, self.duplicates, self._ids = frozenset(), {}, frozenset()

    def load(self, gallery, sha256: str, door_rule, margin: float, min_votes: int, vote_share: float) -> None:
        """Load the previous model's templates of the active customers and pending sign-ups from ``gallery``.

        Args:
            gallery: the :class:`~dangol_edge.gallery.Gallery` (``matrix_for``).
            sha256: the previous model's.
            door_rule: that model's calibrated :class:`~dangol_edge.calibration.OpenSetRule` at the door's FPIR (the
                duplicate check's; the migration's own rule is stricter).
            margin, min_votes, vote_share: the matcher's margin and the tracker's vote.
        Raises:
            sqlite3.Error: the gallery cannot be read.
        """
        active, owners = gallery.matrix_for(sha256, ("active",))
        pending, pending_owners = gallery.matrix_for(sha256, ("pending",))
        regulars = Matcher()
        regulars.load(active, owners)
        duplicates: dict[str, str] = {}
        if len(pending_owners) and regulars.size:
            threshold = door_rule.threshold(regulars.size)
            rows = np.asarray(pending_owners)
            for cid in dict.fromkeys(pending_owners):
                found = regulars.match(pending[rows == cid], threshold, margin)
                regular = _elected(found, min_votes, vote_share)
                if regular is not None:
                    duplicates[cid] = regular
        keep = [i for i, c in enumerate(pending_owners) if c not in duplicates]
        signups = Matcher()
        signups.load(pending[keep] if keep else np.zeros((0, max(1, active.shape[1])), np.float32),
                     [pending_owners[i] for i in keep])
        for cid, regular in duplicates.items():
            if cid not in self.duplicates:
                log.info("model upgrade: sign-up %s (pending) is the face of regular %s: never migrated in their place "
                         "(staff cannot activate it; discard it)", cid, regular)
        self._pair = (regulars, signups)
        self.signups = frozenset(c for c in pending_owners if c not in duplicates)
        self.duplicates = duplicates
        self._ids = frozenset(owners) | frozenset(pending_owners)

    def match(self, probes: np.ndarray, threshold: float, margin: float) -> list[Match]:
        """1:N search of ``(N, D)`` probes of the previous model: the regulars' :class:`Match` when one is accepted;
        else a searched sign-up accepted on its own matrix that also leads the best regular by ``margin`` (its
        ``second`` is then the best of both); else the regulars' (not accepted) match."""
        p = np.atleast_2d(np.asarray(probes, dtype=np.float32))
        regulars, signups = self._pair  # one loaded pair for the whole search
        out = regulars.match(p, threshold, margin)
        if signups.size == 0:
            return out
        todo = [i for i, m in enumerate(out) if not m.accepted]
        if not todo:
            return out
        for i, s in zip(todo, signups.match(p[todo], threshold, margin)):
            r = out[i]
            second = max(s.second, r.score)
            if s.accepted and s.score - second >= margin:
                out[i] = Match(s.customer_id, s.score, second, True)
        return out
