"""'Add store' refuses control characters in the name and the POS store code, as 'Rename' does (review R1, dec 7):
an escape sequence or a line break was stored, and a code with one can never match an import's ``store`` column."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from dangol_cloud.app import create_app
from dangol_cloud.models import Store
from tests.cloud.conftest import OWNER_EMAIL, OWNER_PASSWORD, add_owner


@pytest.mark.parametrize("name, ref, field", [("Gangnam\x1b[31m", "gn", "name"), ("Busan", "bu\nsan", "code"),
                                              ("Seoul\t", "se\tl", "code"), ("Jeju\x7f", "", "name")])
def test_add_store_refuses_control_characters(db, settings, name, ref, field):
    add_owner(db)
    client = create_app(settings, db=db, WTF_CSRF_ENABLED=False).test_client()
    client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD})
    page = client.post("/stores/", data={"name": name, "ref": ref})
    with db.sessions() as s:
        assert s.scalars(select(Store)).all() == []
    assert page.status_code == 200 and b"control characters" in page.data and field.encode() in page.data.lower()


def test_add_store_keeps_a_plain_name_and_code(db, settings):
    add_owner(db)
    client = create_app(settings, db=db, WTF_CSRF_ENABLED=False).test_client()
    client.post("/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD})
    assert client.post("/stores/", data={"name": "  Café Gangnam ", "ref": " gn-1 "}).status_code == 200
    with db.sessions() as s:
        assert [(x.name, x.ref) for x in s.scalars(select(Store))] == [("Café Gangnam", "gn-1")]
