"""A button hold's erasure of the sign-up its press stored (:class:`HeldSignups`, a part of
:class:`~dangol_edge.workers.enrolment.ButtonEnrolment`): out of the gallery, then out of the state file with its
``erasure-done`` report for the cloud, retried while the state file cannot be written."""

from __future__ import annotations

import logging
import sqlite3
import time

from ..gallery import UnknownCustomer
from .base import storage_state

log = logging.getLogger("dangol_edge.workers.enrolment")

REPORT_RETRY_S = 30.0
"""Seconds between tries to record a sign-up erased by a button hold for the cloud (``erasure-done``) while the state
file cannot be written (the housekeeping pass's default interval is of the same order)."""


class HeldSignups:
    """The hold's erasure steps of :class:`~dangol_edge.workers.enrolment.ButtonEnrolment` (its attributes:
    ``gallery``, ``outbox``, ``events``, ``upgrade``, ``_press``, ``_stored``, ``_unreported``, ``_retry_at``, and its
    ``_finish`` / ``_storage``); run on the recognition thread."""

    def _discard(self, customer_id: str) -> None:
        """Erase the pending customer a held press's sign-up stored, as the staff page's "Discard" does: out of the
        gallery with the record of its report for the cloud in the same transaction
        (:meth:`~dangol_edge.gallery_expiry.GalleryExpiry.delete_reported`), then out of the state file in one
        transaction with its ``erasure-done`` report (:meth:`_report`). A pending customer is never searched or greeted;
        a running model upgrade may hold its previous-model templates (:mod:`dangol_edge.signup_previous`) and forgets
        them. One already activated on the staff page is left alone; one the staff page discarded meanwhile is gone
        already.

        Raises:
            sqlite3.Error: the gallery cannot be read; nothing is erased.
        """
        self._press = self._stored = None
        try:
            status = self.gallery.customer(customer_id).status
        except UnknownCustomer:
            status = None
        if status == "active":
            log.warning("button held, but sign-up %s was activated on the staff page meanwhile: not erased",
                        customer_id)
            return
        if status == "pending":
            try:
                self.gallery.delete_reported(customer_id)
            except sqlite3.OperationalError as exc:  # disk full / read-only: it stays, staff can discard it later
                self._storage(storage_state(exc))
                log.error("button held, but sign-up %s could not be erased (%s): it stays pending; discard it on the "
                          "staff page", customer_id, exc)
                return
            if self.upgrade is not None:
                self.upgrade.forget(customer_id)  # never raises
            self._report(customer_id)
        self._finish("cancelled", seconds=3)
        log.info("sign-up %s cancelled by holding the button: erased", customer_id)

    def _report(self, customer_id: str) -> None:
        """Record the erasure of ``customer_id`` for the cloud in the state file, then forget the gallery's record of
        it (:meth:`~dangol_edge.gallery_expiry.GalleryExpiry.erasure_reported`). When the state file cannot be written,
        it is retried every :data:`REPORT_RETRY_S` s (:meth:`_retry_reports`) and the gallery's record stays: a daemon
        stopped before the retry succeeds reports it at its next start (the housekeeping worker,
        :meth:`~dangol_edge.gallery_expiry.GalleryExpiry.unreported_erasures`)."""
        try:
            self.outbox.erase([customer_id], [self.events.erasure_done([customer_id])])
        except sqlite3.Error as exc:
            self._storage(storage_state(exc))
            self._unreported[customer_id] = None
            self._retry_at = time.monotonic() + REPORT_RETRY_S
            log.error("the erasure of sign-up %s could not be recorded for the cloud (%s); retried every %.0f s, and "
                      "kept in the gallery for the next start meanwhile", customer_id, exc, REPORT_RETRY_S)
            return
        self.gallery.forget_report(customer_id)

    def _retry_reports(self) -> None:
        if self._unreported and time.monotonic() >= self._retry_at:
            for customer_id in list(self._unreported):
                del self._unreported[customer_id]
                self._report(customer_id)

