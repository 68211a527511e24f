"""Tables added for device trust and web hardening (issue 9), recommender feedback (issue 12), POS
products vs menu items (issue 11): migrations 0004–0007, and erased loyalty ids (migration 0011). Re-exported by
:mod:`dangol_cloud.models`, so ``from dangol_cloud.models import DeadLetter`` keeps working."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from dangol_cloud.crypto import EncryptedText
from dangol_cloud.models_base import Base, utcnow

__all__: list[str] = []


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
    """A customer's picks per day-part (a customer the model does not know: the cold-start lists of their store at
    each day-part, marked ``cold_start``), written with :class:`Menu` when the purchase data has times of
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
    """A store's own settings: ``currency`` (ISO 4217) of its sales and prices; ``timezone`` (IANA, e.g.
    ``Asia/Taipei``) its wall clock — naive sale times of its imports, the hours of its purchases in training and
    the day-part clock of its doors. None = the ``CURRENCY`` / ``TIMEZONE`` setting."""

    __tablename__ = "store_settings"
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True)
    currency: Mapped[str | None] = mapped_column(String(3))
    timezone: Mapped[str | None] = mapped_column(String(64))


# --- erased loyalty ids (privacy review; migration 0011) -------------------------------------------------------
__all__ += ["ErasedRef"]


class ErasedRef(Base):
    """The loyalty id (``external_ref``) of an erased customer, kept so that the shop's own exports and POS cannot
    bring them back (:mod:`dangol_cloud.erased_refs`): ``ref_hash`` its keyed HMAC (as
    ``customers.external_ref_hash``, what imports look up), ``ref`` the id itself as AES-GCM ciphertext — only so
    that ``rotate-key`` can recompute the hash under a new key. ``retention``: erased by the retention rule (only
    sales from before the retention period stay out), else at a request (every sale stays out). ``allowed_from``:
    when the owner allowed the loyalty id again (the customer re-joined; NULL: not allowed again): only its sales
    from then on are imported and recorded, the older ones stay out. A new erasure of the same loyalty id resets
    the row."""

    __tablename__ = "erased_refs"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref_hash: Mapped[str] = mapped_column(String(64), unique=True)
    ref: Mapped[str] = mapped_column(EncryptedText("erased_refs.ref"))
    erasure_id: Mapped[str] = mapped_column(String(36))  # the Erasure that recorded it (no FK, like its customer)
    customer_id: Mapped[str] = mapped_column(String(36))  # the erased customer's (random) id, for the audit log
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)
    retention: Mapped[bool] = mapped_column(default=False)
    allowed_from: Mapped[datetime | None]
