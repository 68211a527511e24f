"""Dangol MQTT contract: payload models, topic builders/parsers and :func:`parse_payload`.

Shared by the cloud service and the Raspberry Pi edge; it imports only pydantic, babel (currencies and money
formatting, :mod:`dangol_protocol.money`) and the standard library. Topic root ``dangol/v1/``; every payload is
JSON with ``"schema": "<name>/<version>"``.

==================================================  ==============  ========  ===  ======================
topic                                               direction       retained  QoS  payload model
==================================================  ==============  ========  ===  ======================
``dangol/v1/stores/{store}/catalogue``              cloud → edge    yes       1    :class:`Catalogue`
``dangol/v1/stores/{store}/menus/{customer}``       cloud → edge    yes       1    :class:`Menu`
``dangol/v1/stores/{store}/erasures``               cloud → edge    no        1    :class:`Erasures`
``dangol/v1/devices/{device}/events``               edge → cloud    no        1    :data:`Event` (union)
``dangol/v1/devices/{device}/status``               edge → cloud    yes       1    :class:`Status`
==================================================  ==============  ========  ===  ======================

An empty retained payload on a catalogue or menu topic means "deleted" (the cloud clears a retained
menu when a customer is erased); check :func:`is_retained_clear` before :func:`parse_payload`.

The models forbid unknown fields when our code builds or validates them; :func:`parse_payload`, which reads a
received message, first drops the fields this version does not know (forward compatibility, see
:mod:`dangol_protocol.lenient`) and counts them (:func:`unknown_field_counts`).
"""

from dangol_protocol.models import (
    CONSENT_TEXT_VERSION,
    ArrivalEvent,
    Catalogue,
    CatalogueItem,
    Consent,
    DAYPARTS,
    MAX_CATALOGUE_ITEMS,
    DayPart,
    EnrolmentEvent,
    ErasureDoneEvent,
    Erasures,
    Event,
    Health,
    Menu,
    MenuPick,
    Payload,
    Status,
    check_zone,
    daypart_at,
    dump_payload,
    first_name,
    last_will,
    new_event_id,
)
from dangol_protocol.topics import (
    QOS,
    RETAINED,
    ROOT,
    Topic,
    TopicError,
    TopicKind,
    catalogue_topic,
    device_client_id,
    device_subscriptions,
    erasures_topic,
    events_topic,
    menu_topic,
    menus_wildcard,
    parse_topic,
    status_topic,
    store_subscriptions,
    ALL_DEVICE_EVENTS,
    ALL_DEVICE_STATUS,
)
from dangol_protocol.money import CurrencyError, check_currency, format_money
from dangol_protocol.names import greeting_name
from dangol_protocol.parse import PayloadError, is_retained_clear, parse_payload, unknown_field_counts

__all__ = [
    "ALL_DEVICE_EVENTS",
    "CONSENT_TEXT_VERSION",
    "ALL_DEVICE_STATUS",
    "ArrivalEvent",
    "CurrencyError",
    "Catalogue",
    "CatalogueItem",
    "Consent",
    "DAYPARTS",
    "DayPart",
    "MAX_CATALOGUE_ITEMS",
    "EnrolmentEvent",
    "ErasureDoneEvent",
    "Erasures",
    "Event",
    "Health",
    "Menu",
    "MenuPick",
    "Payload",
    "PayloadError",
    "QOS",
    "RETAINED",
    "ROOT",
    "Status",
    "Topic",
    "TopicError",
    "TopicKind",
    "catalogue_topic",
    "check_currency",
    "check_zone",
    "device_client_id",
    "daypart_at",
    "device_subscriptions",
    "dump_payload",
    "erasures_topic",
    "first_name",
    "format_money",
    "events_topic",
    "greeting_name",
    "is_retained_clear",
    "last_will",
    "menu_topic",
    "menus_wildcard",
    "new_event_id",
    "parse_payload",
    "parse_topic",
    "status_topic",
    "store_subscriptions",
    "unknown_field_counts",
]
