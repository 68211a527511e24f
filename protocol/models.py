"""Pydantic v2 models of every MQTT payload (``schema`` ``<name>/1``).

All models forbid unknown fields (a typo in the code that builds one is an error, not silently ignored), ids
are UUIDs and timestamps are timezone-aware datetimes (naive input is rejected). Serialise with
:func:`dump_payload`. A *received* message is read with :func:`dangol_protocol.parse_payload`, which first drops
the fields these models do not know (a newer sender's additions; :mod:`dangol_protocol.lenient`), so a new
optional field never makes an older reader refuse a message; a change of meaning bumps the schema version.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_serializer

from dangol_protocol.money import currency_code
from dangol_protocol.names import greeting_name

__all__ = [
    "ArrivalEvent",
    "Catalogue",
    "CatalogueItem",
    "Consent",
    "DAYPARTS",
    "DayPart",
    "EnrolmentEvent",
    "ErasureDoneEvent",
    "Erasures",
    "Event",
    "EVENT_ADAPTER",
    "Health",
    "Menu",
    "MAX_CATALOGUE_ITEMS",
    "MenuPick",
    "Payload",
    "Status",
    "check_zone",
    "daypart_at",
    "dump_payload",
    "first_name",
    "last_will",
    "new_event_id",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


ItemId = Annotated[str, Field(min_length=1, max_length=64)]
Score = Annotated[float, Field(allow_inf_nan=False)]

MAX_CATALOGUE_ITEMS = 2000
"""Most items one ``catalogue/1`` may list (a café's whole menu is a few hundred; the cloud also keeps the message
under :data:`dangol_protocol.parse.MAX_PAYLOAD_BYTES`)."""
MAX_SHOWN_ITEMS = 50
"""Most item ids an arrival may list as shown (the display shows at most a dozen picks)."""
MAX_ERASED_IDS = 100
"""Most customer ids one ``erasure-done`` event may list."""
MAX_FPS = 1000.0
"""Highest frame rate a device may report, frames per second (cameras deliver 15-120)."""
MAX_COUNT = 10**12
"""Highest value of a device counter (frames, templates, queue depth): 30 fps for 1,000 years is 9.5e11."""


def first_name(name: str | None) -> str | None:
    """The part of ``name`` the door greets with (:func:`dangol_protocol.names.greeting_name`: ``"Mina Park"`` →
    ``"Mina"``, ``"김 민준"`` → ``"김 민준"``, ``"Dr. Lee"`` → ``"Dr. Lee"``), or None if empty.

    Retained menus go to every store's box; the kiosk greets with that part only, so no more is sent.
    """
    return greeting_name(name)


class CatalogueItem(_Model):
    """One menu item as the edge displays it. ``price`` is the store's price in the catalogue's ``currency`` (major
    units); None: no price at this store (the door lists the item without one)."""

    id: ItemId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    category: str | None = None
    price: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    photo_url: str | None = None
    available: bool = True
    #: on the door's house menu (at most the owner's "house items per category", the best sellers); False: listed
    #: only so a customer's personal pick of it can be shown. Optional: a catalogue of an older cloud, which
    #: listed the house items only, has none (True).
    house: bool = True


_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}")


def check_zone(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows (``Europe/Berlin``, ``UTC``).

    Raises:
        ValueError: not of the form ``Area/Location`` (a path, ``..``, control characters, over 64 characters)
            or unknown to the time zone database.
    """
    if not isinstance(name, str) or len(name) > 64 or not _ZONE_NAME.fullmatch(name):
        raise ValueError(f"{str(name)[:80]!r} is not an IANA time zone name (e.g. Europe/Berlin)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not a known IANA time zone") from None
    return name


