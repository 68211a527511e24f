"""A store's own time zone (routes on the ``stores`` blueprint): set at once when the store holds no imported sales
read in its old zone; else, once the owner confirms, applied by a background job (:mod:`dangol_cloud.zone_jobs`)
whose page shows the sales being moved, then the outcome or the error."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy.exc import OperationalError

import dangol_protocol as proto
from dangol_cloud.app import get_db, get_session, get_settings
from dangol_cloud.models import Store, StoreSetting
from dangol_cloud.sale_locks import busy_message, try_hold_sale_keys
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.forms import ActionForm
from dangol_cloud.web.stores import bp
from dangol_cloud.zone_jobs import ZoneJobs

__all__ = ["zone_jobs"]


def zone_jobs() -> ZoneJobs:
    """The app's :class:`~dangol_cloud.zone_jobs.ZoneJobs` (made on first use)."""
    return current_app.extensions.setdefault("dangol_zone_jobs", ZoneJobs())


def _busy(store: Store) -> str | None:
    """Why no zone can change now (a zone change or a dashboard import is running), or None."""
    running = zone_jobs().running()
    if running is not None:
        return (f"{store.name} keeps its time zone for now: {running.store_name}'s change to {running.after} is being "
                "applied. Change it once that is done (its progress is on its page).")
    imports = current_app.extensions.get("dangol_import_jobs")
    if imports is not None and imports.running() is not None:
        return (f"{store.name} keeps its time zone for now: an import is running, and it reads the sales in the zones "
                "in force when it started. Change the zone once the import has finished.")
    return None


@bp.route("/<store_id>/timezone", methods=["POST"])
@owner_required
def set_timezone(store_id: str):
    """POST /stores/<id>/timezone: the store's IANA time zone (e.g. Asia/Taipei) for a chain across zones; empty =
    the TIMEZONE setting. Its later imports read naive sale times in it, training reads its sales' hours in it and
    its doors get it (their day-part clock) with the next publish (:mod:`dangol_cloud.store_zones`).

    A store without imported sales whose file times were naive gets the zone at once. One holding some first gets a
    confirmation page saying how many and from which zone to which (nothing changed); the confirmed post
    (``confirm=yes``) starts a background job (:class:`~dangol_cloud.zone_jobs.ZoneJobs`) that sets the zone and
    moves those sales to the same wall-clock hours in the new zone, re-keyed, in one transaction
    (:func:`dangol_cloud.sale_zones.change_store_zone`): a re-import of the same files then adds nothing. It answers
    at once, 303 to the job's page. POS API sales and file times given with their offset are instants and stay.

    Refused (a flash, nothing changed) while a zone change or a dashboard import runs, and for a name that is not an
    IANA zone. The zone set at once first takes the sale-keys lock (:mod:`dangol_cloud.sale_locks`) without waiting:
    refused while an import of any process holds it (its lines, read in the old zone, would not move), then the
    store's naive lines are counted again. 404 for an unknown store, 400 without a valid CSRF token."""
    from dangol_cloud.sale_zones import naive_lines
    from dangol_cloud.web.confirm import confirmation_page

    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    store = s.get(Store, store_id) or abort(404)
    if (busy := _busy(store)) is not None:
        flash(busy, "error")
        return redirect(url_for("stores.index"))
    name = (request.form.get("timezone") or "").strip()
    if name:
        try:
            proto.check_zone(name)
        except ValueError as exc:
            flash(f"Time zone: {exc}. Use a name of the IANA list, e.g. Europe/Berlin or Asia/Taipei.", "error")
            return redirect(url_for("stores.index"))
    row = s.get(StoreSetting, store.id) or StoreSetting(store_id=store.id)
    default = get_settings().timezone
    before, now = row.timezone or default, name or default
    naive = naive_lines(s, store.id) if now != before else 0
    if not naive and now != before:  # counted again once no import can write lines read in the old zone
        try:
            if not try_hold_sale_keys(s):
                flash(f"{store.name} keeps its time zone for now: an import is running (perhaps from another "
                      "process), and it reads the sales in the zones in force when it started. Change the zone once "
                      "the import has finished.", "error")
                return redirect(url_for("stores.index"))
        except OperationalError as exc:
            if (busy := busy_message(exc)) is None:
                raise
            s.rollback()
            flash(f"{store.name} keeps its time zone for now: {busy}.", "error")
            return redirect(url_for("stores.index"))
        naive = naive_lines(s, store.id)
        if naive:  # an import wrote some meanwhile: confirmed, they move in the job (which takes the lock itself)
            s.rollback()
    if not naive:  # nothing of this store moves: set at once
        row.timezone = name or None
        s.add(row)
        s.commit()
        flash(f"{store.name}: sales hours and door day-parts follow {now}. Its doors get it with the next Publish "
              "(Menu catalogue).", "success")
        return redirect(url_for("stores.index"))
    detail = (f"Its {naive:,} imported sales whose files gave no time zone were read as {before} time. They move "
              f"to the same hours in {now} (a sale at 09:00 stays at 09:00, now {now} time), so the dashboard and "
              "training see them at the right hours and importing the same files again adds nothing. POS sales "
              "and file times given with their offset stay as they are. On a long history this takes a few "
              "minutes: the next page shows its progress.")
    if request.form.get("confirm") != "yes":  # shown on the confirmation page (flashed before it renders)
        flash(f"{store.name} keeps {before} until you confirm: it holds {naive:,} imported sales whose file times "
              f"were read as {before} time (a zone set before its first import moves nothing).", "error")
    page = confirmation_page(title=f"Move {store.name}'s sales to {now} time?", detail=detail,
                             button=f"Set {now} and move the sales", cancel_url=url_for("stores.index"),
                             keep=[("timezone", name)])
    if page is not None:
        return page
    job = zone_jobs().start(get_db(), default, store_id=store.id, store_name=store.name, zone=name or None,
                            before=before, after=now, total=naive, started_by=current_user.id)
    if job is None:  # another owner's change started meanwhile
        flash(_busy(store) or f"{store.name} keeps its time zone for now: another change is being applied.", "error")
        return redirect(url_for("stores.index"))
    return redirect(url_for("stores.zone_job", job_id=job.id), 303)


@bp.route("/zone-jobs/<job_id>")
@owner_required
def zone_job(job_id: str):
    """GET /stores/zone-jobs/<id>: a zone change's progress (sales moved, per second, time left; the page reloads
    itself every 2 s while it runs, without JavaScript), then what moved, or the error (nothing changed). 404 for
    an unknown job (a restart forgets them)."""
    job = zone_jobs().get(job_id) or abort(404)
    return render_template("zone_job.html", job=job)
