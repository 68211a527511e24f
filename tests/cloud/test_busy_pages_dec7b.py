"""A dashboard form sent while another process holds SQLite's write lock (an import from the command line, a zone
change) gets a page saying the database was busy and to try again — 503 with ``Retry-After`` — not "Something went
wrong" (F5's note, dec 7: the customer page's like/dislike and Add store answered 500)."""

from __future__ import annotations


import pytest
from sqlalchemy import select

from dangol_cloud.app import create_app
from dangol_cloud.models import Store
from tests.cloud.conftest import OWNER_EMAIL, OWNER_PASSWORD, add_owner, sqlite_write_lock_held


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_form_sent_while_the_database_is_busy_says_so(db, db_url, settings):
    add_owner(db)
    client = create_app(settings, db=db, WTF_CSRF_ENABLED=False).test_client()
    client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD})
    with sqlite_write_lock_held(db):  # an import in another process holds the write lock
        page = client.post("/stores/", data={"name": "Harbour", "ref": "hb"})
    text = page.get_data(as_text=True)
    assert page.status_code == 503, text[:300]
    assert int(page.headers["Retry-After"]) > 0
    assert "busy with another write" in text and "Something went wrong" not in text
    assert "database is locked" not in text
    with db.sessions() as s:
        assert s.scalars(select(Store)).all() == []
    assert client.post("/stores/", data={"name": "Harbour", "ref": "hb"}).status_code == 200  # once it is free
    with db.sessions() as s:
        assert [x.name for x in s.scalars(select(Store))] == ["Harbour"]
