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

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from dangol_cloud.crypto import EncryptedFloat, EncryptedText

__all__ = [
    "AuditEntry", "Base", "CatalogueItem", "CatalogueVersion", "Customer", "Device", "DeviceEvent", "Erasure",
    "LoginFailure", "Menu", "ModelVersion", "PosRequest", "Purchase", "Store", "User", "Visit", "external_ref_hash",
    "new_id", "utcnow",
]


def utcnow() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def new_id() -> str:
    """A new random UUID4 as a 36-character string."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset; it is restored on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store timezone-aware UTC times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base: UTC datetimes and JSON columns on SQLite and PostgreSQL alike."""
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


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
    """One purchase line. ``idempotency_key`` is unique: an import re-run or a POS retry never doubles it."""

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
    __table_args__ = (Index("ix_purchases_customer_ts", "customer_id", "ts"), Index("ix_purchases_item", "item_id"),
                      Index("ix_purchases_ts", "ts"))


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
    stores (see :mod:`dangol_cloud.erasure`)."""

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


class AuditEntry(Base):
    """Audit log: erasures (request, each device's confirmation, completion), consent records, key rotation,
    retention runs. Never a name: customers appear by id only."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(254))  # user e-mail, "device:<id>", "cli", "retention"
    action: Mapped[str] = mapped_column(String(32))
    customer_id: Mapped[str | None] = mapped_column(String(36), index=True)
    erasure_id: Mapped[str | None] = mapped_column(String(36))
    device_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[str] = mapped_column(Text, default="")


class LoginFailure(Base):
    """A failed dashboard sign-in (for rate limiting): SHA-256 of the lower-case e-mail, remote address, time."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(primary_key=True)
    email_sha256: Mapped[str] = mapped_column(String(64))
    remote_addr: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_login_failures_key", "email_sha256", "remote_addr", "at"),)


def external_ref_hash(session, ref: str | None) -> str | None:
    """The keyed lookup hash of an external (loyalty) ref for ``Customer.external_ref_hash`` (None → None).

    Raises:
        DataKeyError: no data key configured.
    """
    from dangol_cloud.crypto import keyring_of

    return None if ref is None else keyring_of(session.get_bind().dialect).lookup_hash(ref)


# --- web hardening (issue 9, migration 0005): server-side dashboard sessions, staff store scope --------------
__all__ += ["UserStore", "WebSession"]


class WebSession(Base):
    """A signed-in dashboard session. The browser's (signed) session cookie holds a random token; this row
    holds its SHA-256, so signing out (row deleted) or the absolute lifetime (``expires_at``) ends the session
    on the server even if someone kept a copy of the cookie."""

    __tablename__ = "web_sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class UserStore(Base):
    """A staff user's store: staff see and act on the customers and devices of their stores only (owners: all)."""

    __tablename__ = "user_stores"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True)


# sign-in back-off counts failures per e-mail (any address) and per address (any e-mail), and forgets old ones
Index("ix_login_failures_email_at", LoginFailure.email_sha256, LoginFailure.at)
Index("ix_login_failures_addr_at", LoginFailure.remote_addr, LoginFailure.at)
Index("ix_login_failures_at", LoginFailure.at)


# --- device trust (issue 9, migration 0004): who a customer belongs to, refusals per device, dead letters,
# erasures requested by a device -------------------------------------------------------------------------------
__all__ += ["CustomerOrigin", "DeadLetter", "DeviceTrust", "ErasureRequest"]


class CustomerOrigin(Base):
    """Where a customer was created: the store (and device) whose enrolment made them, or the store an owner
    assigned. A device may act only on customers of its own store (:mod:`dangol_cloud.device_trust`)."""

    __tablename__ = "customer_origins"
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    store_id: Mapped[str | None] = mapped_column(ForeignKey("stores.id", ondelete="SET NULL"), index=True)
    device_id: Mapped[str | None] = mapped_column(String(36))  # no FK: the enrolling device may be removed later
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceTrust(Base):
    """Per-device counts of messages the cloud refused (outside the device's rights) or could not use
    (malformed, oversized, too deep), with the last reason; shown on the Stores page."""

    __tablename__ = "device_trust"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    refused: Mapped[int] = mapped_column(Integer, default=0)
    dead_letters: Mapped[int] = mapped_column(Integer, default=0)
    last_reason: Mapped[str | None] = mapped_column(String(500))
    last_at: Mapped[datetime | None]