class Catalogue(_Model):
    """``catalogue/1``: the full catalogue snapshot of one store (retained, QoS 1).

    ``version`` increases by one on every Publish; the edge ignores a snapshot older than the one it has.
    Every available menu item is listed, at most :data:`MAX_CATALOGUE_ITEMS` (a customer's picks may name any of
    them); the door's house menu shows those with ``house=true``. Retired items are not in the snapshot;
    unavailable ones are, with ``available=false``.

    ``currency`` is the ISO 4217 code the prices are in (three characters as ever, put in capitals,
    :func:`dangol_protocol.money.currency_code`; the cloud checks the owner's input against the currencies in use,
    but the wire stays tolerant so a box whose babel predates a new currency still shows the menu); the door writes
    the prices with :func:`dangol_protocol.money.format_money`, as the dashboard does.

    ``timezone`` is the IANA zone the menus' day-parts were trained in (the cloud's ``TIMEZONE`` when set): the door reads
    the current day-part's hour on that clock (:meth:`local_time`), whatever the box's own zone. Optional: an older
    cloud sends none, and then the box's local time decides. An unknown zone fails validation (the message is
    refused like any invalid field).
    """

    schema_: Literal["catalogue/1"] = Field("catalogue/1", alias="schema")
    store_id: uuid.UUID
    version: Annotated[int, Field(ge=1)]
    published_at: AwareDatetime
    currency: Annotated[str, Field(min_length=3, max_length=3)] = "EUR"
    items: Annotated[list[CatalogueItem], Field(max_length=MAX_CATALOGUE_ITEMS)]
    timezone: str | None = None

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("timezone", mode="before")
    @classmethod
    def _known_zone(cls, value: object) -> object:
        return None if value is None else check_zone(value)

    @field_validator("currency", mode="before")
    @classmethod
    def _currency_code(cls, value: object) -> str:
        return currency_code(value)  # three characters, in capitals (dangol_protocol.money)

    def local_time(self, at: datetime) -> datetime:
        """The wall-clock time at instant ``at`` on the day-parts' clock: in :attr:`timezone` (an aware datetime),
        or without one the box's local time. A naive ``at`` is the box's local time (as ``datetime.now()``).

        Raises:
            zoneinfo.ZoneInfoNotFoundError: the zone, valid when the catalogue was checked, is no longer in the
                machine's time zone database.
        """
        if self.timezone is None:
            return at.astimezone() if at.tzinfo is not None else at
        return at.astimezone(ZoneInfo(self.timezone))


class MenuPick(_Model):
    """One ranked pick: ``item_id`` (a :class:`CatalogueItem` id), model ``score`` (higher is better)
    and human-readable ``reasons`` (e.g. ``"bought 12 times"``, ``"popular at this hour"``)."""

    item_id: ItemId
    score: Score
    reasons: list[str] = Field(default_factory=list)


DayPart = Literal["breakfast", "lunch", "afternoon", "evening"]
"""A day-part of the local day."""

DAYPARTS: tuple[tuple[DayPart, int, int], ...] = (("breakfast", 5, 11), ("lunch", 11, 14), ("afternoon", 14, 17),
                                                 ("evening", 17, 29))
"""(name, first local hour, last hour + 1) of each day-part; the evening wraps past midnight to 04:59. The
cloud's recommender counts purchases by the same hours (``dangol_cloud.recommend.dayparts``)."""


def daypart_at(hour: int) -> DayPart:
    """The day-part of a local hour 0–23 (05–10 breakfast, 11–13 lunch, 14–16 afternoon, 17–04 evening).

    Raises:
        ValueError: ``hour`` outside 0–23.
    """
    if not 0 <= int(hour) <= 23:
        raise ValueError(f"hour {hour!r} is not 0-23")
    h = int(hour) + 24 if hour < 5 else int(hour)
    return next(name for name, start, end in DAYPARTS if start <= h < end)


