"""Stores and their edge devices; a new store's POS token and a new device's MQTT password are shown once.

Device trust (issue 9): per device, the messages the cloud refused or could not use; the newest dead
letters; erasures a device asked for, which an owner confirms (erased everywhere) or dismisses."""

from __future__ import annotations

from zoneinfo import available_timezones

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

import dangol_protocol as proto
from dangol_protocol.money import CurrencyError, check_currency, currencies as currency_codes

from dangol_cloud.app import get_session, get_settings
from dangol_cloud.broker_logins import REMOVED_ACTION, stale_logins
from dangol_cloud.erasure import audit, complete_if_done, pending_erasures
from dangol_cloud.store_prices import catalogue_currency
from dangol_cloud.models import Device, Store, StoreSetting, new_id
from dangol_cloud.security import hash_token, mosquitto_hash, new_secret
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.forms import ActionForm, DeviceForm, StoreForm

bp = Blueprint("stores", __name__, url_prefix="/stores")


@bp.route("/", methods=["GET", "POST"])
@owner_required
def index():
    """GET/POST /stores/: list stores and devices; creating a store shows its POS token once. A name another store
    has (without case and surrounding spaces, :func:`dangol_cloud.web.store_edit.name_key`) is refused by name; a
    name or POS store code with a control character is refused (:func:`dangol_cloud.web.store_edit.has_control`)."""
    s = get_session()
    form = StoreForm()
    if form.validate_on_submit():
        ref = (form.ref.data or "").strip() or None
        name = _store_edit.clean_name(form.name.data)
        if not name:
            form.name.errors.append("Give the store a name.")
        elif _store_edit.has_control(name):
            form.name.errors.append("The store name cannot hold control characters (tabs, line breaks, escapes).")
        elif _store_edit.has_control(ref):
            form.ref.errors.append("The POS store code cannot hold control characters (tabs, line breaks, escapes).")
        elif (same := _store_edit.name_taken(s, name)) is not None:
            form.name.errors.append(_store_edit.duplicate_message(same.name))
        elif ref and s.scalar(select(Store).where(Store.ref == ref)):
            form.ref.errors.append(f"store code {ref!r} is already used")
        else:
            catalogue_currency(s, get_settings().currency)  # stored before the chain grows: never guessed again
            token = new_secret(32)
            store = Store(name=name, ref=ref, api_token_hash=hash_token(token))
            s.add(store)
            s.commit()
            return render_template("store_created.html", store=store, token=token)
    stores = s.scalars(select(Store).order_by(Store.name)).all()
    currencies = dict(s.execute(select(StoreSetting.store_id, StoreSetting.currency)).all())
    zones = dict(s.execute(select(StoreSetting.store_id, StoreSetting.timezone)).all())
    presence = _devices.device_presence(s, [d for store in stores for d in store.devices])
    codes = currency_codes()
    return render_template("stores.html", stores=stores, form=form, device_form=DeviceForm(), action=ActionForm(),
                           currencies=currencies, currency_codes=sorted(codes),
                           bad_currencies={sid for sid, code in currencies.items() if code and code not in codes},
                           zones=zones, zone_names=sorted(available_timezones()),
                           default_zone=get_settings().timezone, presence=presence,
                           zone_job=_store_zone.zone_jobs().running(), **_trust_context(s),
                           stale_logins=stale_logins(s, [d for store in stores for d in store.devices]))


@bp.route("/<store_id>/currency", methods=["POST"])
@owner_required
def set_currency(store_id: str):
    """POST /stores/<id>/currency: the store's currency, an ISO 4217 code in use (e.g. TWD; any case,
    :func:`dangol_protocol.money.check_currency`); empty = the CURRENCY setting. Anything else ("won", "ZZZ") is
    refused by name and nothing changes."""
    if not ActionForm().validate_on_submit():
        abort(400)
    s = get_session()
    store = s.get(Store, store_id) or abort(404)
    given = (request.form.get("currency") or "").strip()
    try:
        code = check_currency(given) if given else ""
    except CurrencyError as exc:
        flash(f"Currency: {exc}.", "error")
        return redirect(url_for("stores.index"))
    catalogue_currency(s, get_settings().currency)  # the catalogue's prices keep theirs (stored once)
    row = s.get(StoreSetting, store.id) or StoreSetting(store_id=store.id)
    row.currency = code or None
    s.add(row)
    s.commit()
    flash(f"{store.name}: amounts are shown in {code or get_settings().currency}.", "success")
    return redirect(url_for("stores.index"))


