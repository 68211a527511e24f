"""SQLAlchemy 2 ORM model of the cloud database (SQLite or PostgreSQL).

Ids of things that travel over MQTT (stores, devices, customers, catalogue items) are UUID strings;
timestamps are stored as timezone-aware UTC (``DateTime(timezone=True)``); amounts are floats in the
café's currency (major units).

Personal fields are encrypted at rest (:mod:`dangol_cloud.crypto`, AES-256-GCM): a customer's name,
consent recorder and external (loyalty) ref, and each purchase line's amount and product id. Purchases,
visits and menus refer to customers by a random UUID4 only (a pseudonym); the clear columns are what SQL
aggregates (analytics, training). ``customers.external_ref_hash`` (HMAC-SHA256) finds a customer by ref.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dangol_cloud.crypto import EncryptedFloat, EncryptedText
from dangol_cloud.models_base import Base, new_id, utcnow

__all__ = [
    "AuditEntry", "Base", "CatalogueItem", "CatalogueVersion", "Customer", "Device", "DeviceEvent", "Erasure",
    "LoginFailure", "Menu", "ModelVersion", "PosRequest", "Purchase", "Store", "User", "Visit", "external_ref_hash",
    "new_id", "utcnow",
]


class User(Base):
    """A dashboard user; ``role`` is ``owner`` (everything) or ``staff`` (no stores/devices/erasure)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(10), default="owner")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Store(Base):
    """A café; ``api_token_hash`` is the SHA-256 hex digest of its POS bearer token (shown once)."""

    __tablename__ = "stores"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(120))
    ref: Mapped[str | None] = mapped_column(String(64), unique=True)
    api_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    devices: Mapped[list[Device]] = relationship(back_populates="store", cascade="all, delete-orphan")


class Device(Base):
    """An edge appliance at one store entrance, with its own MQTT username and password hash
    (Mosquitto ``$7$`` PBKDF2-SHA512 format, so it can be written to a Mosquitto password file)."""

    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    mqtt_username: Mapped[str] = mapped_column(String(64), unique=True)
    mqtt_password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    state: Mapped[str | None] = mapped_column(String(10))  # online/offline from the status topic
    status_at: Mapped[datetime | None]
    health: Mapped[dict[str, Any] | None]
    store: Mapped[Store] = relationship(back_populates="devices")


class CatalogueItem(Base):
    """A menu item. ``ref`` is its external id in imported/POS data (e.g. Ta-Feng PRODUCT_SUBCLASS)."""

    __tablename__ = "catalogue_items"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(80))
    price: Mapped[float | None] = mapped_column(Float)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]] = mapped_column(default=list)
    photo: Mapped[str | None] = mapped_column(String(200))  # file name under settings.photos_dir
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StorePrice(Base):
    """An item's own price at one store (migration 0015), in ``currency``: the store's currency when it was set. A
    store gets it only while that is still its currency (:mod:`dangol_cloud.store_prices`); else the item's
    catalogue ``price`` if the store sells in the catalogue's currency, else no price — never another currency's."""

    __tablename__ = "store_prices"
    item_id: Mapped[str] = mapped_column(ForeignKey("catalogue_items.id", ondelete="CASCADE"), primary_key=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True, index=True)
    price: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(3))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CatalogueVersion(Base):
    """One Publish of the catalogue: version number, who, when and the published snapshot (item dicts)."""

    __tablename__ = "catalogue_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_by: Mapped[str | None] = mapped_column(String(254))
    items: Mapped[list[Any]]


