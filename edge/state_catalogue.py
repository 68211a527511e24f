"""The ``catalogue`` table of :class:`~dangol_edge.state.StateStore`: the newest ``catalogue/1`` snapshot received.

One row (``id = 1``): ``version``, ``payload`` (the snapshot's JSON text), ``received_at`` (ISO-8601 UTC, when it was
stored). An older version never replaces a newer one (retained messages can arrive out of order after a reconnect);
the same version replaces it only with other content (``published_at`` aside): the cloud re-publishes the newest
version with a store's current currency, zone and store prices (``cloud/publishing.py``) without a new number.

So the version number does not say whether the content changed: the **revision** does
(:meth:`CatalogueTable.catalogue_with_revision`), a digest of the stored JSON text that every stored change of
content changes, the same one version corrected included. The door's page and its event stream key on it
(:mod:`dangol_edge.web.menu`), so a correction reaches the screen within a poll.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from dangol_protocol import Catalogue

log = logging.getLogger(__name__)

#: Hex digits of the payload's SHA-256 kept as the revision (64 bits: a collision between two successive contents
#: of one store's catalogue is out of reach).
REVISION_HEX = 16


def revision_of(payload: str) -> str:
    """The revision of a stored ``catalogue/1`` JSON text: the first :data:`REVISION_HEX` hex digits of its SHA-256."""
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:REVISION_HEX]


class CatalogueTable:
    """The catalogue half of :class:`~dangol_edge.state.StateStore` (a mixin: it uses the store's ``db``, ``_lock`` and
    ``path``).

    Attributes:
        catalogue_read_errors: cached catalogues that could not be read (each logged once; the next one replaces it).
    """

    def _init_catalogue(self) -> None:
        """Attributes only (no I/O): called by the store's constructor."""
        self._catalogue: Catalogue | None = None  # the parsed cached catalogue (parsed once per stored row)
        self._catalogue_row: tuple | None = None  # (version, received_at) of the row it was parsed from
        self._catalogue_revision: str | None = None  # its revision (:func:`revision_of`)
        self._unreadable_row: tuple | None = None  # (version, received_at) of the cached row that did not parse
        self.catalogue_read_errors = 0

    @staticmethod
    def _create_catalogue(db) -> None:
        """Create the table (a new file has none)."""
        if "catalogue" not in db.table_names():
            db["catalogue"].create({"id": int, "version": int, "payload": str, "received_at": str}, pk="id")

    def put_catalogue(self, catalogue: Catalogue | Mapping[str, Any]) -> bool:
        """Store a ``catalogue/1`` snapshot if it is newer than the cached one, or of the same version with other
        content (a correction the cloud published without a new version, e.g. the store's currency changed: a new
        revision, :meth:`catalogue_with_revision`), or if the cached one cannot be read (any version then replaces
        it: the cloud re-publishing the same version heals a damaged cache); returns True if stored.

        Args:
            catalogue: the protocol object (from :func:`dangol_protocol.parse_payload`) or a payload dict,
                validated here.

        Raises:
            pydantic.ValidationError: a dict that is not a valid ``catalogue/1``.
            sqlite3.Error: the file cannot be written (disk full, locked by another writer; nothing is stored).
        """
        cat = catalogue if isinstance(catalogue, Catalogue) else Catalogue.model_validate(catalogue)
        payload = cat.model_dump_json(by_alias=True)
        with self._lock:
            row = self.db.execute("SELECT version, payload FROM catalogue WHERE id = 1").fetchone()
            if row and self._cached_catalogue() is not None and (
                    row[0] > cat.version or (row[0] == cat.version and _same_content(row[1], payload))):
                return False
            received = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            self.db["catalogue"].upsert({"id": 1, "version": cat.version, "payload": payload,
                                         "received_at": received}, pk="id")
            self._catalogue, self._catalogue_row = cat, (cat.version, received)
            self._catalogue_revision = revision_of(payload)
        return True

    def catalogue(self) -> Catalogue | None:
        """The cached :class:`dangol_protocol.Catalogue`, or None before the first one arrives (or if the
        cached row cannot be read as one: logged once per stored row and counted in :attr:`catalogue_read_errors`).
        Parsed once per stored row (the screen asks every second).

        Raises:
            sqlite3.Error: the database itself cannot be read."""
        with self._lock:
            return self._cached_catalogue()

    def catalogue_with_revision(self) -> tuple[Catalogue | None, str | None]:
        """(:meth:`catalogue`, its revision) read together: the revision (:func:`revision_of` the stored JSON, a
        16-character hex string) changes whenever another content is stored, also under the same version; (None,
        None) when :meth:`catalogue` is None.

        Raises:
            sqlite3.Error: the database itself cannot be read."""
        with self._lock:
            cat = self._cached_catalogue()
            return cat, self._catalogue_revision if cat is not None else None

    def catalogue_status(self) -> str | None:
        """``ok`` while a cached catalogue can be read, ``unreadable`` while the cached one cannot (the door shows
        no house menu until the next arrives), None before any arrived.

        Raises:
            sqlite3.Error: the database itself cannot be read."""
        if self.catalogue() is not None:
            return "ok"
        return "unreadable" if self.catalogue_read_errors else None

    def _cached_catalogue(self) -> Catalogue | None:
        """:meth:`catalogue` with the lock held: parsed again only when the stored row changed (its version and
        ``received_at``: also a same-version correction stored by another process)."""
        row = self.db.execute("SELECT version, received_at FROM catalogue WHERE id = 1").fetchone()
        if row is None:
            return None
        key = (row[0], row[1])
        if self._catalogue is not None and self._catalogue_row == key:
            return self._catalogue
        if self._unreadable_row == key:
            return None
        text = self.db.execute("SELECT payload FROM catalogue WHERE id = 1").fetchone()[0]
        try:
            self._catalogue = Catalogue.model_validate_json(text)
        except ValidationError as exc:
            self._catalogue = self._catalogue_row = self._catalogue_revision = None
            self._unreadable_row = key
            self.catalogue_read_errors += 1
            log.error("the cached catalogue (version %s) in %s cannot be read (%s); waiting for the next one",
                      row[0], self.path, exc.errors()[0].get("msg"))
            return None
        self._catalogue_row, self._catalogue_revision = key, revision_of(text)
        return self._catalogue


def _same_content(cached: str, payload: str) -> bool:
    """Whether two ``catalogue/1`` JSON texts list the same content (``published_at`` aside: a re-publication)."""
    a, b = json.loads(cached), json.loads(payload)
    a.pop("published_at", None)
    b.pop("published_at", None)
    return a == b