class Menu(_Model):
    """``menu/1``: one customer's ranked picks (retained, QoS 1), best first.

    ``display_name`` is the greeting part of the name recorded with the customer's consent (for "Welcome back,
    <name>"): the rest is dropped on validation (:func:`first_name`: the first word, a Hangul name whole), because
    retained menus reach every store's box. A menu is only published for customers with a consent record, so it also
    tells the edge the customer is active.

    ``personal`` is False for a cold-start menu (a customer the recommender has no purchases or other interactions
    of: what sells, not their own picks), so the door does not call it "your usual". Default True: a menu of a cloud
    from before the field reads as before. It is written only when False, so a personal menu's payload is what it
    was: a box from before forward-compatible reading refuses only the cold-start menus (it keeps the customer's
    cached menu, else shows the house items, headed as such).
    """

    schema_: Literal["menu/1"] = Field("menu/1", alias="schema")
    store_id: uuid.UUID
    customer_id: uuid.UUID
    display_name: Annotated[str, Field(max_length=120)] | None = None
    model_version: Annotated[str, Field(min_length=1, max_length=64)]
    generated_at: AwareDatetime
    items: list[MenuPick]
    # issue 12: optional picks per day-part (local hours: breakfast 5-10, lunch 11-13, afternoon 14-16, evening
    # 17-4); absent = ``items`` all day. A reader shows ``dayparts[current day-part]`` when present, else ``items``.
    dayparts: dict[DayPart, list[MenuPick]] | None = None
    personal: bool = True

    model_config = ConfigDict(populate_by_name=True)

    @model_serializer(mode="wrap")
    def _personal_only_when_false(self, handler):
        data = handler(self)
        if self.personal and isinstance(data, dict):
            data.pop("personal", None)
        return data

    def picks_at(self, hour: int) -> list[MenuPick]:
        """The picks to show at local ``hour`` (0–23): those of its day-part (:func:`daypart_at`) when the
        menu has any for it, else ``items`` (the all-day list)."""
        return (self.dayparts or {}).get(daypart_at(hour)) or list(self.items)

    @field_validator("display_name")
    @classmethod
    def _first_name_only(cls, value: str | None) -> str | None:
        return first_name(value)


class Erasures(_Model):
    """``erasures/1``: customers whose templates and data the edge must delete (not retained, QoS 1).

    The edge confirms with an :class:`ErasureDoneEvent` carrying the same ``erasure_id``.
    """

    schema_: Literal["erasures/1"] = Field("erasures/1", alias="schema")
    store_id: uuid.UUID
    erasure_id: uuid.UUID
    requested_at: AwareDatetime
    customer_ids: Annotated[list[uuid.UUID], Field(min_length=1)]

    model_config = ConfigDict(populate_by_name=True)


CONSENT_TEXT_VERSION = "2026-01"
"""Version label of the consent text staff read to customers, recorded with each consent (cloud setting
``consent_text_version``, edge ``display.consent_version``; both default to this)."""


class Consent(_Model):
    """Consent record: who recorded it (staff name/id), when, and which consent text version was shown."""

    recorded_by: Annotated[str, Field(min_length=1, max_length=120)]
    recorded_at: AwareDatetime
    text_version: Annotated[str, Field(min_length=1, max_length=40)]


class _EventBase(_Model):
    schema_: Literal["event/1"] = Field("event/1", alias="schema")
    event_id: uuid.UUID
    device_id: uuid.UUID
    ts: AwareDatetime

    model_config = ConfigDict(populate_by_name=True)


class ArrivalEvent(_EventBase):
    """One visit (the edge emits one per visit, after its cool-down).

    ``customer_id`` is None for an unknown face (counted, never stored); ``confidence`` is the match
    similarity in [0, 1]; ``shown_items`` are the item ids the display showed (empty if none).
    """

    kind: Literal["arrival"] = "arrival"
    customer_id: uuid.UUID | None = None
    confidence: Annotated[float, Field(ge=0, le=1)] | None = None
    shown_items: Annotated[list[ItemId], Field(max_length=MAX_SHOWN_ITEMS)] = Field(default_factory=list)


class EnrolmentEvent(_EventBase):
    """A customer was enrolled (``pending``) or activated (``active``, with consent and a name) on the edge."""

    kind: Literal["enrolment"] = "enrolment"
    customer_id: uuid.UUID
    status: Literal["pending", "active"]
    display_name: Annotated[str, Field(max_length=120)] | None = None
    short_code: Annotated[str, Field(max_length=16)] | None = None
    consent: Consent | None = None


class ErasureDoneEvent(_EventBase):
    """The edge deleted the listed customers (answer to an :class:`Erasures` message)."""

    kind: Literal["erasure-done"] = "erasure-done"
    erasure_id: uuid.UUID | None = None
    customer_ids: Annotated[list[uuid.UUID], Field(min_length=1, max_length=MAX_ERASED_IDS)]