class Customer(Base):
    """A customer. ``status`` pending/active; consent record = who/when/text version; ``external_ref`` is
    the id in imported purchase data; ``source`` is where the record came from (edge/dashboard/import/pos).

    ``display_name``, ``external_ref`` and ``consent_by`` are AES-GCM ciphertext in the database;
    ``external_ref_hash`` is the keyed HMAC of ``external_ref`` (set it with :func:`external_ref_hash`)."""

    __tablename__ = "customers"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    display_name: Mapped[str | None] = mapped_column(EncryptedText("customers.display_name"))
    external_ref: Mapped[str | None] = mapped_column(EncryptedText("customers.external_ref"))
    external_ref_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    source: Mapped[str] = mapped_column(String(10), default="dashboard")
    consent_by: Mapped[str | None] = mapped_column(EncryptedText("customers.consent_by"))
    consent_at: Mapped[datetime | None]
    consent_text_version: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def has_consent(self) -> bool:
        """True when a consent record (who and when) exists."""
        return self.consent_at is not None and bool(self.consent_by)


class Purchase(Base):
    """One purchase line. ``idempotency_key`` is unique: an import re-run or a POS retry never doubles it.
    ``read_zone``: the IANA zone an imported line's naive file time was read in (None: the time came with its offset,
    e.g. the POS API's; :mod:`dangol_cloud.sale_zones` moves the line when its store's zone changes)."""

    __tablename__ = "purchases"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(ForeignKey("catalogue_items.id"))
    product_id: Mapped[str | None] = mapped_column(EncryptedText("purchases.product_id"))
    quantity: Mapped[float] = mapped_column(Float)
    amount: Mapped[float | None] = mapped_column(EncryptedFloat("purchases.amount"))
    ts: Mapped[datetime]
    store_id: Mapped[str | None] = mapped_column(ForeignKey("stores.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    read_zone: Mapped[str | None] = mapped_column(String(64))
    # the dashboard import that wrote the line / filed it (history) under its store: revision 0016, import_undo
    import_id: Mapped[str | None] = mapped_column(String(32), index=True)
    filed_import_id: Mapped[str | None] = mapped_column(String(32), index=True)
    __table_args__ = (Index("ix_purchases_customer_ts", "customer_id", "ts"), Index("ix_purchases_item", "item_id"),
                      Index("ix_purchases_ts", "ts"), Index("ix_purchases_store_read_zone", "store_id", "read_zone"))


class PurchaseImport(Base):
    """A purchase upload from the dashboard (revision 0016): when, who, which files, into which store (None: history),
    how many lines it wrote and filed; ``undone_*`` once an owner undid it (:mod:`dangol_cloud.import_undo`)."""

    __tablename__ = "purchase_imports"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the import job's id (its result page's URL)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime] = mapped_column(index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    started_by: Mapped[str] = mapped_column(String(254))
    files: Mapped[list[Any]]
    fmt: Mapped[str] = mapped_column(String(32))
    customer_source: Mapped[str] = mapped_column(String(10))
    store_id: Mapped[str | None] = mapped_column(String(36))  # no FK: the store may be removed after an undo
    store_name: Mapped[str | None] = mapped_column(String(120))
    rows: Mapped[int] = mapped_column(Integer, default=0)
    lines: Mapped[int] = mapped_column(Integer, default=0)
    filed: Mapped[int] = mapped_column(Integer, default=0)
    undone_at: Mapped[datetime | None]
    undone_by: Mapped[str | None] = mapped_column(String(254))
    undone_lines: Mapped[int | None] = mapped_column(Integer)


__all__ += ["PurchaseImport"]


class PosRequest(Base):
    """A POS API request remembered by (store, Idempotency-Key): its body hash and the response sent."""

    __tablename__ = "pos_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    body_sha256: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("store_id", "key"),)


class DeviceEvent(Base):
    """Every accepted edge event (arrival, enrolment, erasure-done), unique by ``event_id``."""

    __tablename__ = "device_events"
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    ts: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    payload: Mapped[dict[str, Any]]


class Visit(Base):
    """An arrival: ``customer_id`` None for an unknown face; ``shown_items`` are the item ids displayed."""

    __tablename__ = "visits"
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"), index=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"))
    store_id: Mapped[str | None] = mapped_column(ForeignKey("stores.id", ondelete="SET NULL"))
    ts: Mapped[datetime] = mapped_column(index=True)
    confidence: Mapped[float | None] = mapped_column(Float)
    shown_items: Mapped[list[Any]] = mapped_column(default=list)


