"""1:N search over the gallery's searchable templates (a mixin of :class:`dangol_edge.gallery.Gallery`).

The in-memory :class:`~dangol_edge.matcher.Matcher` holds the current model's templates of active customers; every
committed change of them calls :meth:`GallerySearch._invalidate` and the next search reloads the matrix, safely
against changes committed while it was being read (a generation counter).

Other processes write the same file too (``dangol-edge enroll`` and ``customers delete`` while the daemon runs):
before every search (and :attr:`GallerySearch.size`) the gallery asks SQLite whether another connection committed
since it last looked (``PRAGMA data_version``, a read of the WAL index in shared memory: microseconds) and, if so,
reloads. A customer erased from the command line therefore stops being matched at the daemon's next frame, and one
enrolled there is greeted from then on.

A sign-up of someone who is already an active customer is told by :meth:`GallerySearch.enrolled_as`: the door's own
acceptance rule (threshold and margin of :class:`~dangol_edge.matcher.Matcher`) and its vote
(:class:`~dangol_edge.tracker.Tracker`: ``min_votes`` and ``vote_share``), with the sign-up's templates as the
frames. A sign-up with only a previous model's templates (made before a model upgrade, still pending) is checked
the same way against the active customers' templates of that model, with its calibrated rule
(:class:`PreviousModel`, set while the upgrade runs); with no upgrade to check and later migrate it, it is refused
(:class:`~dangol_edge.gallery_models.NoCurrentTemplate`). A sign-up made while the upgrade runs is embedded by both
models (:mod:`dangol_edge.signup_previous`) and keeps both models' templates: a regular the upgrade has not migrated
yet (only previous-model templates, so the door does not greet them yet) is found by the previous model's
(:meth:`GallerySearch.enrolled_as_previous`), at sign-up and again at activation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .gallery_models import NoCurrentTemplate
from .matcher import Match, Matcher


@dataclass(frozen=True)
class Enrolled:
    """The active customer a set of new templates belongs to by the door's rule (:meth:`GallerySearch.enrolled_as`).

    Attributes:
        customer_id: that customer.  votes: how many of the ``templates`` new templates were accepted as them.
        templates: K, the new templates searched.  score: the best cosine similarity to them.
        accepted: ``(K,) bool``, which new templates were accepted as them.
    """

    customer_id: str
    votes: int
    templates: int
    score: float
    accepted: tuple[bool, ...]


@dataclass(frozen=True)
class PreviousModel:
    """The previous face model of a running upgrade (:class:`~dangol_edge.upgrade.ModelUpgrade` sets it on the gallery
    while it runs): its ``sha256`` and its calibrated open-set ``rule`` at the door's FPIR (an
    :class:`~dangol_edge.calibration.OpenSetRule`: the door's rule as it was with that model)."""

    sha256: str
    rule: object


def _vote(found: list[Match], min_votes: int, vote_share: float) -> Enrolled | None:
    """The customer the door's vote elects over a sign-up's searched templates (:meth:`GallerySearch.enrolled_as`)."""
    votes = Counter(m.customer_id for m in found if m.accepted)
    if not votes:
        return None
    cid, n = votes.most_common(1)[0]
    if n < min(min_votes, len(found)) or n < vote_share * len(found):
        return None
    mine = tuple(bool(m.accepted and m.customer_id == cid) for m in found)
    return Enrolled(cid, n, len(found), max(m.score for m, ok in zip(found, mine) if ok), mine)


class AlreadyRegular(ValueError):
    """A pending sign-up was not activated: its face is an active customer's (:meth:`GallerySearch.enrolled_as`);
    nothing was changed. ``str()`` names both ids (no name: fit for the log); ``customer`` is the active
    :class:`~dangol_edge.gallery.Customer`, ``found`` the :class:`Enrolled`."""

    def __init__(self, pending_id: str, customer, found: Enrolled):
        super().__init__(f"sign-up {pending_id} is the face of active customer {customer.id} "
                         f"({found.votes} of {found.templates} templates matched)")
        self.pending_id, self.customer, self.found = pending_id, customer, found


