"""Staff-scoped analytics (issue 11): a staff user's analytics page and CSV exports count only their own
stores' door arrivals and sales — also without choosing a store, and also when the URL names another store —
while the owner sees every store. Two stores (A: the staff user's, B: not), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

from .test_web_hardening import (STAFF_EMAIL, STAFF_PASSWORD, _site_factory, _two_stores,  # noqa: F401
                                 make_site, sign_in, web)
from .conftest import OWNER_EMAIL, OWNER_PASSWORD


def _summary(client, query: str = "all=1") -> dict:
    rows = list(csv.reader(io.StringIO(client.get(f"/analytics/summary.csv?{query}").get_data(as_text=True))))
    return dict(zip(rows[0], rows[1]))


def test_staff_analytics_cover_only_their_stores(web):  # noqa: F811
    app, db = web
    ids = _two_stores(db)
    owner = app.test_client()
    assert sign_in(owner, OWNER_EMAIL, OWNER_PASSWORD).status_code == 302
    every = _summary(owner)
    assert (every["door_arrivals"], every["purchase_lines"]) == ("2", "1")

    staff = app.test_client()
    assert sign_in(staff, STAFF_EMAIL, STAFF_PASSWORD).status_code == 302
    mine = _summary(staff)
    assert (mine["door_arrivals"], mine["recognised_arrivals"], mine["purchase_lines"]) == ("1", "1", "0")
    assert _summary(staff, f"all=1&store={ids['b']}")["door_arrivals"] == "1"  # another store's id: still only A
    top = staff.get("/analytics/top-items.csv?all=1").get_data(as_text=True)
    assert "Flat white" not in top  # sold only at store B
    page = staff.get("/analytics/?all=1").get_data(as_text=True)
    assert "Main Street" in page and "Harbour" not in page and "All my stores" in page
    assert "Flat white" not in page
