"""Stores and their edge devices; a new store's POS token and a new device's MQTT password are shown once."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import select

import dangol_protocol as proto

from dangol_cloud.app import get_session
from dangol_cloud.erasure import complete_if_done, pending_erasures
from dangol_cloud.models import Device, Store, new_id
from dangol_cloud.security import hash_token, mosquitto_hash, new_secret
from dangol_cloud.web.auth import owner_required
from dangol_cloud.web.forms import ActionForm, DeviceForm, StoreForm

bp = Blueprint("stores", __name__, url_prefix="/stores")


@bp.route("/", methods=["GET", "POST"])
@owner_required
def index():
    """GET/POST /stores/: list stores and devices; creating a store shows its POS token once."""
    s = get_session()
    form = StoreForm()
    if form.validate_on_submit():
        ref = (form.ref.data or "").strip() or None
        if ref and s.scalar(select(Store).where(Store.ref == ref)):
            form.ref.errors.append(f"store code {ref!r} is already used")
        else:
            token = new_secret(32)
            store = Store(name=form.name.data.strip(), ref=ref, api_token_hash=hash_token(token))
            s.add(store)
            s.commit()
            return render_template("store_created.html", store=store, token=token)
    stores = s.scalars(select(Store).order_by(Store.name)).all()
    return render_template("stores.html", stores=stores, form=form, device_form=DeviceForm(), action=ActionForm())


@bp.route("/<store_id>/token", methods=["POST"])
@owner_required
def rotate_token(store_id: str):
    """POST /stores/<id>/token: replace the store's POS token (the old one stops working) and show it once."""
    s = get_session()
    store = s.get(Store, store_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    token = new_secret(32)
    store.api_token_hash = hash_token(token)
    s.commit()
    return render_template("store_created.html", store=store, token=token, rotated=True)


@bp.route("/<store_id>/devices", methods=["POST"])
@owner_required
def add_device(store_id: str):
    """POST /stores/<id>/devices: create a device with its own MQTT login; the password is shown once."""
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
    topics = {"events": proto.events_topic(device.id), "status": proto.status_topic(device.id),
              "subscribe": [t for t, _ in proto.store_subscriptions(store.id)]}
    return render_template("device_created.html", store=store, device=device, password=password, topics=topics)


@bp.route("/devices/<device_id>/password", methods=["POST"])
@owner_required
def reset_password(device_id: str):
    """POST /stores/devices/<id>/password: new MQTT password for a device (shown once; re-run broker-config)."""
    s = get_session()
    device = s.get(Device, device_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    password = new_secret(24)
    device.mqtt_password_hash = mosquitto_hash(password)
    s.commit()
    topics = {"events": proto.events_topic(device.id), "status": proto.status_topic(device.id),
              "subscribe": [t for t, _ in proto.store_subscriptions(device.store_id)]}
    return render_template("device_created.html", store=device.store, device=device, password=password,
                           topics=topics, reset=True)


@bp.route("/devices/<device_id>/delete", methods=["POST"])
@owner_required
def remove_device(device_id: str):
    """POST /stores/devices/<id>/delete: remove a device (e.g. lost); its visits stay, its login goes."""
    s = get_session()
    device = s.get(Device, device_id) or abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    name = device.name
    s.delete(device)
    s.flush()
    for erasure in pending_erasures(s):  # a removed device can no longer confirm: don't wait for it
        complete_if_done(s, erasure, current_user.email)
    s.commit()
    flash(f"Removed {name}. Run dangol-cloud broker-config and reload Mosquitto to revoke its login.", "success")
    return redirect(url_for("stores.index"))
