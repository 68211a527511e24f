"""Security review of the staff scope and of sign-in, on real Ta-Feng and Complete Journey purchases:

* a staff upload into their own store cannot pull another store's customer into their scope by naming the
  customer's loyalty number (or Dangol id): such a row is a row error, nothing written for it;
* a staff upload's demographics.csv writes age bands only for the customers of the user's stores;
* N simultaneous wrong passwords for one e-mail (a real threaded server, real HTTP requests) have at most the
  documented allowance of passwords checked, and the refused ones do not lengthen the back-off.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from collections import Counter
from html import unescape
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from dangol_cloud.importers import parse_purchases
from dangol_cloud.ingest import import_rows
from dangol_cloud.models import Customer, DeviceEvent, LoginFailure, Purchase
from dangol_cloud.models_ops import CustomerSegment

from .conftest import OWNER_EMAIL, OWNER_PASSWORD, serving, utc
from .test_cloud_web import wait_for_import
from .test_scope_fixes import ta_feng_records, two_stores, upload, write_csv
from .test_web_hardening import (STAFF_EMAIL, STAFF_PASSWORD, age_failures, csrf_of, make_site,  # noqa: F401
                                 sign_in)

CJ_HEAD = 300  # the staff upload: the first 300 real Complete Journey transactions (32 households)


def _errors(page: str) -> list[tuple[int, str]]:
    return [(int(line), unescape(msg)) for line, msg in re.findall(r'<tr><td class="num">(\d+)</td><td>([^<]*)</td>',
                                                                   page)]


# --- 1. a staff upload cannot bring another store's customer into scope -------------------------------
def test_staff_upload_naming_another_stores_customer_is_a_row_error(make_site, data_dir, tmp_path):  # noqa: F811
    app, db = make_site()
    ids = two_stores(db)
    records = ta_feng_records(data_dir, 80)
    harbour_rows = records[:30]
    with db.transaction() as s:  # Harbour's history (an owner's import)
        import_rows(s, parse_purchases(write_csv(tmp_path / "harbour.csv", harbour_rows), "csv"), source="csv",
                    key_prefix="csv", store_id=ids["harbour"])
    harbour_refs = {r[0] for r in harbour_rows}
    regular_ref = harbour_rows[0][0]
    with db.transaction() as s:
        regular = s.scalar(select(Customer).where(Customer.external_ref_hash == db.keyring.lookup_hash(regular_ref)))
        regular.display_name, regular.consent_by, regular.consent_at = "Mina Park", "Harbour manager", utc(2026, 1, 2)
        regular.consent_text_version = "2026-01"
        # a customer enrolled at Main Street's door (no sales yet): one of the staff user's customers
        enrolled = Customer(status="active", source="edge")
        s.add(enrolled)
        s.flush()
        event_id = str(uuid.uuid4())
        s.add(DeviceEvent(event_id=event_id, device_id=ids["main_device"], kind="enrolment", ts=utc(2026, 1, 3),
                          payload={"kind": "enrolment", "event_id": event_id, "customer_id": enrolled.id}))
    regular_id, enrolled_id = regular.id, enrolled.id
    fresh = [r for r in records[30:] if r[0] not in harbour_refs][:10]
    assert len(fresh) == 10
    sale = harbour_rows[0][1:]
    # line 2: Harbour's regular by loyalty number; line 3: by Dangol id; line 4: the enrolled Main Street
    # customer by Dangol id; lines 5-14: customers new to the chain
    rows = [(regular_ref, *sale), (regular_id, *sale), (enrolled_id, *sale), *fresh]
    staff = app.test_client()
    assert sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    assert staff.get(f"/customers/{regular_id}").status_code == 404
    response = upload(staff, write_csv(tmp_path / "till.csv", rows), ids["main"])
    assert response.status_code == 303
    page = wait_for_import(staff, response.location)
    assert "13 rows read" in page and "<b>11 imported</b>" in page and "<b>2 skipped</b>" in page, page
    assert _errors(page) == [(2, f"customer {regular_ref!r} is not one of your stores' customers"),
                             (3, f"customer {regular_id!r} is not one of your stores' customers")]
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == regular_id,
                                                                         Purchase.store_id == ids["main"])) == 0
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == enrolled_id)) == 1
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.store_id == ids["main"])) == 11
    # Harbour's regular stays out of the staff user's reach
    assert staff.get(f"/customers/{regular_id}").status_code == 404
    token = csrf_of(staff.get("/purchases/").get_data(as_text=True))
    renamed = staff.post(f"/customers/{regular_id}/name", data={"csrf_token": token, "display_name": "X"})
    assert renamed.status_code == 404
    assert staff.post(f"/customers/{regular_id}/withdraw",
                      data={"csrf_token": token, "confirm": "yes"}).status_code == 404
    assert "Mina Park" not in staff.get("/customers/?show=all").get_data(as_text=True)
    assert staff.get(f"/customers/{enrolled_id}").status_code == 200
    with db.sessions() as s:
        kept = s.get(Customer, regular_id)
        assert (kept.status, kept.display_name, kept.consent_by) == ("active", "Mina Park", "Harbour manager")

    # an owner's upload of the same file is unchanged: a chain regular may buy at any store
    owner = app.test_client()
    assert sign_in(owner).status_code == 302
    response = upload(owner, write_csv(tmp_path / "owner.csv", rows[:2]), ids["main"])
    page = wait_for_import(owner, response.location)
    assert "<b>2 imported</b>" in page and "<b>0 skipped</b>" in page, page


def test_a_scoped_import_needs_the_users_customers(make_site, data_dir, tmp_path):  # noqa: F811
    _app, db = make_site()
    ids = two_stores(db)
    path = write_csv(tmp_path / "till.csv", ta_feng_records(data_dir, 5))
    with db.transaction() as s, pytest.raises(ValueError, match="customers_in_scope"):
        import_rows(s, parse_purchases(path, "csv"), source="csv", key_prefix="csv", store_id=ids["main"],
                    allowed_stores=frozenset({ids["main"]}))


# --- 2. demographics only for the staff user's customers ----------------------------------------------
def _cj_lines(folder: Path) -> list[str]:
    with (folder / "transactions.csv").open() as fh:
        return fh.readlines()


def _cj_file(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text(header + "".join(lines))
    return path


def _household(line: str) -> str:
    return line.split(",", 1)[0]


def test_staff_demographics_write_age_bands_of_their_customers_only(make_site, data_dir, tmp_path):  # noqa: F811
    app, db = make_site()
    ids = two_stores(db)
    folder = data_dir / "purchases" / "completejourney"
    header, *lines = _cj_lines(folder)
    ages = {rec.split(",")[0]: rec.split(",")[1] for rec in (folder / "demographics.csv").read_text().splitlines()[1:]}
    head = lines[:CJ_HEAD]
    households = {_household(line) for line in head}
    in_file = sorted(h for h in households if h in ages)
    harbour_only = next(h for h in sorted(ages) if h not in households)  # Harbour's, not in the staff file
    shared, regular_at_main = in_file[0], in_file[1]  # bought at Harbour before / at Main Street before

    def history(household: str) -> list[str]:
        return [line for line in lines[CJ_HEAD:] if _household(line) == household][:15]

    for store, households_of in (("harbour", (harbour_only, shared)), ("main", (regular_at_main,))):
        path = _cj_file(tmp_path / f"{store}.csv", header, [x for h in households_of for x in history(h)])
        with db.transaction() as s:
            import_rows(s, parse_purchases(path, "completejourney", products=folder / "products.csv"),
                        source="completejourney", key_prefix="completejourney", store_id=ids[store])
    by_ref = {}
    with db.transaction() as s:
        for ref in (harbour_only, shared, regular_at_main):
            by_ref[ref] = s.scalar(select(Customer.id).where(Customer.external_ref_hash == db.keyring.lookup_hash(ref)))
        s.add(CustomerSegment(customer_id=by_ref[harbour_only], age_group="recorded"))
    assert all(by_ref.values())

    staff = app.test_client()
    assert sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    html = staff.get("/purchases/").get_data(as_text=True)
    files = [_cj_file(tmp_path / "transactions.csv", header, head), folder / "products.csv",
             folder / "demographics.csv"]
    response = staff.post("/purchases/", content_type="multipart/form-data", data={
        "csrf_token": csrf_of(html), "format": "auto", "store": ids["main"],
        "file": [(io.BytesIO(p.read_bytes()), p.name) for p in files]})
    assert response.status_code == 303
    page = wait_for_import(staff, response.location)
    assert 'data-state="done"' in page, page
    refused = {msg for _, msg in _errors(page) if msg.startswith("customer ")}  # (and one product not in products.csv)
    assert refused == {f"customer {shared!r} is not one of your stores' customers"}, page
    written = len(in_file) - 1  # every household of the file with an age band, except Harbour's
    assert f"{written} age bands from demographics" in page
    assert "2 age bands skipped" in page, page  # Harbour's two households
    with db.sessions() as s:
        segments = dict(s.execute(select(CustomerSegment.customer_id, CustomerSegment.age_group)).all())
        assert segments[by_ref[harbour_only]] == "recorded"  # not overwritten
        assert by_ref[shared] not in segments
        assert segments[by_ref[regular_at_main]] == ages[regular_at_main]  # Main Street's regular before
        assert len(segments) == written + 1
        new = s.scalars(select(Customer.id).where(Customer.external_ref_hash.in_(
            [db.keyring.lookup_hash(h) for h in in_file if h not in (shared, regular_at_main)]))).all()
        assert new and all(segments[c] for c in new)  # customers this upload created


# --- 3. sign-in back-off holds against simultaneous guesses -------------------------------------------
def test_simultaneous_wrong_passwords_check_at_most_the_allowance(make_site):  # noqa: F811
    app, db = make_site()
    n = 30
    with serving(app) as base:
        clients = []
        for _ in range(n):
            client = requests.Session()
            clients.append((client, csrf_of(client.get(base + "/login", timeout=30).text)))
        statuses: list[int] = []
        barrier = threading.Barrier(n)

        def guess(client, token):
            barrier.wait()
            response = client.post(base + "/login", data={"email": OWNER_EMAIL, "password": "wrong guess",
                                                          "csrf_token": token}, allow_redirects=False, timeout=60)
            statuses.append(response.status_code)

        threads = [threading.Thread(target=guess, args=pair) for pair in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        counts = Counter(statuses)
        assert sum(counts.values()) == n and set(counts) <= {401, 429}, counts
        assert counts[401] <= 5, counts  # login_max_failures: passwords checked for this e-mail and address
        with db.sessions() as s:  # refused attempts are not failures: the back-off is not lengthened by them
            assert s.scalar(select(func.count()).select_from(LoginFailure)) == counts[401]

        right = {"email": OWNER_EMAIL, "password": OWNER_PASSWORD}
        owner = requests.Session()
        token = csrf_of(owner.get(base + "/login", timeout=30).text)
        if counts[401] == 5:
            assert owner.post(base + "/login", data={**right, "csrf_token": token}, allow_redirects=False,
                              timeout=30).status_code == 429
            age_failures(db, 31)  # the first wait (30 s) has passed
        response = owner.post(base + "/login", data={**right, "csrf_token": token}, allow_redirects=False, timeout=30)
        assert response.status_code == 302
        with db.sessions() as s:  # the successful attempt, recorded before the check, is gone with the others
            assert s.scalar(select(func.count()).select_from(LoginFailure)) == 0


def test_a_successful_sign_in_does_not_count_against_the_user(make_site):  # noqa: F811
    app, db = make_site()
    client = app.test_client()
    for _ in range(3):
        assert sign_in(client).status_code == 302
        client.post("/logout", data={"csrf_token": csrf_of(client.get("/").get_data(as_text=True))})
    with db.sessions() as s:
        assert s.scalar(select(func.count()).select_from(LoginFailure)) == 0
    for _ in range(5):
        assert sign_in(client, password="wrong").status_code == 401
    assert sign_in(client, password="wrong").status_code == 429
