"""Model upgrades that keep every regular: templates move to a new embedder without re-enrolment.

Templates are tagged with the sha256 of the embedder that made them, and only the current model's are
searched. When a device gets a new model (say FaceNet → SFace), ``embedder.previous_model_path`` names
the old one. While the upgrade runs, a face that the new model does not recognise is also embedded by the
old model and searched among the old templates; when the old model recognises it *confidently* (its own
calibrated rule at a ten times stricter FPIR, and the margin), the new model's embedding of the same
face in the same frame is added as a template of that customer. Doubtful matches never add a template.

The upgrade ends (old templates deleted, old model released) once every active customer who had an old
template has a new one, or ``embedder.upgrade_days`` after it started, whichever comes first; customers
not seen by then must be re-enrolled (the log and ``dangol-edge customers list`` show who). The daemon's
housekeeping calls :meth:`ModelUpgrade.check` on every pass, so the deadline holds while the daemon keeps running.

An erasure while the upgrade runs (staff page, cloud, retention) drops the customer's old templates from the
upgrade's in-memory matcher too (:meth:`ModelUpgrade.forget`); one erased elsewhere (the CLI, another process)
is dropped the first time the old model recognises them.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

import numpy as np

from .align import align_face
from .calibration import OpenSetRule, load_calibration, uncalibrated
from .embed import Embedder
from .faces import Face
from .gallery import Gallery, UnknownCustomer
from .matcher import Match, Matcher

log = logging.getLogger(__name__)

STARTED_KEY = "upgrade_started_at"
#: The old model must accept a face at this fraction of the configured FPIR to migrate it.
STRICTER = 0.1


class ModelUpgrade:
    """Migrates customers from a previous embedder's templates to the current one's.

    Args:
        gallery: the open gallery (its ``model_sha256`` is the new model's).
        previous: the old embedder (its file must still be on the device).
        target_fpir, margin: the matcher settings; the old model must pass ``target_fpir × STRICTER``.
        max_days: how long the upgrade may run.
        max_templates: new-model templates kept per customer.

    Raises (from :meth:`start`):
        CalibrationError: the old model has no calibration file. A migration is never judged on a fixed
            threshold: ``matcher.threshold`` is on the *new* model's scale, and a wrong one migrates a stranger's
            face into a regular's templates.

    Attributes:
        erased_dropped: customers the old model recognised after they were erased from the gallery (dropped
            from the matcher instead of migrated).
        reload_failures: reloads of the old templates after an erasure that failed (see :meth:`forget`).
    """

    def __init__(self, gallery: Gallery, previous: Embedder, target_fpir: float, margin: float,
                 max_days: float, max_templates: int = 5):
        self.gallery, self.previous = gallery, previous
        self.target_fpir, self.margin = target_fpir, margin
        self.max_days, self.max_templates = max_days, max_templates
        self.matcher = Matcher()
        self.migrated: list[str] = []
        self.done = False
        self.erased_dropped = 0
        self.reload_failures = 0
        self._loaded: frozenset[str] = frozenset()
        self._rule: OpenSetRule | None = None
        # check() runs on the recognition and housekeeping threads, forget() on whichever erased: reloads and the
        # end of the upgrade are serialised, so a reload read before an erasure never lands after its forget()
        self._lock = threading.RLock()

    def start(self, now: datetime | None = None) -> "ModelUpgrade":
        """Load the old templates and record when the upgrade started (first run only)."""
        now = now or datetime.now(timezone.utc)
        if self.gallery.meta(STARTED_KEY) is None:
            self.gallery.set_meta(STARTED_KEY, now.isoformat(timespec="seconds"))
        tail = load_calibration(self.previous.model_path, self.previous.sha256)
        if tail is None:
            raise uncalibrated(self.previous.model_path, upgrade=True)
        self._rule = OpenSetRule(tail, self.target_fpir * STRICTER)
        self._reload()
        self.check(now)
        return self

    def _reload(self) -> None:
        """Load the old-model templates of the active customers (the matcher swaps them in at once, so a search
        on the recognition thread meanwhile sees the old set or the new one)."""
        with self._lock:
            if self.done:
                return
            matrix, owners = self.gallery.matrix_for(self.previous.sha256)
            self.matcher.load(matrix, owners)
            self._loaded = frozenset(owners)

    @property
    def loaded(self) -> frozenset[str]:
        """Customers whose old-model templates are in memory (searched by :meth:`observe`)."""
        return self._loaded

    def forget(self, customer_id: str) -> None:
        """Drop an erased customer's old templates from memory (call after the gallery erased them). Never
        raises: when the gallery cannot be read back, every old template leaves memory (the erasure wins;
        counted in ``reload_failures``) and the next :meth:`observe` reloads them."""
        with self._lock:
            if self.done or customer_id not in self._loaded:
                return
            try:
                self._reload()
            except Exception:
                self.matcher.clear()
                self._loaded = frozenset()
                self.reload_failures += 1
                log.exception("model upgrade: cannot reload the old templates after erasing %s; all dropped "
                              "from memory until the next frame reloads them", customer_id)
                return
        log.info("model upgrade: erased customer %s dropped from the old model's templates", customer_id)

    def pending(self) -> set[str]:
        """Active customers with an old-model template and no new-model template."""
        models = self.gallery.template_models()
        old, new = self.previous.sha256, self.gallery.model_sha256
        active = {c.id for c in self.gallery.customers("active")}
        return {cid for cid, m in models.items() if cid in active and m.get(old) and not m.get(new)}

    def check(self, now: datetime | None = None) -> bool:
        """End the upgrade when everyone is migrated or the period is over. Returns True when done.

        Raises:
            sqlite3.Error: the gallery cannot be read or written (the upgrade goes on; the next check retries).
        """
        with self._lock:
            return self._check(now)

    def _check(self, now: datetime | None) -> bool:
        if self.done:
            return True
        now = now or datetime.now(timezone.utc)
        started = datetime.fromisoformat(self.gallery.meta(STARTED_KEY) or now.isoformat())
        left = self.pending()
        if left and now - started < timedelta(days=self.max_days):
            return False
        if left:
            log.warning("model upgrade ended after %.0f days: %d customers not seen were not migrated and must be "
                        "re-enrolled: %s", self.max_days, len(left), ", ".join(sorted(left)))
        dropped = self.gallery.drop_other_models()
        self.gallery.set_meta(STARTED_KEY, None)
        log.info("model upgrade finished: %d customers migrated, %d old templates deleted", len(self.migrated), dropped)
        self.done = True
        self.matcher.clear()
        self._loaded = frozenset()
        return True

    def observe(self, rgb: np.ndarray, faces: list[Face], matches: list[Match | None]) -> list[str]:
        """Try the old model on the faces the new model embedded but did not accept.

        Args:
            rgb: the frame, ``(H, W, 3) uint8`` RGB; faces/matches: the new model's results for it.
        Returns:
            ids of the customers who got a new-model template from this frame.
        """
        if self.done:
            return []
        if not self.matcher.loaded:  # emptied by a failed forget()
            self._reload()
        if self.matcher.size == 0:
            return []
        todo = [(f, m) for f, m in zip(faces, matches) if f.embedding is not None and not (m and m.accepted)]
        if not todo:
            return []
        spec = self.previous.spec
        crops = np.stack([align_face(rgb, f.detection.keypoints, spec, f.detection.corners) for f, _ in todo])
        old = self.matcher.match(self.previous.embed(crops), self._rule.threshold(self.matcher.size), self.margin)
        added = []
        for (face, _), m in zip(todo, old):
            if not m.accepted:
                continue
            try:
                self.gallery.add_templates(m.customer_id, face.embedding[None], [face.quality],
                                           max_per_model=self.max_templates)
            except UnknownCustomer:  # erased since the old templates were loaded (e.g. by the CLI)
                self.erased_dropped += 1
                log.warning("model upgrade: customer %s was erased; dropped from the old model's templates "
                            "(%d so far)", m.customer_id, self.erased_dropped)
                self._reload()
                continue
            added.append(m.customer_id)
            log.info("model upgrade: customer %s migrated (old model score %.3f)", m.customer_id, m.score)
        if added:
            self.migrated += [c for c in added if c not in self.migrated]
            self.check()
        return added
