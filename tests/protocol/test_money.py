"""One money rule for the dashboard and the door (:mod:`dangol_protocol.money`).

A currency is an ISO 4217 code of a currency in circulation, checked against babel's CLDR data — not three
letters that merely look like one ("won", "ZZZ" were accepted before). Amounts are major units and are shown with
the currency's own minor-unit digits (KRW, JPY: none; USD: 2), so a KRW price reads ₩4,500 on both sides (the
dashboard used to show 4,500.00).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

import dangol_protocol as p
from dangol_protocol.money import CurrencyError, check_currency, format_money, minor_digits

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("given, code", [("KRW", "KRW"), ("usd", "USD"), (" eur ", "EUR"), ("JPY", "JPY"),
                                         ("TWD", "TWD"), ("XOF", "XOF")])
def test_real_codes_are_accepted_in_capitals(given, code):
    assert check_currency(given) == code


@pytest.mark.parametrize("given", ["won", "WON", "ZZZ", "EURO", "€", "", "  ", "XXX", "XTS", "XAU", "DEM", "KR W",
                                   None, 410])
def test_anything_else_is_refused_naming_the_input(given):
    with pytest.raises(CurrencyError) as err:
        check_currency(given)
    assert isinstance(err.value, ValueError)  # settings and pydantic validators report it like any bad value
    assert repr(given) in str(err.value)  # the message names what was given
    assert "ISO 4217" in str(err.value)


def test_minor_unit_digits_come_from_the_currency():
    assert (minor_digits("KRW"), minor_digits("JPY"), minor_digits("USD"), minor_digits("EUR")) == (0, 0, 2, 2)
    assert minor_digits("BHD") == 3  # the dinar has fils: 1/1000
    with pytest.raises(CurrencyError):
        minor_digits("WON")


@pytest.mark.parametrize("amount, code, shown", [
    (4500, "KRW", "₩4,500"),
    (4.5, "USD", "$4.50"),
    (3.6, "EUR", "€3.60"),
    (450, "JPY", "¥450"),
    (1234567.891, "USD", "$1,234,567.89"),
    (Decimal("4.5"), "usd", "$4.50"),
    (0.125, "USD", "$0.13"),      # half a cent rounds up, as at a till (babel alone rounds half to even: $0.12)
    (4499.5, "KRW", "₩4,500"),
    (-4.5, "USD", "-$4.50"),      # a refund
    (-0.2, "KRW", "₩0"),          # never "-₩0"
    (4.5, "CHF", "CHF\u00a04.50"),  # a letter code is kept apart from the digits (CLDR currency spacing)
    (0, "USD", "$0.00"),
])
def test_format_money(amount, code, shown):
    assert format_money(amount, code) == shown


def test_format_money_refuses_a_malformed_currency_or_amount():
    for bad in ("won1", "ZZ", "", None):
        with pytest.raises(CurrencyError):
            format_money(1, bad)
    for amount in (float("inf"), float("nan")):
        with pytest.raises(ValueError):
            format_money(amount, "USD")


def test_an_amount_beyond_decimal_precision_is_written_not_raised():
    # a CSV row's amount of 1e30 became an item price: quantize needs more than 28 digits there
    assert format_money(1e30, "KRW") == "₩" + f"{10**30:,}"
    assert format_money(1e28, "USD").startswith("$10,000,000,000,000,000,000,000,000,000.")


def test_a_three_character_code_of_an_older_cloud_is_written_not_refused():
    assert format_money(85, "NT$") == "NT$\u00a085.00"


def test_a_well_formed_code_this_babel_does_not_know_is_written_not_refused():
    # a box whose babel is older than the cloud's (a currency introduced since) still shows the price
    assert format_money(4500, "WON") == "WON\u00a04,500.00"
    assert format_money(4500, "zzz") == "ZZZ\u00a04,500.00"


def test_the_catalogue_carries_a_well_formed_currency():
    base = dict(store_id=uuid.uuid4(), version=1, published_at=NOW, items=[])
    assert p.Catalogue(**base, currency="krw").currency == "KRW"
    assert p.Catalogue(**base).currency == "EUR"
    # the wire is tolerant: owner input is checked against ISO 4217 where it is typed (settings, Stores page);
    # a box with an older babel must not refuse a newer cloud's currency
    assert p.Catalogue(**base, currency="won").currency == "WON"
    # the bound of catalogue/1 before the ISO check (any three characters): a box must keep reading a catalogue an
    # older cloud sends with CURRENCY=NT$ (docs/mqtt.md: a tighter bound needs a schema bump)
    assert p.Catalogue(**base, currency="NT$").currency == "NT$"
    for bad in ("wo", "KRWX", 5):
        with pytest.raises(ValidationError, match=repr(bad)):
            p.Catalogue(**base, currency=bad)


def test_a_received_catalogue_with_a_malformed_currency_is_refused():
    store = uuid.uuid4()
    good = json.loads(p.dump_payload(p.Catalogue(store_id=store, version=1, published_at=NOW, currency="KRW",
                                                 items=[])))
    topic = p.catalogue_topic(store)
    assert p.parse_payload(topic, json.dumps(good).encode()).currency == "KRW"
    with pytest.raises(p.PayloadError, match="'Z1ZZ'"):
        p.parse_payload(topic, json.dumps({**good, "currency": "Z1ZZ"}).encode())
