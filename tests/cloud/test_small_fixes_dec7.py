"""Small known defects of 7 December, each replayed:

1. :func:`dangol_cloud.recommend.data.clean_items` filled a missing ``available`` with ``fillna(True)`` on an object
   column (an item only in the purchases, added to a catalogue that has the column), which pandas deprecates
   ("Downcasting object dtype arrays on .fillna ... is deprecated": a FutureWarning in the test suite, an error
   under pandas 3's rule); the values stay exactly what they were.
2. ``dangol-cloud evaluate`` leaves out the customers who bought only items new after the cut; when that was every
   customer it printed rows of NaN and exited 0. It now says there is nothing to evaluate, and why, and exits
   non-zero, with no table.
4. The item form took ``4500.5`` won (its price input had ``step="0.01"`` whatever the currency): a zero-decimal
   currency (KRW, JPY) takes whole amounts, and a price with more decimals than the currency has is refused by name.
   (3, and 4's chart, are replayed in a real browser: ``test_small_fixes_dec7_browser.py``.)
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from dangol_cloud.cli import main as cli
from dangol_cloud.models import CatalogueItem, Store, StoreSetting
from dangol_cloud.recommend.data import clean_items

from .test_cloud_web import csrf_of, sign_in, web  # noqa: F401 - the fixture


# --- 1. clean_items without pandas' fillna downcasting ----------------------------------------------------------
def test_clean_items_fills_a_missing_available_without_a_future_warning():
    """The catalogue knows the latte (sold out) and the cake (no ``available`` given); the scone is only in the
    purchases. Missing means available (the module's rule), given values are kept."""
    items = pd.DataFrame({"item": ["latte", "cake"], "category": ["coffee", "bakery"], "price": [4.5, 5.0],
                          "tags": [["hot"], []], "available": [False, None]})
    interactions = pd.DataFrame({"customer": ["c1", "c2"], "item": ["latte", "scone"],
                                 "ts": pd.to_datetime(["2026-12-01 08:00", "2026-12-01 09:00"]), "quantity": [1.0, 1.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = clean_items(items, interactions)
    assert out["item"].tolist() == ["cake", "latte", "scone"]
    assert out["available"].tolist() == [True, False, True] and out["available"].dtype == np.bool_


@pytest.mark.parametrize("available, expected", [
    ([True, False], [True, False]),                       # bool: as given
    ([1.0, np.nan], [True, True]),                        # float with a gap: the gap is available
    (pd.array([False, None], dtype="boolean"), [False, True]),  # nullable booleans
    (["no", ""], [True, False]),                          # object: Python truth, as astype(bool) always did
])
def test_clean_items_keeps_the_available_values_it_always_gave(available, expected):
    items = pd.DataFrame({"item": ["a", "b"], "available": available})
    interactions = pd.DataFrame({"customer": ["c"], "item": ["a"], "ts": pd.to_datetime(["2026-12-01"]),
                                 "quantity": [1.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert clean_items(items, interactions)["available"].tolist() == expected


# --- 2. evaluate with nothing to evaluate -----------------------------------------------------------------------
#: Three regulars buy coffee and a muffin in January; after the cut (1 February) each buys only what was new then.
ONLY_NEW_AFTER_CUT = ["customer,item,quantity,timestamp"] + [
    f"{c},{item},1,2026-01-{day:02d}T08:{n:02d}:00"
    for n, c in enumerate(("mina", "joon", "sora")) for day in (5, 12, 19, 26) for item in ("Latte", "Muffin")
] + [f"{c},{item},1,2026-02-{day:02d}T08:00:00" for c in ("mina", "joon", "sora") for day in (3, 10)
     for item in ("Scone", "Bagel")]


@pytest.fixture
def cli_env(monkeypatch, tmp_path, db_url):
    """DANGOL_* environment pointing at a fresh database (both backends) and a temp home, no broker."""
    for var in ("DANGOL_MQTT_URL", "DANGOL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DANGOL_DATABASE_URL", db_url)
    monkeypatch.setenv("DANGOL_CLOUD_HOME", str(tmp_path / "home"))
    return db_url


def test_evaluate_says_there_is_nothing_to_evaluate_when_every_customer_bought_only_new_items(cli_env, tmp_path,
                                                                                               capsys):
    history = tmp_path / "till.csv"
    history.write_text("\n".join(ONLY_NEW_AFTER_CUT) + "\n")
    assert cli(["import-purchases", str(history), "--format", "csv", "--no-progress"]) == 0
    capsys.readouterr()
    status = cli(["evaluate", "--cut", "2026-02-01"])
    out, err = capsys.readouterr()
    assert status == 2  # the CLI's "not enough data" status, with no traceback
    assert "Traceback" not in err
    said = " ".join(err.split())  # rich wraps long lines
    assert "nothing to evaluate" in said
    assert "3 customers" in said and "only items first sold on or after it (2 such items)" in said  # why
    assert "precision@" not in out and not re.search(r"\bnan\b", out + err, re.IGNORECASE)


def test_evaluate_still_reports_when_some_customers_bought_known_items(cli_env, tmp_path, capsys):
    """One regular has a latte after the cut too: the others are left out (a note says how many), no NaN."""
    history = tmp_path / "till.csv"
    history.write_text("\n".join(ONLY_NEW_AFTER_CUT + ["mina,Latte,1,2026-02-17T08:00:00"]) + "\n")
    assert cli(["import-purchases", str(history), "--format", "csv", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["evaluate", "--cut", "2026-02-01", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "2 customers left out: only new items bought after the cut" in out
    cells = [c.strip() for c in next(line for line in out.splitlines() if line.startswith("| popularity |")
                                      ).split("|")]
    assert cells[8] == "1" and all(np.isfinite(float(c)) for c in cells[2:5])  # 1 customer; P, R, MAP are numbers


# --- 4. whole won on the item form ------------------------------------------------------------------------------
def _store_in(db, currency: str) -> None:
    with db.transaction() as s:
        store = Store(name="Seoul", ref="sel")
        s.add(store)
        s.flush()
        s.add(StoreSetting(store_id=store.id, currency=currency))


def _items(db) -> list[tuple[str, float | None]]:
    with db.sessions() as s:
        return [tuple(r) for r in s.execute(select(CatalogueItem.name, CatalogueItem.price)
                                            .order_by(CatalogueItem.name)).all()]


def test_the_item_form_takes_whole_won_and_refuses_fractional_won_by_name(web):  # noqa: F811
    app, db = web
    _store_in(db, "KRW")
    client = app.test_client()
    sign_in(client)
    form = client.get("/catalogue/new").get_data(as_text=True)
    price_input = re.search(r'<input[^>]*name="price"[^>]*>', form).group(0)
    assert 'step="1"' in price_input and "Price (KRW)" in form
    token = csrf_of(form)
    refused = client.post("/catalogue/new", data={"csrf_token": token, "name": "Americano", "price": "4500.5"})
    page = refused.get_data(as_text=True)
    assert refused.status_code == 200 and _items(db) == []
    message = re.search(r'<div class="err">([^<]*(?:Won|KRW)[^<]*)</div>', page)
    assert message is not None, page
    assert "South Korean Won" in message.group(1) and "whole" in message.group(1) and "4500.5" in message.group(1)
    saved = client.post("/catalogue/new", data={"csrf_token": token, "name": "Americano", "price": "4500"})
    assert saved.status_code == 302 and _items(db) == [("Americano", 4500.0)]
    with db.sessions() as s:
        item_id = s.scalar(select(CatalogueItem.id))
    edit = client.get(f"/catalogue/{item_id}").get_data(as_text=True)
    assert re.search(r'<input[^>]*name="price"[^>]*value="4500"', edit)  # not "4500.00" won


def test_the_item_form_keeps_cents_for_dollars_and_refuses_a_third_decimal(web):  # noqa: F811
    app, db = web
    _store_in(db, "USD")
    client = app.test_client()
    sign_in(client)
    form = client.get("/catalogue/new").get_data(as_text=True)
    assert 'step="0.01"' in re.search(r'<input[^>]*name="price"[^>]*>', form).group(0)
    token = csrf_of(form)
    page = client.post("/catalogue/new", data={"csrf_token": token, "name": "Latte", "price": "4.555"}
                       ).get_data(as_text=True)
    assert "US Dollar" in page and "2 decimals" in page and _items(db) == []
    assert client.post("/catalogue/new", data={"csrf_token": token, "name": "Latte", "price": "4.55"}
                       ).status_code == 302
    assert _items(db) == [("Latte", 4.55)]
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(CatalogueItem)) == 1
