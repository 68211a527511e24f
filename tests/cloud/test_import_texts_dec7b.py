"""Texts an owner or a till reads about imports and POS calls (review R6 of 7 December, round b):

* the Complete Journey store-number note counts only the rows this upload stored (a second upload of the same rows
  stores none and says nothing), and ends in ", …" only when more numbers were seen than it names;
* a staff upload's unknown-store hint lists only the codes of the staff user's stores;
* a store-less row's amount error names the dashboard's default currency, not a setting's name;
* the upload page and the README say what ``store`` and ``amount`` must hold;
* the POS API names the field of a blanks-only customer ref, calls an unknown feedback item "Unknown item", and its
  document's 503 for /purchases names "Customer changed meanwhile".
"""

from __future__ import annotations

import json
from pathlib import Path

from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Customer, CustomerOrigin, Store

from .conftest import REPO, STORE_TOKEN, add_store_and_device
from .test_pos_inputs_dec7b import _client as _pos_client
from .test_pos_inputs_dec7b import post as _sale

HEADER = "customer,item,quantity,timestamp"


def _write(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "\n" + "".join(line + "\n" for line in lines))
    return path


def _import(db, rows, **kw):
    with db.transaction() as s:
        return import_rows(s, rows, source="csv", key_prefix="csv", **kw)


def _cj(db, data_dir, tmp_path, n: int, store_id: str):
    folder = data_dir / "purchases" / "completejourney"
    with (folder / "transactions.csv").open() as fh:
        lines = [next(fh) for _ in range(n + 1)]
    path = tmp_path / "transactions.csv"
    path.write_text("".join(lines))
    return _import(db, parse_purchases(path, "completejourney", products=folder / "products.csv"),
                   store_id=store_id, currency="USD")


# --- 1. the Complete Journey store-number note -----------------------------------------------------------------------
def test_the_store_note_counts_only_the_rows_stored(db, data_dir, tmp_path):
    main_id, _ = add_store_and_device(db)
    first = _cj(db, data_dir, tmp_path, 30, main_id)
    assert first.inserted == 30 and first.unmatched_store_rows == 30
    again = _cj(db, data_dir, tmp_path, 30, main_id)  # the same rows: all already present
    assert again.inserted == 0 and again.duplicates + again.filed == 30
    assert again.unmatched_store_rows == 0 and again.store_note() is None
    more = _cj(db, data_dir, tmp_path, 40, main_id)  # ten new rows (one of them a row error)
    assert more.inserted == 10 - len(more.errors) > 0 and more.unmatched_store_rows == more.inserted


def test_the_store_note_ends_in_an_ellipsis_only_when_numbers_are_left_out(db, data_dir, tmp_path):
    main_id, _ = add_store_and_device(db)
    folder = data_dir / "purchases" / "completejourney"
    with (folder / "transactions.csv").open() as fh:
        header, *lines = [next(fh) for _ in range(31)]
    two = list(dict.fromkeys(line.split(",")[1] for line in lines))[:2]  # the first two store numbers
    kept = [line for line in lines if line.split(",")[1] in two]
    path = tmp_path / "transactions.csv"
    path.write_text(header + "".join(kept))
    report = _import(db, parse_purchases(path, "completejourney", products=folder / "products.csv"),
                     store_id=main_id, currency="USD")
    assert report.errors == [] and report.inserted == len(kept)
    assert report.store_note() == (f"{len(kept)} rows name a store number no store has as its code "
                                   f"({two[0]!r}, {two[1]!r}): filed under the upload's store")


# --- 2. hints and help ---------------------------------------------------------------------------------------------
def test_a_staff_upload_hint_lists_only_its_stores_codes(db, tmp_path):
    main_id, _ = add_store_and_device(db)  # code "main"
    with db.transaction() as s:
        s.add(Store(name="Harbour", ref="harbour", api_token_hash="x" * 64))
    path = _write(tmp_path / "s.csv", ["L-1,americano,1,2026-01-05 08:00,kiosk"], HEADER + ",store")
    report = _import(db, parse_purchases(path, "csv"), store_id=main_id, allowed_stores=frozenset({main_id}),
                     customers_in_scope=set())
    assert [e.message for e in report.errors] == ["store 'kiosk' is no store's code (the codes are 'main'); "
                                                  "not imported"]


def test_a_store_less_amount_error_names_the_default_currency_in_owner_words(db, tmp_path):
    history = _write(tmp_path / "h.csv", ["L-6,americano,1,2026-01-05 08:00,0.4"], HEADER + ",amount")
    report = _import(db, parse_purchases(history, "csv"), currency="KRW")
    assert [(e.line, e.message) for e in report.errors] == [
        (2, "amount 0.4 has more decimals than KRW uses (0), the dashboard's default currency; not imported")]


def test_the_upload_help_and_readme_say_what_store_and_amount_hold():
    page = (REPO / "cloud" / "templates" / "purchases.html").read_text()
    readme = (REPO / "cloud" / "README.md").read_text()
    for text in (page, readme):
        assert "POS store code" in text and "exact case" in text
        assert "no more decimals than" in text


# --- 3. POS API texts ----------------------------------------------------------------------------------------------
def test_a_blanks_only_customer_ref_is_refused_as_blanks(db, db_url, tmp_path):
    client, _app, _store = _pos_client(db, db_url, tmp_path)
    refused = _sale(client, "   ", "k1")
    assert refused.status_code == 422
    assert refused.json["errors"] == [{"loc": "customer", "msg": "customer: blanks only"}]


def test_feedback_on_an_unknown_item_is_titled_unknown_item(db, db_url, tmp_path):
    client, _app, store_id = _pos_client(db, db_url, tmp_path)
    with db.transaction() as s:
        s.add(Customer(id="c" * 32, status="active", source="edge"))
        s.flush()
        s.add(CustomerOrigin(customer_id="c" * 32, store_id=store_id))
    r = client.post("/api/v1/feedback", data=json.dumps({"customer": "c" * 32, "item": "no-such-item",
                                                         "opinion": "like"}),
                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {STORE_TOKEN}"})
    assert r.status_code == 422 and r.json["title"] == "Unknown item"


def test_the_document_names_both_reasons_for_a_purchase_503():
    doc = json.loads((REPO / "cloud" / "openapi.json").read_text())
    text = doc["paths"]["/api/v1/purchases"]["post"]["responses"]["503"]["description"]
    assert "busy" in text and "Customer changed meanwhile" in text
