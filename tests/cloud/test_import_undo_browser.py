"""The owner's journey in a real browser (headless Chromium, real SQLite, real Ta-Feng rows): a chain of stores gets
no default store on the upload form (a reviewer's upload went to "No store (history)" and another's to Seoul, the
first listed); an upload into the wrong store is undone from its result page (the confirmation names the store and
the lines), "Remove store" points to that undo and then works; an upload is undone from the purchases page's list.
"""

from __future__ import annotations

from sqlalchemy import func, select

from dangol_cloud.app import create_app
from dangol_cloud.models import Purchase, PurchaseImport, Store, StoreSetting
from dangol_cloud.settings import Settings
from tests.cloud.conftest import owner_database, screenshot_page, serving, sign_in_owner


def _count(db, *where) -> int:
    with db.sessions() as s:
        return s.scalar(select(func.count()).select_from(Purchase).where(*where))


def _upload(page, base: str, path, store_label: str | None) -> None:
    page.goto(base + "/purchases/")
    page.set_input_files("input[name=file]", str(path))
    if store_label:
        page.select_option("select[name=store]", label=store_label)
    page.click("#upload")


def test_undo_an_upload_into_the_wrong_store(browser, tmp_path, ta_feng_slice):
    broker, url, db, _main = owner_database(tmp_path)
    with db.transaction() as s:
        stores = {}
        for name, zone in (("Seoul", "Asia/Seoul"), ("Taipei", "Asia/Taipei")):
            store = Store(name=name, ref=name.lower())
            s.add(store)
            s.flush()
            s.add(StoreSetting(store_id=store.id, timezone=zone))
            stores[name] = store.id
    settings = Settings(cloud_home=tmp_path / "home", database_url=url, secret_key="undo-browser", _env_file=None)
    try:
        with serving(create_app(settings, db=db)) as base:
            folder, page = screenshot_page(browser, tmp_path, "import-undo", 60_000)
            sign_in_owner(page, base)

            # a chain: no store is chosen for the owner, and an upload without a choice is refused
            page.goto(base + "/purchases/")
            assert page.locator("select[name=store]").input_value() == ""
            assert "No store (history)" in page.locator("select[name=store]").inner_text()
            _upload(page, base, ta_feng_slice, None)
            assert "Choose the store of these sales" in page.locator("#upload-error").inner_text()
            assert _count(db) == 0

            # into Seoul by mistake
            _upload(page, base, ta_feng_slice, "Seoul")
            page.wait_for_selector("#job[data-state=done]")
            result_url = page.url
            page.screenshot(path=str(folder / "1-result.png"))
            assert _count(db, Purchase.store_id == stores["Seoul"]) == 3000

            # "Remove store" refuses, and says how to get rid of the sales
            page.goto(base + "/stores/")
            card = page.locator(".card").filter(has=page.locator("h2:text-is('Seoul')"))
            card.locator("button", has_text="Remove store").click()
            flash = page.locator(".flash.error").inner_text()
            assert "cannot be removed" in flash and "Undo this import" in flash

            # undo from the result page: the confirmation names the store and the lines
            page.goto(result_url)
            page.click("#undo button.undo-import")
            confirm = page.locator("#confirm").inner_text()
            page.screenshot(path=str(folder / "2-confirm.png"))
            assert "Undo this import into Seoul?" in confirm and "3,000 purchase lines" in confirm
            assert _count(db) == 3000  # nothing before the confirmation
            page.click("#confirm-button")
            page.wait_for_url(base + "/purchases/")
            done = page.locator(".flash.success").inner_text()
            page.screenshot(path=str(folder / "3-undone.png"))
            assert "Import undone (Seoul)" in done and "3,000 purchase lines removed" in done
            assert _count(db) == 0
            assert "undone" in page.locator("#imports").inner_text()

            # into Taipei, then undone from the purchases page's list
            _upload(page, base, ta_feng_slice, "Taipei")
            page.wait_for_selector("#job[data-state=done]")
            assert _count(db, Purchase.store_id == stores["Taipei"]) == 3000
            page.goto(base + "/purchases/")
            with db.sessions() as s:
                taipei_import = s.scalars(select(PurchaseImport.id)
                                          .where(PurchaseImport.store_id == stores["Taipei"])).one()
            page.click(f"#imports tr[data-import='{taipei_import}'] button.undo-import")
            assert "into Taipei" in page.locator("#confirm").inner_text()
            page.click("#confirm-button")
            page.wait_for_url(base + "/purchases/")
            assert _count(db) == 0

            # Seoul can be removed now
            page.goto(base + "/stores/")
            card = page.locator(".card").filter(has=page.locator("h2:text-is('Seoul')"))
            card.locator("button", has_text="Remove store").click()
            page.click("#confirm-button")
            page.wait_for_load_state()
            with db.sessions() as s:
                assert s.get(Store, stores["Seoul"]) is None
    finally:
        db.dispose()
        broker.stop()
