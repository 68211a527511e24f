"""Issue 11 build 6 (link a door enrolment to an existing loyalty customer) and issue 12 (the dashboard shows a
customer's day-part picks and the reasons), on real Complete Journey purchases (the first 3,000 transactions
with the real products.csv; each product mapped to its own menu item, named by its ``product_category``) and a
real training run.

Linking: the owner types the loyalty number on the door enrolment's page, gets a confirmation page, and only
the confirmed post merges — purchases and visits of the loyalty record move to the door enrolment, which keeps
its name, consent and id (the devices' templates); the loyalty record is deleted; one audit entry.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server

from dangol_cloud.app import create_app
from dangol_cloud.db import Database
from dangol_cloud.models import AuditEntry, CatalogueItem, Customer, Menu, Purchase, Visit, external_ref_hash, utcnow
from dangol_cloud.models_ops import MenuDayparts, PickOpinion
from dangol_cloud.settings import Settings
from tests.broker import free_port

from .conftest import DEV_KEY_BYTES, add_owner, sign_in_owner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A database with the Complete Journey slice imported, mapped and trained (shared by the module's tests)."""
    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows
    from dangol_cloud.menu_mapping import map_products
    from dangol_cloud.models_ops import ProductMapping
    from dangol_cloud.services import retrain_and_publish

    tmp = tmp_path_factory.mktemp("link")
    cj_dir = data_dir / "purchases" / "completejourney"
    (tmp / "cj").mkdir()
    with (cj_dir / "transactions.csv").open() as fin, (tmp / "cj" / "transactions.csv").open("w") as fout:
        for n, line in enumerate(fin):
            if n > 3000:
                break
            fout.write(line)
    (tmp / "cj" / "products.csv").write_bytes((cj_dir / "products.csv").read_bytes())
    url = f"sqlite:///{tmp / 'cloud.sqlite'}"
    db = Database(url, data_key=DEV_KEY_BYTES)
    db.migrate()
    add_owner(db)
    with db.transaction() as s:
        import_rows(s, parse_purchases(tmp / "cj" / "transactions.csv", "completejourney"),
                    source="completejourney", key_prefix="completejourney")
        map_products(s, list(s.scalars(select(ProductMapping.product_id))), "self", by="test")
    settings = Settings(cloud_home=tmp / "home", database_url=url, secret_key="link", timezone="America/New_York",
                        _env_file=None)  # the data's zone: its sales carry offsets
    retrain_and_publish(db, settings, publish=False)
    yield db, settings
    db.dispose()


def _door_enrolment(db) -> str:
    """A customer created at the door (as the listener stores an enrolment event) with consent and a visit."""
    cid = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(Customer(id=cid, display_name="Mina Park", status="active", source="edge", consent_by="staff: Jun",
                       consent_at=utcnow(), consent_text_version="1"))
        s.flush()
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=cid, ts=utcnow()))
    return cid


def _loyalty_with_dayparts(db) -> tuple[str, str, int]:
    """(customer id, loyalty number, purchase lines) of a household that has day-part picks."""
    with db.sessions() as s:
        cid = s.scalar(select(MenuDayparts.customer_id).order_by(MenuDayparts.customer_id).limit(1))
        ref = s.get(Customer, cid).external_ref
        lines = s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == cid))
    return cid, ref, lines


@pytest.fixture
def site(trained):
    db, settings = trained
    server = make_server("127.0.0.1", free_port(), create_app(settings, db=db), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{server.server_port}", "db": db}
    server.shutdown()
    thread.join(5)


def _sign_in(page, base):
    sign_in_owner(page, base)


def test_customer_page_shows_daypart_picks_with_reasons(browser, site):
    db = site["db"]
    cid, _ref, _lines = _loyalty_with_dayparts(db)
    with db.sessions() as s:
        row = s.get(MenuDayparts, cid)
        names = {name: [s.get(CatalogueItem, p["item_id"]).name for p in picks]
                 for name, picks in row.dayparts.items() if picks}
        reasons = [r for picks in row.dayparts.values() for p in picks for r in p["reasons"]]
    assert names and reasons  # the training wrote day-part picks with reasons for this household
    page = browser.new_page()
    try:
        _sign_in(page, site["base"])
        page.goto(f"{site['base']}/customers/{cid}")
        section = page.locator("#dayparts")
        assert section.is_visible()
        for name, items in names.items():
            block = page.locator(f'[data-daypart="{name}"]')
            text = " ".join(block.inner_text().split())  # a page shows "CHRISTMAS  SEASONAL" with one space
            assert name.capitalize() in text and all(" ".join(item.split()) in text for item in items)
        assert reasons[0] in section.inner_text()
    finally:
        page.close()


def test_link_door_enrolment_to_loyalty_customer(browser, site):
    db = site["db"]
    door = _door_enrolment(db)
    loyalty, ref, lines = _loyalty_with_dayparts(db)
    with db.transaction() as s:
        s.add(Visit(event_id=str(uuid.uuid4()), customer_id=loyalty, ts=utcnow()))
    page = browser.new_page()
    try:
        _sign_in(page, site["base"])
        page.goto(f"{site['base']}/customers/{door}")
        page.fill("#loyalty", ref)
        page.click("#link")
        confirm = page.locator("#confirm")
        assert f"loyalty number {ref}" in confirm.inner_text() and f"{lines:,} purchase lines" in confirm.inner_text()
        with db.sessions() as s:  # asked, not yet done
            assert s.get(Customer, loyalty) is not None
            assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == door)) == 0
        page.click("#confirm-button")
        page.wait_for_url(f"{site['base']}/customers/{door}")
        assert "Linked" in page.inner_text(".flash")
        summary = page.inner_text("#summary")
        assert f"{lines:,} purchase lines" in summary and "recognised at the door" in summary
        assert page.locator("#link-form").count() == 0
    finally:
        page.close()
    with db.sessions() as s:
        merged = s.get(Customer, door)
        assert s.get(Customer, loyalty) is None
        assert (merged.display_name, merged.source, merged.external_ref) == ("Mina Park", "edge", ref)
        assert merged.external_ref_hash == external_ref_hash(s, ref) and merged.has_consent
        assert s.scalar(select(func.count()).select_from(Purchase).where(Purchase.customer_id == door)) == lines
        assert s.scalar(select(func.count()).select_from(Visit).where(Visit.customer_id == door)) == 2
        assert s.get(Menu, door) is None and s.get(MenuDayparts, loyalty) is None
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "customers-linked")).all()
        assert entry.customer_id == door and loyalty in entry.detail and "Mina" not in entry.detail


def test_link_refuses_two_door_enrolments_and_changes_nothing(trained):
    from dangol_cloud.web.customer_link import LinkError, link_customers

    db, _settings = trained
    a, b = _door_enrolment(db), _door_enrolment(db)
    with db.transaction() as s:
        s.add(PickOpinion(customer_id=b, item_id=s.scalar(select(Purchase.item_id).limit(1)), opinion="like"))
    with db.sessions() as s:
        with pytest.raises(LinkError, match="enrolled at the door"):
            link_customers(s, s.get(Customer, a), s.get(Customer, b), actor="owner")
        s.rollback()
    with db.sessions() as s:
        assert s.get(Customer, b) is not None
        assert s.scalar(select(func.count()).select_from(PickOpinion).where(PickOpinion.customer_id == b)) == 1
