"""Issue 11, finding 4 (customer list) and 7 (honest status) — the customer list decrypts only the page it
shows, finds a loyalty id through its keyed hash, and does not call an imported history-only customer
"active". 1,200 customers made through the real import path (Dangol CSV)."""

from __future__ import annotations

from sqlalchemy import select

from dangol_cloud.crypto import Keyring
from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Customer

from .conftest import utc
from .test_cloud_web import sign_in, web  # noqa: F401 - the fixture

N = 1200


def _customers(db, tmp_path):
    path = tmp_path / "till.csv"
    lines = ["customer,item,quantity,timestamp,amount"]
    lines += [f"loyalty-{n:05d},Americano,1,2026-01-{1 + n % 28:02d}T08:{n % 60:02d}:00,3.5" for n in range(N)]
    path.write_text("\n".join(lines) + "\n")
    with db.transaction() as s:
        import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv")
        mina = s.scalar(select(Customer).limit(1))
        mina.display_name, mina.consent_by, mina.consent_at = "Mina Park", "staff", utc(2026, 1, 2)
        return mina.id


def test_customer_list_decrypts_only_the_page_shown(web, tmp_path, monkeypatch):  # noqa: F811
    app, db = web
    _customers(db, tmp_path)
    client = app.test_client()
    sign_in(client)
    calls = []
    real = Keyring.decrypt
    monkeypatch.setattr(Keyring, "decrypt", lambda self, token, context: calls.append(context) or
                        real(self, token, context))
    page = client.get("/customers/?show=all").get_data(as_text=True)
    assert f"{N:,} customers" in page
    assert len(calls) <= 3 * 50, len(calls)  # before: every customer's fields, on every request
    assert page.index("Mina Park") < page.index("loyalty-")  # consented first
    assert "history only" in page and ">active<" not in page


def test_search_finds_a_loyalty_id_a_name_and_an_id_prefix(web, tmp_path):  # noqa: F811
    app, db = web
    mina_id = _customers(db, tmp_path)
    client = app.test_client()
    sign_in(client)
    page = client.get("/customers/?show=all&q=loyalty-00417").get_data(as_text=True)
    assert "1 customer" in page and "Customer loyalty-00417" in page
    page = client.get("/customers/?show=all&q=mina").get_data(as_text=True)
    assert "1 customer" in page and "Mina Park" in page
    page = client.get(f"/customers/?show=all&q={mina_id[:8]}").get_data(as_text=True)
    assert "Mina Park" in page
    page = client.get("/customers/?show=all&q=nobody-here").get_data(as_text=True)
    assert "0 customers" in page