Event = Annotated[Union[ArrivalEvent, EnrolmentEvent, ErasureDoneEvent], Field(discriminator="kind")]
"""``event/1``: discriminated on ``kind`` (``arrival`` | ``enrolment`` | ``erasure-done``)."""

EVENT_ADAPTER: TypeAdapter = TypeAdapter(Event)


class Health(_Model):
    """Device health: camera state, frames per second processed, templates in the gallery, outbox depth;
    optionally ``storage`` (``full`` when the edge cannot write its database: disk full), the frame counters
    ``frames_captured``/``frames_dropped`` since start, ``recognition``, ``catalogue``, ``arrivals``,
    ``housekeeping``, ``refused_events`` and ``undelivered_events``. Bounded: ``fps`` ≤
    :data:`MAX_FPS`, counters ≤ :data:`MAX_COUNT` (a value beyond is a validation error, never stored or shown)."""

    camera: Literal["ok", "missing", "error"]
    fps: Annotated[float, Field(ge=0, le=MAX_FPS, allow_inf_nan=False)]
    gallery_size: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    queue_depth: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    storage: Literal["ok", "full", "error"] | None = None
    frames_captured: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None
    frames_dropped: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None
    #: ``failing`` once recognition failed on several frames in a row (the edge's watchdog then starves)
    recognition: Literal["ok", "failing"] | None = None
    #: ``unreadable`` while the cached catalogue cannot be parsed (the door shows no house menu until the next
    #: catalogue arrives); optional, so a cloud reads older devices' health unchanged. A cloud whose
    #: :func:`dangol_protocol.parse_payload` drops unknown fields reads a newer device's status without it; only
    #: a cloud from before that (which forbade them) refuses it: see docs/mqtt.md, "Changing a payload".
    catalogue: Literal["ok", "unreadable"] | None = None
    #: ``failing`` while the door's last arrivals could not be handled (a known face is then greeted by nobody),
    #: ``ok`` again after one is; optional like ``catalogue`` (older devices do not send it)
    arrivals: Literal["ok", "failing"] | None = None
    #: ``failing`` while the edge's last housekeeping pass had a step that failed (e.g. retention: face templates may
    #: then be kept past ``retention_days``), ``ok`` again after a pass whose every step succeeded; optional
    housekeeping: Literal["ok", "failing"] | None = None
    #: events in the device's outbox the broker refused (e.g. its ACL), tried again after a back-off; optional
    refused_events: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None
    #: events in the device's outbox the broker delivered to no subscriber (PUBACK 0x10: the cloud listener's session
    #: is missing on the broker), tried again after a back-off until the listener subscribes again; optional
    undelivered_events: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None


class Status(_Model):
    """``status/1``: retained device status. The last will is ``state="offline"`` without health."""

    schema_: Literal["status/1"] = Field("status/1", alias="schema")
    device_id: uuid.UUID
    state: Literal["online", "offline"]
    ts: AwareDatetime | None = None
    health: Health | None = None
    software_version: Annotated[str, Field(max_length=64)] | None = None

    model_config = ConfigDict(populate_by_name=True)


Payload = Union[Catalogue, Menu, Erasures, ArrivalEvent, EnrolmentEvent, ErasureDoneEvent, Status]


def dump_payload(payload: Payload) -> bytes:
    """Serialise a payload to compact UTF-8 JSON bytes (with the ``schema`` key), ready to publish."""
    return payload.model_dump_json(by_alias=True, exclude_none=False).encode("utf-8")


def last_will(device_id: uuid.UUID | str) -> tuple[str, bytes]:
    """``(topic, payload)`` of a device's last will: retained ``status/1`` ``offline`` on its status topic.

    Use with paho: ``client.will_set(topic, payload, qos=1, retain=True)`` before ``connect``.
    """
    from dangol_protocol.topics import status_topic

    return status_topic(device_id), dump_payload(Status(device_id=uuid.UUID(str(device_id)), state="offline"))


def new_event_id() -> uuid.UUID:
    """A fresh random event id (UUID4) for an edge event; the cloud deduplicates on it."""
    return uuid.uuid4()