@bp.route("/<store_id>/token", methods=["POST"])
@owner_required
def rotate_token(store_id: str):
    """POST /stores/<id>/token: replace the store's POS token and show it once. The first post answers with a
    confirmation page (the till's token stops working at once, so its sales are refused until the new one is
    entered); only the confirmed post (``confirm=yes``) replaces it. 404 for an unknown store, 400 without a
    valid CSRF token."""
    from dangol_cloud.web.confirm import confirmation_page

    s = get_session()
    store = s.get(Store, store_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    page = confirmation_page(title=f"Replace the POS token of {store.name}?", button="Replace POS token",
                             cancel_url=url_for("stores.index"),
                             detail="The token the till uses now stops working at once: every sale it sends is "
                                    "refused (401) until the new token, shown once on the next page, is entered in "
                                    "the POS. Replace it only when the old one leaked or the till is being set up "
                                    "again.")
    if page is not None:
        return page
    token = new_secret(32)
    store.api_token_hash = hash_token(token)
    s.commit()
    return render_template("store_created.html", store=store, token=token, rotated=True)


@bp.route("/<store_id>/devices", methods=["POST"])
@owner_required
def add_device(store_id: str):
    """POST /stores/<id>/devices: create a device with its own MQTT login; the password is shown once. The running
    broker takes the login at once (:func:`~dangol_cloud.broker_auth.create_device_login`: the rights broker-config
    writes, its own store only), so the device can connect without a restart; if the broker cannot be told, the
    device is still created and the page says to run broker-config and restart Mosquitto."""
    from dangol_cloud.broker_auth import create_device_login

    s = get_session()
    store = s.get(Store, store_id) or abort(404)
    form = DeviceForm()
    if not form.validate_on_submit():
        flash("Give the device a name.", "error")
        return redirect(url_for("stores.index"))
    password = new_secret(24)
    device_id = new_id()
    device = Device(id=device_id, store_id=store.id, name=form.name.data.strip(), mqtt_username=f"device-{device_id}",
                    mqtt_password_hash=mosquitto_hash(password))
    s.add(device)
    s.commit()
    problem = _on_broker(lambda url, client_id: create_device_login(url, device, password, client_id=client_id))
    return _device_page(store, device, password, broker_problem=problem)


@bp.route("/devices/<device_id>/password", methods=["POST"])
@owner_required
def reset_password(device_id: str):
    """POST /stores/devices/<id>/password: new MQTT password for a device (shown once). The first post answers with
    a confirmation page (the door goes offline until the new password is in its ``/etc/dangol/edge.env``); only the
    confirmed post (``confirm=yes``) replaces it. The running broker takes it at once
    (:func:`~dangol_cloud.broker_auth.replace_device_password`: the old one stops working, a connection made with it
    is closed and the device's retained status cleared), and the device is recorded offline, keeping when it was last
    seen (:func:`~dangol_cloud.device_status.record_dropped`; a device that never connected stays so); if the broker
    cannot take it, the page says so: the listener's next connection disables the old password's login (the new one
    is not on the broker either) until broker-config and a restart."""
    from dangol_cloud.broker_auth import replace_device_password
    from dangol_cloud.device_status import record_dropped
    from dangol_cloud.web.confirm import confirmation_page

    s = get_session()
    device = s.get(Device, device_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    page = confirmation_page(title=f"New MQTT password for {device.name}?", button="Replace the password",
                             cancel_url=url_for("stores.index"),
                             detail="The password the door uses now stops working at once: the broker closes its "
                                    "connection and the door stays offline (it greets with the menus it has, its "
                                    "visits wait on the box, no new menus reach it) until the new password, shown "
                                    "once on the next page, is entered on the box — in the "
                                    "DANGOL_MQTT_URL line of /etc/dangol/edge.env (systemd/README.md, step 4), then "
                                    "sudo systemctl restart dangol-edge. Replace it only when the old one leaked or "
                                    "the box is being set up again.")
    if page is not None:
        return page
    was = _devices.device_presence(s, [device])[device.id]["state"]  # before: did it have a connection to close?
    password = new_secret(24)
    device.mqtt_password_hash = mosquitto_hash(password)
    s.commit()
    problem = _on_broker(lambda url, client_id: replace_device_password(
        url, device.mqtt_username, password, client_id=client_id, device_id=device.id,
        stored_hash=device.mqtt_password_hash))  # its mark lets the cloud tell an old password come back
    if problem is None:
        record_dropped(device)
        s.commit()
    return _device_page(device.store, device, password, reset=True, broker_problem=problem, was=was)


def _on_broker(change) -> str | None:
    """Run ``change(mqtt_url, client_id)`` (a login change on the running broker, as the cloud's login); None when
    it was applied, else why not (no broker configured, or the :class:`~dangol_cloud.broker_auth.BrokerLoginError`),
    logged: the page then says what to do by hand."""
    import logging
    import uuid

    from dangol_cloud.broker_auth import BrokerLoginError

    settings = get_settings()
    if not settings.mqtt_url:
        return "no broker is configured here (DANGOL_MQTT_URL)"
    try:
        change(settings.mqtt_url, f"{settings.mqtt_client_id}-logins-{uuid.uuid4().hex[:8]}")
    except BrokerLoginError as exc:
        logging.getLogger(__name__).warning("device login not changed on the broker: %s", exc)
        return str(exc)
    return None


#: What to do on the broker host when the dashboard could not change a login there: the plugin reads its file only
#: at start, so a reload (SIGHUP) changes nothing.
BY_HAND = ("run dangol-cloud broker-config on the broker host and restart Mosquitto (systemctl restart mosquitto; "
           "a reload does not re-read the logins)")


def _device_page(store: Store, device: Device, password: str, reset: bool = False,
                 broker_problem: str | None = None, was: str | None = None) -> str:
    """The page shown once after "Add device" / "New password": the device's ``edge.toml`` and ``edge.env``
    lines (its MQTT URL with the password), the commands for the broker host, its live status, whether the broker
    took the login at once (``broker_problem``: why not), and after "New password" what it did to the device's
    connection, by its presence before (``was``: ``online``/``silent`` had one, ``offline`` not, ``never``)."""
    topics = {"events": proto.events_topic(device.id), "status": proto.status_topic(device.id),
              "subscribe": [t for t, _ in proto.store_subscriptions(store.id)]}
    return render_template("device_created.html", store=store, device=device, password=password, topics=topics,
                           reset=reset, broker_problem=broker_problem, was=was,
                           mqtt_url=_devices.device_mqtt_url(device.mqtt_username, password),
                           client_id=proto.device_client_id(device.id),
                           presence=_devices.device_presence(get_session(), [device]))


@bp.route("/devices/<device_id>/delete", methods=["POST"])
@owner_required
def remove_device(device_id: str):
    """POST /stores/devices/<id>/delete: remove a device (e.g. lost) after the confirmation page
    (``confirm=yes``); its visits stay, its login is revoked on the running broker at once
    (:func:`~dangol_cloud.broker_auth.revoke_device_login`, which also closes its connection; if the broker cannot,
    the owner is told to run broker-config and restart Mosquitto), and its retained status and events are cleared on
    the broker (:func:`dangol_cloud.device_status.clear_retained_topics`; if the broker does not answer, the owner is
    told and the listener counts the stale status as ``forgotten-device`` instead of dead-lettering it; a retained
    event it dead-letters once and clears itself). The removal is recorded (audit entry ``device-removed`` naming
    the device id, :data:`~dangol_cloud.broker_logins.REMOVED_ACTION`): only a recorded removal lets the cloud's
    reconciler delete a login the broker brought back at a restart."""
    from dangol_cloud.broker_auth import revoke_device_login

    s = get_session()
    device = s.get(Device, device_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    from dangol_cloud.web.confirm import confirmation_page

    page = confirmation_page(title=f"Remove {device.name}?", button="Remove device", cancel_url=url_for("stores.index"),
                             detail="Its MQTT login is revoked on the broker at once, and a connection it has open is "
                                    "closed (if the broker cannot be told, the next page says how: broker-config and "
                                    "a Mosquitto restart). It no longer counts for erasures; its past visits stay.")
    if page is not None:
        return page
    name, username = device.name, device.mqtt_username
    audit(s, current_user.email, REMOVED_ACTION, device_id=device_id, detail=f"login {username}")
    s.delete(device)
    s.flush()
    for erasure in pending_erasures(s):  # a removed device can no longer confirm: don't wait for it
        complete_if_done(s, erasure, current_user.email)
    s.commit()
    problem = _on_broker(lambda url, client_id: revoke_device_login(url, device_id, username, client_id=client_id))
    if problem is None:
        flash(f"Removed {name}. Its MQTT login was revoked on the broker at once (a connection it had open was "
              "closed), and the broker saved that in its own file; should a restart bring the login back (the "
              "broker's file not writable), the cloud deletes it again when it reconnects.", "success")
    else:
        flash(f"Removed {name}, but its MQTT login was not revoked on the broker ({problem}), so it may still log "
              f"in. To revoke it, {BY_HAND}.", "warning")
    settings = get_settings()
    if settings.mqtt_url:
        import logging

        from dangol_cloud.device_status import clear_retained_topics
        from dangol_cloud.mqtt import MqttError

        try:
            clear_retained_topics(settings.mqtt_url, device_id, client_id=f"{settings.mqtt_client_id}-publisher")
        except MqttError as exc:  # harmless: the listener ignores (and counts) a removed device's retained status
            logging.getLogger(__name__).warning("retained status and events of removed device %s not cleared: %s",
                                                device_id, exc)
            flash(f"The broker did not answer, so its last status stays retained there ({exc}).", "warning")
    return redirect(url_for("stores.index"))


# --- device trust (issue 9) ------------------------------------------------------------------------------------
DEAD_LETTERS_SHOWN = 20


def _trust_context(s) -> dict:
    """Template values: ``trust`` (device id → counts), ``dead_letters`` (newest), ``erasure_requests`` (pending)."""
    from dangol_cloud.device_trust import dead_letter_count, trust_summary
    from dangol_cloud.models import DeadLetter, ErasureRequest

    return {"trust": trust_summary(s), "dead_letter_total": dead_letter_count(s),
            "dead_letters": s.scalars(select(DeadLetter).order_by(DeadLetter.id.desc())
                                      .limit(DEAD_LETTERS_SHOWN)).all(),
            "erasure_requests": s.scalars(select(ErasureRequest).where(ErasureRequest.status == "pending")
                                          .order_by(ErasureRequest.requested_at)).all(),
            "device_names": dict(s.execute(select(Device.id, Device.name)).all())}


@bp.route("/erasure-requests/<int:request_id>/<any(confirm, dismiss):decision>", methods=["POST"])
@owner_required
def decide_erasure(request_id: int, decision: str):
    """POST /stores/erasure-requests/<id>/confirm|dismiss: an owner's answer to a device's erasure request.
    Confirming (after the confirmation page: type ERASE) erases the customer everywhere and tells the stores."""
    from dangol_cloud.app import get_db, get_settings
    from dangol_cloud.erasure import decide_erasure_request
    from dangol_cloud.models import ErasureRequest
    from dangol_cloud.mqtt import MqttError
    from dangol_cloud.publishing import republish_erasures

    s = get_session()
    request_row = s.get(ErasureRequest, request_id)
    if request_row is None or request_row.status != "pending":
        abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    if decision == "confirm":
        from dangol_cloud.web.confirm import confirmation_page

        page = confirmation_page(title=f"Erase customer {request_row.customer_id} everywhere?", phrase="ERASE",
                                 button="Erase everywhere", cancel_url=url_for("stores.index"),
                                 detail="A device asked for this erasure. The customer's name, consent record, "
                                        "purchases and menu are deleted in every store; visits stay as anonymous "
                                        "counts. This cannot be undone.")
        if page is not None:
            return page
    erasure = decide_erasure_request(s, request_id, actor=current_user.email, confirm=decision == "confirm")
    s.commit()
    if erasure is None:
        flash("Erasure request dismissed." if decision == "dismiss" else "Already erased.", "success")
        return redirect(url_for("stores.index"))
    settings = get_settings()
    try:
        if settings.mqtt_url:
            republish_erasures(get_db(), settings)
        flash("Erased everywhere; the stores are being told.", "success")
    except MqttError as exc:  # stays pending: re-sent on the schedule
        flash(f"Erased here; telling the stores failed ({exc}); it is retried automatically.", "warning")
    return redirect(url_for("stores.index"))


from dangol_cloud.web import devices as _devices  # noqa: E402 - presence, onboarding lines; its routes on this bp
from dangol_cloud.web import store_edit as _store_edit  # noqa: E402 - store names, rename/remove on this bp
from dangol_cloud.web import store_zone as _store_zone  # noqa: E402 - zone changes (background job) on this bp
