"""Purchases: recent list; upload of purchase files (several at once, format detected) imported as a background
job with a progress page and a row-level result report."""

from __future__ import annotations

import logging
import re
import tempfile
import unicodedata
from dataclasses import replace
from pathlib import Path, PurePosixPath

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from dangol_cloud.app import get_db, get_session, get_settings
from dangol_cloud.importers import ImportFormatError, detect_files
from dangol_cloud.jobs import ImportJobs
from dangol_cloud.models import CatalogueItem, Customer, Purchase, PurchaseImport, Store
from dangol_cloud.import_undo import later_imports, recent_imports, undo_import
from dangol_cloud.sale_locks import busy_message, try_hold_sale_keys
from dangol_cloud.web.forms import ActionForm, UploadForm, _choices
from dangol_cloud.web.params import page_arg
from dangol_cloud.web.scope import store_filter, store_scope

log = logging.getLogger(__name__)
bp = Blueprint("purchases", __name__, url_prefix="/purchases")
PAGE = 25
#: Longest uploaded file name shown (characters); a longer one is cut in the middle.
NAME_MAX = 100
#: The store choice "No store (history)" when the café has several stores (then "" means none was chosen).
HISTORY = "history"
#: Recorded uploads listed on the page (the newest).
IMPORTS_SHOWN = 10


def _recent(page: int):
    s = get_session()
    scope = store_filter(Purchase.store_id)  # staff: their stores' sales only
    where = [] if scope is None else [scope]
    total = s.scalar(select(func.count()).select_from(Purchase).where(*where))
    rows = s.execute(select(Purchase, CatalogueItem.name, Customer.display_name, Customer.external_ref)
                     .join(CatalogueItem, CatalogueItem.id == Purchase.item_id)
                     .join(Customer, Customer.id == Purchase.customer_id).where(*where)
                     .order_by(Purchase.ts.desc(), Purchase.id.desc()).limit(PAGE).offset((page - 1) * PAGE)).all()
    return rows, total


def import_jobs() -> ImportJobs:
    """The app's :class:`ImportJobs` (made on first use)."""
    return current_app.extensions.setdefault("dangol_import_jobs", ImportJobs())


