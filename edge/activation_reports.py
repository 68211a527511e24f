"""Activations the cloud has not heard of yet: the gallery's ``activation_reports`` table (``customer_id``, the primary
key), as ``erasure_reports`` is for erasures (:mod:`dangol_edge.gallery_expiry`).

:meth:`~dangol_edge.gallery.Gallery.activate` records the customer in the same transaction that makes them active, so
an activation whose report is lost — the state file has a damaged page (``sqlite3.DatabaseError``), the stored consent
record cannot be read (``ValueError``), the daemon is killed before the report — is still known; the record goes once
the ``enrolment`` event is written to the outbox (at once, or by :meth:`~dangol_edge.events.Outbox.retry` after it was
held in memory), and the daemon's next start reports every activation still recorded
(:func:`report_unreported_activations`). A record that cannot be cleared stays: the cloud hears of the activation once
more, never less (it refuses the repeat of an activation it already has, which changes nothing there).
"""

from __future__ import annotations

import logging
import sqlite3

import sqlite_utils
from pydantic import ValidationError

from .events import EventFactory, EventNotSaved, Outbox

log = logging.getLogger(__name__)

TABLE = "activation_reports"


def create_table(db: sqlite_utils.Database) -> None:
    """Create ``activation_reports`` in a gallery file that has none (older galleries)."""
    if TABLE not in db.table_names():
        db[TABLE].create({"customer_id": str}, pk="customer_id")


class ActivationReports:
    """A mixin of :class:`~dangol_edge.gallery.Gallery` (needs its ``db`` and ``_lock``)."""

    def unreported_activations(self) -> list[str]:
        """Ids of customers activated here whose activation no outbox has taken yet, oldest first.

        Raises:
            sqlite3.Error: the gallery cannot be read."""
        with self._lock:
            return [r[0] for r in self.db.execute(f"SELECT customer_id FROM {TABLE} ORDER BY rowid")]

    def activation_reported(self, customer_id: str) -> None:
        """The activation of ``customer_id`` is written to the outbox (or they are no longer active): forget it.

        Raises:
            sqlite3.Error: the gallery cannot be written (the record stays)."""
        with self._lock:
            self.db.execute(f"DELETE FROM {TABLE} WHERE customer_id = ?", [customer_id])

    def forget_activation_report(self, customer_id: str) -> None:
        """:meth:`activation_reported`; a record that cannot be cleared now stays (logged): the next start reports the
        activation once more."""
        try:
            self.activation_reported(customer_id)
        except sqlite3.Error as exc:
            log.warning("the activation of %s is queued for the cloud, but the gallery's record of it could not be "
                        "cleared (%s): the next start reports it again", customer_id, exc)


def report_activation(gallery, outbox: Outbox, events: EventFactory, customer) -> None:
    """Queue the ``enrolment`` event (status ``active``) of ``customer`` (a :class:`~dangol_edge.gallery.Customer`)
    for the cloud; the gallery's record of the activation is cleared once the event is written.

    Raises:
        EventNotSaved: the outbox cannot be written now: the event is held in memory and retried (the record is
            cleared when the retry writes it, and stays if the daemon stops first).
        ValueError: the customer has no valid consent record (nothing sent; the record stays).
        sqlite3.Error: the state file failed otherwise, e.g. a damaged page (nothing held; the record stays and the
            next start reports the activation).
    """
    event = events.activated(customer.id, customer.display_name, customer.consent)
    outbox.send(event, on_saved=lambda: gallery.forget_activation_report(customer.id))


def report_unreported_activations(gallery, outbox: Outbox, events: EventFactory) -> int:
    """At the daemon's start: report each activation still recorded (:func:`report_activation`); a customer erased
    or no longer active since is forgotten (their erasure is reported on its own). Never raises: whatever fails for
    one record — the gallery cannot be read (``sqlite3.Error``), the customer's stored name cannot be opened
    (``GalleryKeyError``: another key, a damaged value) or is not UTF-8 (``ValueError``), the consent record is
    invalid, the state file fails — is logged with the customer's id (never a name), the record stays for the next
    start, and the next record is tried. Returns the activations queued (written or held)."""
    try:
        ids = gallery.unreported_activations()
    except Exception as exc:  # sqlite3.Error (a damaged page …)
        log.error("the gallery's record of activations not yet reported cannot be read (%s: %s): reported at a "
                  "later start", type(exc).__name__, exc)
        return 0
    done = 0
    for customer_id in ids:
        try:
            customer = gallery.customer(customer_id)
        except KeyError:  # UnknownCustomer: erased since
            customer = None
        except Exception as exc:  # sqlite3.Error, GalleryKeyError, UnicodeDecodeError …: this record only
            log.error("activation of %s not reported: the customer cannot be read from the gallery (%s: %s); kept "
                      "and tried again at the next start", customer_id, type(exc).__name__, _reason(exc))
            continue
        try:
            if customer is None or customer.status != "active":
                gallery.forget_activation_report(customer_id)
                continue
            report_activation(gallery, outbox, events, customer)
        except EventNotSaved as exc:
            log.error("activation of %s reported again: %s", customer_id, exc)
        except Exception as exc:  # ValueError (no valid consent), sqlite3.Error (the state file) …
            log.error("the activation of %s still cannot be reported to the cloud (%s: %s): tried again at the next "
                      "start", customer_id, type(exc).__name__, _reason(exc))
            continue
        else:
            log.info("activation of %s queued for the cloud (its report was lost earlier)", customer_id)
        done += 1
    return done


def _reason(exc: Exception) -> str:
    """Why, without the value that failed: a ``UnicodeDecodeError`` names its bytes and pydantic's
    ``ValidationError`` its input (a customer's name)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)