class ModelVersion(Base):
    """A trained recommender: version string, where it is saved, data sizes and metrics."""

    __tablename__ = "model_versions"
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    path: Mapped[str] = mapped_column(String(500))
    n_customers: Mapped[int] = mapped_column(Integer, default=0)
    n_items: Mapped[int] = mapped_column(Integer, default=0)
    n_interactions: Mapped[int] = mapped_column(Integer, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Menu(Base):
    """A customer's current top-N picks: ``picks`` = ``[{"item_id", "score", "reasons"}]`` best first."""

    __tablename__ = "menus"
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    model_version: Mapped[str] = mapped_column(ForeignKey("model_versions.version"))
    generated_at: Mapped[datetime] = mapped_column(default=utcnow)
    picks: Mapped[list[Any]]


class Erasure(Base):
    """An erasure request: the customer's data is deleted at once; stores are told over MQTT and confirm.

    ``targets`` are the device ids that must confirm (every device at request time, for a customer the
    edge may know); ``confirmed_by`` those that sent ``erasure-done``; ``completed_at`` is set once every
    target that still exists confirmed. Until then the erasure is re-published to the unconfirmed devices'
    stores (see :mod:`dangol_cloud.erasure`). ``kept_before`` (a retention erasure's, revision 0012): the start of
    the retention period of its run — the customer's sales from then on may still come in, as a new customer
    (:mod:`dangol_cloud.erased_refs`); None: none does (a requested erasure, or one made before 0012)."""

    __tablename__ = "erasures"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    customer_id: Mapped[str] = mapped_column(String(36))  # no FK: the customer row is gone
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    requested_by: Mapped[str | None] = mapped_column(String(254))
    published_at: Mapped[datetime | None]
    confirmed_by: Mapped[list[Any]] = mapped_column(default=list)  # device ids that sent erasure-done
    targets: Mapped[list[Any]] = mapped_column(default=list)
    last_published_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    kept_before: Mapped[datetime | None]


class AuditEntry(Base):
    """Audit log: erasures (request, each device's confirmation, completion), consent records, key rotation,
    retention runs, trainings (:data:`dangol_cloud.background.RUN_ACTIONS`). Never a name: customers appear by id
    only."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(254))  # user e-mail, "device:<id>", "cli", "retention", "schedule"
    action: Mapped[str] = mapped_column(String(32))
    customer_id: Mapped[str | None] = mapped_column(String(36), index=True)
    erasure_id: Mapped[str | None] = mapped_column(String(36))
    device_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[str] = mapped_column(Text, default="")
    # the newest entry of one action (the owner's home page, web/home.py) is one probe: migration 0017
    __table_args__ = (Index("ix_audit_log_action_at", "action", "at"),)


class LoginFailure(Base):
    """A failed dashboard sign-in (for rate limiting): SHA-256 of the lower-case e-mail, remote address, time."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(primary_key=True)
    email_sha256: Mapped[str] = mapped_column(String(64))
    remote_addr: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_login_failures_key", "email_sha256", "remote_addr", "at"),)


# sign-in back-off counts failures per e-mail (any address) and per address (any e-mail), and forgets old ones
Index("ix_login_failures_email_at", LoginFailure.email_sha256, LoginFailure.at)
Index("ix_login_failures_addr_at", LoginFailure.remote_addr, LoginFailure.at)
Index("ix_login_failures_at", LoginFailure.at)


def external_ref_hash(session, ref: str | None) -> str | None:
    """The keyed lookup hash of an external (loyalty) ref for ``Customer.external_ref_hash`` (None → None).

    Raises:
        DataKeyError: no data key configured.
    """
    from dangol_cloud.crypto import keyring_of

    return None if ref is None else keyring_of(session.get_bind().dialect).lookup_hash(ref)


from dangol_cloud.models_ops import *  # noqa: E402,F401,F403  (the tables of migrations 0004–0007)
from dangol_cloud.models_ops import __all__ as _ops_all  # noqa: E402

__all__ += _ops_all
