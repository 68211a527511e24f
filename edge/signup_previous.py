"""A sign-up at the door while a model upgrade runs is seen by the previous model too.

A regular the upgrade has not migrated yet has templates of the previous model only, so the door does not greet them
— and is exactly the one likely to press the sign-up button. The sign-up's templates of the current model can never
meet theirs: the door's "already a regular" check (:meth:`~dangol_edge.enrol.DoorRule.find`) found nobody, a second
record was stored and activated, the door greeted it from then on, and the upgrade never migrated the real record
(the new model recognised the second one), which ended with no template.

So while an upgrade runs (:class:`~dangol_edge.upgrade.ModelUpgrade`, not done, and the gallery's
:attr:`~dangol_edge.gallery_search.GallerySearch.previous_model` is its model):

* each face the sign-up keeps is also aligned for the previous model (:func:`previous_crop`, on the recognition
  thread, which also runs the upgrade's own use of that model);
* the selected samples are embedded by the previous model (:func:`embed_previous`) and checked against the active
  customers' templates of that model by its calibrated rule (:meth:`~dangol_edge.enrol.DoorRule.find`): a regular's
  face ends the sign-up as ``already``, as without an upgrade;
* a sign-up stored keeps those templates too (:func:`keep_previous`), so staff's activation checks them against the
  regulars of that moment (:meth:`~dangol_edge.gallery_search.GallerySearch.refuse_if_regular`; e.g. a sign-up made
  before the upgrade and activated since), and the upgrade drops them with every other template of that model when it
  ends.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

import numpy as np

from .align import align_face

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviousSamples:
    """A sign-up's samples embedded by a running upgrade's previous model.

    Attributes:
        sha256: that model's.  embeddings: ``(K, D') float32`` unit vectors.  qualities: K values in [0, 1] (the
            samples').
    """

    sha256: str
    embeddings: np.ndarray
    qualities: list[float]

    @property
    def pair(self) -> tuple[str, np.ndarray]:
        """``(sha256, embeddings)``, as :meth:`~dangol_edge.enrol.DoorRule.find` takes them."""
        return self.sha256, self.embeddings


def previous_embedder(upgrade, gallery):
    """The previous model's :class:`~dangol_edge.embed.Embedder` of ``upgrade`` (a
    :class:`~dangol_edge.upgrade.ModelUpgrade` or None) while it runs and ``gallery`` checks sign-ups against that
    model (its ``previous_model``); else None."""
    if upgrade is None or upgrade.done:
        return None
    prev = gallery.previous_model
    return upgrade.previous if prev is not None and prev.sha256 == upgrade.previous.sha256 else None


def previous_crop(embedder, rgb: np.ndarray, face) -> np.ndarray | None:
    """``face`` (a :class:`~dangol_edge.faces.Face` of the ``(H, W, 3) uint8`` RGB frame ``rgb`` that passed every
    gate) aligned for ``embedder`` (:func:`previous_embedder`), or None without one or without a good face."""
    if embedder is None or face is None or face.embedding is None:
        return None
    return align_face(rgb, face.detection.keypoints, embedder.spec, face.detection.corners)


def embed_previous(upgrade, gallery, samples) -> PreviousSamples | None:
    """The ``samples`` (:class:`~dangol_edge.enrol.Sample`) that have a ``previous_crop``, embedded by the running
    upgrade's previous model; None when no upgrade runs (any more) or none has one (the capture began before it).

    Raises:
        Exception: what the previous model's interpreter raised.
    """
    return embed_samples(previous_embedder(upgrade, gallery), samples)


def embed_samples(embedder, samples) -> PreviousSamples | None:
    """The ``samples`` (:class:`~dangol_edge.enrol.Sample`) that have a ``previous_crop``, embedded by ``embedder`` (a
    running upgrade's previous model, :class:`~dangol_edge.embed.Embedder`); None without one or when none has one.

    Raises:
        Exception: what the previous model's interpreter raised.
    """
    kept = [s for s in samples if s.previous_crop is not None]
    if embedder is None or not kept:
        return None
    return PreviousSamples(embedder.sha256, embedder.embed(np.stack([s.previous_crop for s in kept])),
                           [s.quality for s in kept])


def keep_previous(gallery, customer_id: str, previous: PreviousSamples) -> None:
    """Store a new sign-up's templates of the previous model with it (one transaction).

    Raises:
        UnknownCustomer: the sign-up is gone (discarded meanwhile).  sqlite3.Error: the gallery cannot be written
            (nothing added).
    """
    gallery.add_templates(customer_id, previous.embeddings, previous.qualities, model_sha256=previous.sha256)


def keep_previous_or_erase(gallery, customer_id: str, previous: PreviousSamples) -> None:
    """:func:`keep_previous`, or erase the new customer when those templates cannot be written: a customer stored while
    the upgrade runs is never left without the templates a later "already a regular" check compares (the CLI's
    enrolment and the door's sign-up, :class:`~dangol_edge.workers.enrolment.ButtonEnrolment`).

    Raises:
        sqlite3.Error: from the write; the customer is erased (or, when that fails too, logged as an error and left
            without them).  UnknownCustomer: the customer is gone.
    """
    try:
        keep_previous(gallery, customer_id, previous)
    except sqlite3.Error:
        try:
            gallery.delete(customer_id)
        except Exception as undo:
            log.error("customer %s has no template of the previous model and could not be erased (%s): discard it on "
                      "the staff page or erase it (dangol-edge customers delete %s), and enrol them again", customer_id,
                      undo, customer_id)
        raise