class GallerySearch:
    """Search over the gallery; needs ``_lock``, ``_generation``, ``_seen_version``, ``matcher``, ``model_sha256``,
    ``db``, ``matrix_for``, ``templates`` and ``customer`` from the gallery.

    ``on_outside_write``: None, or called with no arguments (on the searching thread) when another process's commit
    was noticed, e.g. the daemon's check that the customer on the door screen was not erased from the command line.
    """

    on_outside_write = None
    previous_model: PreviousModel | None = None

    def _invalidate(self) -> None:
        """Called after every committed change of the searchable templates: the next search reloads."""
        with self._lock:
            self._generation += 1
            self.matcher.clear()

    def _notice_other_writers(self) -> None:
        """Invalidate the matrix when another connection (another process: the CLI) committed to the file since the
        last look, then call ``on_outside_write`` (if set; outside the lock). ``PRAGMA data_version`` changes only
        for other connections' commits, never for this one's, and its values mean something only on one connection:
        a new connection (the gallery reopened) starts afresh."""
        with self._lock:
            db = self.db
            version = db.execute("PRAGMA data_version").fetchone()[0]
            seen, self._seen_version = self._seen_version, (db, version)
            changed = seen is not None and (seen[0] is not db or seen[1] != version)
            if changed:
                self._invalidate()
        if changed and self.on_outside_write is not None:
            self.on_outside_write()

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
        """Searchable templates (active customers, current model), including other processes' latest writes."""
        self._notice_other_writers()
        if not self.matcher.loaded:
            self._load()
        return self.matcher.size

    def load_matrix(self, matrix: np.ndarray, owners: list[str]) -> None:
        """Replace the in-memory search matrix (benchmarks feed it directly); see :meth:`Matcher.load`."""
        self.matcher.load(matrix, owners)

    def match(self, probes: np.ndarray, threshold: float, margin: float) -> list[Match]:
        """1:N search of ``(N, D)`` probes of the current model (other processes' latest writes included); see
        :meth:`Matcher.match`."""
        self._notice_other_writers()
        if not self.matcher.loaded:
            self._load()
        return self.matcher.match(probes, threshold, margin)

    def enrolled_as(self, embeddings: np.ndarray, threshold: float, margin: float, min_votes: int,
                    vote_share: float) -> Enrolled | None:
        """The active customer whose face new templates (a sign-up's) are, by the door's rule, or None.

        Each template is searched as the door searches a frame (accepted: score ≥ ``threshold`` and a lead of
        ``margin`` over the best other customer); the customer accepted most often wins when, as the tracker's vote
        asks of a track, they have at least ``min(min_votes, K)`` accepted templates and ``vote_share`` of the K.

        Args:
            embeddings: ``(K, D) float32`` unit vectors of the current model.
            threshold: the door's cosine threshold for this gallery (``OpenSetRule.threshold(size)``).
            margin: ``matcher.margin``.  min_votes, vote_share: ``tracker.min_votes``, ``tracker.vote_share``.
        """
        emb = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        return _vote(self.match(emb, threshold, margin), min_votes, vote_share)

    def enrolled_as_previous(self, embeddings: np.ndarray, sha256: str, margin: float, min_votes: int,
                             vote_share: float) -> Enrolled | None:
        """:meth:`enrolled_as` with a running upgrade's previous model: the active customer whose templates of that
        model new templates of it are (a sign-up's, embedded by that model too), by its calibrated rule
        (:attr:`previous_model`) for the number of those templates, ``margin`` and the same vote; or None, also when
        no upgrade of the model ``sha256`` runs (any more). A regular the upgrade has not migrated yet has only such
        templates: the current model's search cannot find them.

        Args:
            embeddings: ``(K, D') float32`` unit vectors of the previous model ``sha256``.
        Raises:
            sqlite3.Error: the gallery cannot be read.  ValueError: ``D'`` is not that model's size.
        """
        with self._lock:
            prev = self.previous_model
            if prev is None or prev.sha256 != sha256:
                return None
            matcher = Matcher()
            matcher.load(*self.matrix_for(prev.sha256, ("active",)))
            return _vote(matcher.match(np.atleast_2d(np.asarray(embeddings, dtype=np.float32)),
                                       prev.rule.threshold(matcher.size), margin), min_votes, vote_share)

    def refuse_if_regular(self, pending_id: str, threshold: float, margin: float, min_votes: int,
                          vote_share: float) -> None:
        """Raise :class:`AlreadyRegular` when a pending customer's current-model templates are an active customer's
        face (:meth:`enrolled_as`; the pending one itself is never searched). For :meth:`Gallery.activate`'s
        ``check``, which runs it under the gallery's lock.

        A pending customer with templates of a running upgrade's previous model (:attr:`previous_model`: signed up
        before the upgrade) is also checked with them against the active customers' templates of that model, by that
        model's calibrated rule for their number, ``margin`` and the same vote — also once migrated while pending,
        since the regular may not be migrated yet: a second record of a regular would keep the upgrade from migrating
        either of them.

        Raises:
            AlreadyRegular: the sign-up is an active customer's face.
            NoCurrentTemplate: it has only templates no running upgrade can check (nor migrate): re-enrol needed.
        """
        with self._lock:
            rows = self.templates(pending_id)
            current = [t["embedding"] for t in rows if t["model_sha256"] == self.model_sha256]
            found = self.enrolled_as(np.stack(current), threshold, margin, min_votes, vote_share) if current else None
            prev = self.previous_model
            old = [t["embedding"] for t in rows if prev is not None and t["model_sha256"] == prev.sha256]
            if found is None and old:  # also when migrated while pending: the regular may not be migrated yet
                found = self.enrolled_as_previous(np.stack(old), prev.sha256, margin, min_votes, vote_share)
            elif rows and not current and not old:
                raise NoCurrentTemplate(pending_id)
            if found is not None:
                raise AlreadyRegular(pending_id, self.customer(found.customer_id), found)
