"""The staff page's erasures (erase a regular, discard a sign-up): the gallery's deletion, with the record of the
report the cloud must get in the same transaction, and that report (the daemon's ``on_erase``).

A report the state file cannot take now (disk full, read-only, locked) is not lost: the gallery keeps its record
(:meth:`~dangol_edge.gallery_expiry.GalleryExpiry.unreported_erasures`), the daemon's housekeeping passes retry it,
and a daemon stopped before they could reports it at its next start, as it does for retention and expired sign-ups.
The customer's face is erased at once whatever the cloud hears and when; when the gallery itself cannot be written,
nothing is erased and staff are told so (the route's ``cannot_save``).
"""

from __future__ import annotations

import logging

from flask import flash

from .deps import deps

log = logging.getLogger(__name__)

#: What staff are told when an erasure's report for the cloud could not be queued (the gallery keeps it).
ERASURE_NOT_SENT = ("telling the cloud failed for now (this device cannot write its storage). The erasure is recorded "
                    "on this device and the cloud is told as soon as the storage works again, also after a restart; "
                    "check the device's storage if this repeats.")


def erase_here(customer_id: str) -> None:
    """Erase a customer from the gallery for the staff page. With the daemon to report it (``on_erase``) the same
    transaction records the report (:meth:`~dangol_edge.gallery_expiry.GalleryExpiry.delete_reported`): a report the
    state file cannot take now is sent by the housekeeping passes, or by the next start if the daemon stops first.

    Raises:
        UnknownCustomer: no such id.  sqlite3.Error: the gallery cannot be written (nothing erased).
    """
    d = deps()
    if d.on_erase is not None:
        d.gallery.delete_reported(customer_id)
    else:
        d.gallery.delete(customer_id)


def after_erase(customer_id: str, verb: str, who: str) -> None:
    """Tell the cloud of an erasure :func:`erase_here` made (``on_erase``), then forget the gallery's record of it;
    flash what happened. A report that fails stays recorded (the housekeeping passes and the next start send it)."""
    d = deps()
    if d.on_erase is not None:
        try:
            d.on_erase(customer_id)
        except Exception as exc:
            log.error("reporting the erasure of %s failed: %s; kept in the gallery and reported once the state file "
                      "can be written (also after a restart)", customer_id, exc)
            flash(f"{verb} {who} on this device, but {ERASURE_NOT_SENT}", "warning")
            return
        d.gallery.forget_report(customer_id)
    flash(f"{verb} {who}.", "success")