class DeadLetter(Base):
    """A device message that was acknowledged but not applied: ``kind`` ``invalid`` (cannot be parsed),
    ``refused`` (outside the device's rights), ``unknown-device`` or ``error`` (applying it failed).
    Only the newest :data:`dangol_cloud.device_trust.MAX_DEAD_LETTERS` are kept; the payload itself is not
    (it may hold a name), only its size and SHA-256."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    device_id: Mapped[str | None] = mapped_column(String(36), index=True)  # from the topic; may be unknown
    topic: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))


class ErasureRequest(Base):
    """An ``erasure-done`` without an erasure id: a device says it erased a customer of its store locally and
    asks for erasure everywhere. Recorded, not executed: an owner confirms (then the customer is erased
    chain-wide) or dismisses it on the Stores page. ``status`` ``pending`` | ``confirmed`` | ``dismissed``."""

    __tablename__ = "erasure_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36))
    device_id: Mapped[str] = mapped_column(String(36), index=True)
    customer_id: Mapped[str] = mapped_column(String(36), index=True)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    decided_by: Mapped[str | None] = mapped_column(String(254))
    decided_at: Mapped[datetime | None]
    erasure_id: Mapped[str | None] = mapped_column(String(36))


# --- recommender feedback (issue 12; migration 0006) ------------------------------------------------------

__all__ += ["CustomerSegment", "MenuDayparts", "PickCredit", "PickOpinion"]


class PickOpinion(Base):
    """A customer's like or dislike of a menu item, recorded by staff or the owner (the latest one counts).

    At the next training a disliked item is never offered to that customer again and a liked one counts as
    a positive interaction (:mod:`dangol_cloud.feedback`). ``opinion`` is ``like`` or ``dislike``."""

    __tablename__ = "pick_opinions"
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("catalogue_items.id", ondelete="CASCADE"), primary_key=True)
    opinion: Mapped[str] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    by: Mapped[str | None] = mapped_column(String(254))  # user e-mail or "store:<id>"


class PickCredit(Base):
    """"Shown pick bought": a purchase line of an item that was on the menu shown at the customer's visit just
    before it. One purchase gives at most one credit (``purchase_id`` unique), to the latest such visit."""

    __tablename__ = "pick_credits"
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id", ondelete="CASCADE"), primary_key=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("visits.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("catalogue_items.id", ondelete="CASCADE"))
    shown_rank: Mapped[int] = mapped_column(Integer)  # 0 = first pick on the screen
    at: Mapped[datetime] = mapped_column(default=utcnow)


class CustomerSegment(Base):
    """A customer's segment as the owner recorded it (e.g. Ta-Feng ``AGE_GROUP`` and ``PIN_CODE``), used for
    the cold-start list of customers without purchases."""

    __tablename__ = "customer_segments"
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    age_group: Mapped[str | None] = mapped_column(String(20))
    area: Mapped[str | None] = mapped_column(String(40))


class MenuDayparts(Base):
    """A known customer's picks per day-part, written with :class:`Menu` when the purchase data has times of
    day: ``dayparts`` = ``{"breakfast" | "lunch" | "afternoon" | "evening": [{"item_id", "score",
    "reasons"}]}`` (same pick format as ``Menu.picks``; :mod:`dangol_cloud.recommend.dayparts`)."""

    __tablename__ = "menu_dayparts"
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    model_version: Mapped[str] = mapped_column(ForeignKey("model_versions.version"))
    dayparts: Mapped[dict[str, Any]]


# --- POS products vs menu items (issue 11; migration 0007) --------------------------------------------------

__all__ += ["MenuSetting", "ProductMapping", "StoreSetting"]


class ProductMapping(Base):
    """A POS *product* an import created (a ``catalogue_items`` row that purchases point at) and the menu item it
    is sold as. ``menu_item_id`` None: not on the menu (the default: an import never publishes by itself);
    equal to ``product_id``: the product is its own menu item (the owner chose "one menu item per product");
    another item's id: its sales and picks count for that menu item (:mod:`dangol_cloud.menu_mapping`).
    Items without a row are the owner's menu items."""

    __tablename__ = "product_mappings"
    product_id: Mapped[str] = mapped_column(ForeignKey("catalogue_items.id", ondelete="CASCADE"), primary_key=True)
    menu_item_id: Mapped[str | None] = mapped_column(ForeignKey("catalogue_items.id", ondelete="SET NULL"),
                                                     index=True)
    source: Mapped[str] = mapped_column(String(16))  # import format: ta-feng, completejourney, csv
    mapped_by: Mapped[str | None] = mapped_column(String(254))
    mapped_at: Mapped[datetime | None]


class MenuSetting(Base):
    """A dashboard setting of the menu, e.g. ``house_per_category`` (items per category on the door screen)."""

    __tablename__ = "menu_settings"
    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class StoreSetting(Base):
    """A store's own settings: ``currency`` (ISO 4217) of its sales and prices; None = the ``CURRENCY`` setting."""

    __tablename__ = "store_settings"
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True)
    currency: Mapped[str | None] = mapped_column(String(3))