@bp.route("/", methods=["GET", "POST"])
@login_required
def index():
    """GET /purchases/: recent purchases and the upload form; POST: upload one or more files (format detected
    from the headers, or checked against the chosen one) and start the import in the background → 303 to its
    progress page. 422 with the reason if the files cannot be imported at all (nothing is imported); 409 if an
    import is already running.

    Owners may import into any store or none (history; with a single store, that store is preselected; with several,
    none is: the owner must choose a store or "No store (history)", 422 without a choice). A file uploaded as history
    and then into a store files its store-less purchases under it, never twice (:mod:`dangol_cloud.import_match`).
    The page lists the newest recorded uploads with their "Undo this import" buttons (:func:`undo`). Staff
    choose one of their own stores (422 without one, 403 for another store); rows whose ``store`` column names a store outside theirs, or that name an existing
    customer who is not one of their stores' customers (:mod:`dangol_cloud.web.scope`), are row errors of the
    import (``allowed_stores``/``customers_in_scope`` of :func:`~dangol_cloud.ingest.import_rows`), and a
    demographics.csv sets only their stores' customers' age bands (:class:`~dangol_cloud.jobs.ImportJobs`)."""
    form = UploadForm()
    scope = store_scope()  # None: an owner, every store
    query = select(Store.id, Store.name).order_by(Store.name)
    if scope is not None:
        query = query.where(Store.id.in_(sorted(scope)))
    stores = get_session().execute(query).all()
    several = len(stores) > 1  # a chain: the store must be chosen (history too), never taken by default
    if several:
        form.store.choices = _choices([("", "Choose the store of these sales…")] + [(sid, name) for sid, name in stores]
                                      + ([(HISTORY, "No store (history)")] if scope is None else []))
    else:
        form.store.choices = _choices(([("", "No store (history)")] if scope is None else [])
                                      + [(sid, name) for sid, name in stores])
    if request.method == "GET":  # one store: its sales (its currency, zone, analytics); several: none chosen
        form.store.data = stores[0][0] if len(stores) == 1 else ""
    error = None
    status = 200
    valid = form.validate_on_submit()
    refusal = _refused_store(form.store.data, scope, stores) if valid else None
    if valid and refusal is None and scope is None and several and not form.store.data:
        refusal = ("Choose the store of these sales (or \"No store (history)\" for sales of no one store): with "
                   f"{len(stores)} stores none is taken by default. Nothing was imported.", 422)
    if refusal is not None:
        error, status = refusal
        log.warning("purchase upload refused: %s", error)
    elif valid:
        folder = tempfile.TemporaryDirectory(prefix="dangol-upload-")
        paths, names = [], []
        for n, upload in enumerate(form.file.data, start=1):
            path = Path(folder.name) / f"upload-{n}.csv"  # never the browser's name: it may be 300 bytes or hold NUL
            upload.save(path)
            paths.append(path)
            names.append(shown_name(upload.filename, n))
        try:
            detected = detect_files(paths, form.format.data)
            detected = replace(detected, notes=tuple(_as_uploaded(note, names) for note in detected.notes))
            store_id = form.store.data if form.store.data in {sid for sid, _ in stores} else None
            job = import_jobs().start(get_db(), get_settings(), detected, folder, files=names, store_id=store_id,
                                      allowed_stores=scope, started_by=current_user.id)
        except ImportFormatError as exc:
            folder.cleanup()
            error = _as_uploaded(str(exc).replace(folder.name + "/", ""), names)
            log.warning("purchase upload refused: %s", error)
            status = 422
        else:
            if job is None:
                folder.cleanup()
                error, status = "An import is already running: wait for it to finish, then upload again.", 409
            else:
                return redirect(url_for("purchases.job", job_id=job.id), 303)
    elif request.method == "POST":
        status = 400
    page = page_arg()
    rows, total = _recent(page)
    imports = recent_imports(get_session(), IMPORTS_SHOWN, user_id=None if scope is None else current_user.id)
    return render_template("purchases.html", form=form, error=error, rows=rows, total=total, page=page,
                           pages=max((total + PAGE - 1) // PAGE, 1), running=import_jobs().running(),
                           imports=imports, action=ActionForm()), status


def shown_name(filename: str | None, n: int) -> str:
    """The uploaded file's name as the pages show it: its last path part, without control or format characters
    (NUL, escapes, a right-to-left override), at most :data:`NAME_MAX` characters (the middle cut); ``file N`` when
    nothing is left. Only shown: the upload is saved as ``upload-N.csv``."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn")).strip()
    if len(name) > NAME_MAX:
        name = f"{name[:NAME_MAX - 12]}…{name[-11:]}"
    return name or f"file {n}"


def _as_uploaded(text: str, names: list[str]) -> str:
    """``text`` (an import message) with each saved ``upload-N.csv`` replaced by the name it was uploaded as."""
    return re.sub(r"\bupload-(\d+)\.csv\b",
                  lambda m: names[int(m.group(1)) - 1] if 0 < int(m.group(1)) <= len(names) else m.group(0), text)


def _refused_store(chosen: str | None, scope: frozenset[str] | None, stores) -> tuple[str, int] | None:
    """Why a staff user may not upload into the chosen store, with the status (422 none chosen, 403 another
    store's); None if they may (and always for an owner)."""
    if scope is None or (chosen and chosen in {sid for sid, _ in stores}):
        return None  # an owner's HISTORY (or an unknown id): no store
    if not chosen:
        return "Choose the store of these sales (one of your stores).", 422
    return "That store is not one of your stores: choose one of yours.", 403


@bp.route("/imports/<job_id>")
@login_required
def job(job_id: str):
    """GET /purchases/imports/<id>: the import's progress (rows, rows/s, ETA; the page reloads itself every
    2 s while it runs, without JavaScript) and then its result (counts and the bad rows with line numbers).
    Staff see only the imports they started (404 for others: the rows may name any store's customers)."""
    found = import_jobs().get(job_id)
    if found is None or (store_scope() is not None and found.started_by != current_user.id):
        abort(404)
    record = get_session().get(PurchaseImport, job_id)  # the recorded upload (once finished): its undo button
    # its error names the files as uploaded, not as saved (read when shown: the job may fail meanwhile)
    return render_template("import_job.html", job=found, as_uploaded=lambda text: _as_uploaded(text, found.files),
                           record=record, action=ActionForm())


@bp.route("/imports/<import_id>/undo", methods=["POST"])
@login_required
def undo(import_id: str):
    """POST /purchases/imports/<id>/undo: "Undo this import". The first post answers with a confirmation page naming
    the store and the lines; the confirmed one (``confirm=yes``) removes that upload's lines, returns the history
    lines it filed, removes the customers and products only it created (:func:`~dangol_cloud.import_undo.undo_import`),
    audited (``import-undone``), then → 303 to the purchases page with what was done. Owners may undo any upload,
    staff only their own (404 otherwise, as for an unknown or unrecorded upload). Refused, back on the purchases page
    saying why, once undone, and — nothing undone — while a dashboard import or zone change runs or the sale-keys lock
    is held by another transaction (:func:`~dangol_cloud.sale_locks.try_hold_sale_keys`: a zone change, re-time,
    customer link or import of any process; the request never waits for it); 400 without a valid CSRF token."""
    from dangol_cloud.web.confirm import confirmation_page

    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    record = s.get(PurchaseImport, import_id)
    if record is None or (store_scope() is not None and str(record.user_id) != str(current_user.id)):
        abort(404)
    if record.undone_at is not None:
        flash(f"That import was already undone on {record.undone_at:%Y-%m-%d %H:%M} UTC by {record.undone_by}.",
              "error")
        return redirect(url_for("purchases.index"), 303)
    if _jobs_running():  # an import may be filing this import's lines right now; a zone change re-keys them
        flash(f"Nothing was undone: {BUSY}.", "error")
        return redirect(url_for("purchases.index"), 303)
    where = record.store_name or "no store (history)"
    present = s.scalar(select(func.count()).select_from(Purchase).where(Purchase.import_id == record.id)) or 0
    filed = s.scalar(select(func.count()).select_from(Purchase).where(Purchase.filed_import_id == record.id)) or 0
    later = later_imports(s, record)
    detail = (f"{' + '.join(record.files)} ({record.fmt}), uploaded {record.finished_at:%Y-%m-%d %H:%M} UTC by "
              f"{record.started_by} into {where}: its {present:,} purchase lines are removed"
              + (f", and the {filed:,} history lines it filed under {where} go back to history" if filed else "")
              + ". Customers and POS products only this import created are removed too; every other import stays."
              + (f" {later:,} later import(s) into {where} may have repeated some of these sales: upload those files "
                 "again afterwards to bring them back." if later else "")
              + " Menus trained on these sales stay until the next training (Retrain now).")
    page = confirmation_page(title=f"Undo this import into {where}?", detail=detail,
                             button=f"Undo import: remove {present:,} lines from {where}",
                             cancel_url=url_for("purchases.index"))
    if page is not None:
        return page
    try:
        if not try_hold_sale_keys(s):  # PostgreSQL: another process's import, zone change or link holds it
            s.rollback()
            log.warning("import undo of %s refused: the sale-keys lock is held by another transaction", record.id)
            flash(f"Nothing was undone: {BUSY}.", "error")
            return redirect(url_for("purchases.index"), 303)
        result = undo_import(s, record.id, actor=current_user.email, default_zone=get_settings().timezone)
    except (LookupError, ValueError) as exc:  # undone meanwhile (another tab)
        s.rollback()
        log.warning("import undo refused: %s", exc)
        flash(f"{exc}.", "error")
        return redirect(url_for("purchases.index"), 303)
    except OperationalError as exc:  # SQLite: another write (a CLI import) held the database past the busy timeout
        s.rollback()
        busy = busy_message(exc)
        if busy is None:
            raise
        log.warning("import undo refused: %s", busy)
        flash(f"Nothing was undone: {busy}", "error")
        return redirect(url_for("purchases.index"), 303)
    s.commit()
    log.info("import %s undone by %s: %s", record.id, current_user.email, result.describe())
    flash(f"Import undone ({where}): {result.describe()}.", "success")
    return redirect(url_for("purchases.index"), 303)


#: Why "Undo this import" is refused while another re-keying or import runs (nothing undone).
BUSY = ("busy: a zone change or an import is running (perhaps from another process), try again once it has "
        "finished")


def _jobs_running() -> bool:
    """Whether this app runs a dashboard import or a store's zone change (:mod:`dangol_cloud.zone_jobs`)."""
    zones = current_app.extensions.get("dangol_zone_jobs")
    return import_jobs().running() is not None or (zones is not None and zones.running() is not None)
