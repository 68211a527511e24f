"""``dangol-edge enroll`` while a model upgrade runs: the photos or frames are seen by the previous model too.

A regular the upgrade has not migrated yet has templates of the previous model only (the door does not greet them
yet), so the current model's "already a regular" check cannot find them: the command stored a second record, the door
greeted it from then on and the upgrade never migrated the real one. So, as at the door
(:mod:`dangol_edge.signup_previous`), while an upgrade runs on the gallery (:func:`upgrade_previous`):

* each good face is also aligned for the previous model (:class:`PreviousCrops`), the samples embedded by it
  (:func:`~dangol_edge.signup_previous.embed_samples`) and checked against the active customers' templates of that
  model by its calibrated rule (:meth:`~dangol_edge.enrol.DoorRule.find`): a regular's face is refused, naming them;
* a customer stored keeps those templates too (:func:`~dangol_edge.signup_previous.keep_previous_or_erase`), for a
  later activation check (:meth:`~dangol_edge.gallery_search.GallerySearch.refuse_if_regular`); the upgrade drops
  them with every other template of that model when it ends.

Without an upgrade nothing changes. The command never starts one (nor writes its start): the daemon does.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np

from .calibration import CalibrationError, pipeline_of
from .embed import Embedder
from .gallery_models import previous_embedder
from .signup_previous import previous_crop
from .upgrade import previous_door_model

log = logging.getLogger(__name__)


def upgrade_previous(cfg, gallery) -> Embedder | None:
    """The previous model's :class:`~dangol_edge.embed.Embedder` while a model upgrade runs on ``gallery`` (an open
    :class:`~dangol_edge.gallery.Gallery` of the current model): the config ``cfg`` names
    ``embedder.previous_model_path``, it is another model, and the gallery still holds templates of it (as
    :meth:`~dangol_edge.recognition.Recognizer.from_config` decides that an upgrade runs). Sets the gallery's
    ``previous_model`` (its calibrated rule at the door's FPIR, :func:`~dangol_edge.upgrade.previous_door_model`).
    Else None, the previous model's file not opened unless the gallery holds templates of another model than the
    current one (:func:`~dangol_edge.gallery_models.previous_embedder`: one deleted after its upgrade ended is fine);
    also None, logged as a warning, when the previous model has no usable calibration, or one measured with another
    pipeline than this config runs in front of it (the daemon does not start then; enrolments are not checked against
    the regulars not migrated yet, as :meth:`~dangol_edge.enrol.DoorRule.or_none` does for the current model).

    Raises:
        ModelError: the gallery holds templates of another model and the previous model's file is missing (named).
        sqlite3.Error: the gallery cannot be read.
    """
    if cfg.embedder.previous_model_path is None:
        return None
    others = gallery.other_models()
    old = previous_embedder(cfg, others)
    if old is None or not others.get(old.sha256):
        return None
    try:
        gallery.previous_model = previous_door_model(old, cfg.matcher.target_fpir,
                                                     pipeline_of(cfg.detector, cfg.model_path, old.spec))
    except CalibrationError as exc:
        log.warning("enrolments are not checked against the regulars a model upgrade has not migrated yet: %s", exc)
        return None
    return old


class PreviousCrops:
    """A :class:`~dangol_edge.faces.FacePipeline` that also aligns each good face for a running upgrade's previous
    model (:func:`~dangol_edge.signup_previous.previous_crop`), for :func:`~dangol_edge.enrol.samples_from_photos` and
    :func:`~dangol_edge.enrol.samples_from_source`; :meth:`attach` gives their samples those crops. With no previous
    model (``embedder`` None) it is the pipeline. Other attributes are the pipeline's.

    The crops are held while their face's embedding lives (the samples kept), so memory stays at the samples' pool.
    """

    def __init__(self, pipeline, embedder: Embedder | None):
        self.pipeline, self.embedder = pipeline, embedder
        self._crops: dict[int, tuple[weakref.ref, np.ndarray]] = {}  # id(face.embedding) -> (its ref, the crop)

    def __getattr__(self, name: str):
        return getattr(self.pipeline, name)

    def process(self, rgb: np.ndarray, **kwargs) -> list:
        """:meth:`~dangol_edge.faces.FacePipeline.process`, keeping each embedded face's previous-model crop
        (``(S', S', 3) uint8``). Raises what the pipeline or the alignment raises."""
        faces = self.pipeline.process(rgb, **kwargs)
        if self.embedder is not None:
            self._crops = {k: v for k, v in self._crops.items() if v[0]() is not None}
            for f in faces:
                if (crop := previous_crop(self.embedder, rgb, f)) is not None:
                    self._crops[id(f.embedding)] = (weakref.ref(f.embedding), crop)
        return faces

    def attach(self, samples: list) -> list:
        """Set each :class:`~dangol_edge.enrol.Sample`'s ``previous_crop`` from the face it was made of (None when
        there is no previous model); returns ``samples``."""
        for s in samples:
            ref, crop = self._crops.get(id(s.embedding), (None, None))
            if ref is not None and ref() is s.embedding:
                s.previous_crop = crop
        return samples

    def close(self) -> None:
        """Close the pipeline and drop the crops."""
        self._crops = {}
        self.pipeline.close()
