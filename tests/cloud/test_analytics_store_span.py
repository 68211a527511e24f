"""Analytics for one store names that store's data, not the chain's (owner journey, 7 Dec): a Seoul store with no
sales yet, beside Gangnam and Taipei with the real Ta-Feng slice, said "your data runs 2000-11-01 to 2000-11-02" —
the other stores' days."""

from __future__ import annotations

from dangol_cloud.models import Store

from .test_cloud_web import sign_in, web  # noqa: F401 - the fixture
from .test_owner_journey_fixes import two_zone_chain  # noqa: F401 - the fixture


def test_the_data_span_is_the_chosen_stores(two_zone_chain):  # noqa: F811
    app, db, _parsed, ids = two_zone_chain
    with db.transaction() as s:
        empty = Store(name="Seoul Seongsu", ref="seongsu")
        s.add(empty)
        s.flush()
        empty_id = empty.id
    client = app.test_client()
    sign_in(client)
    assert "your data runs 2000-11-01 to 2000-11-02" in client.get("/analytics/").get_data(as_text=True)
    assert "your data runs 2000-11-01 to 2000-11-02" in client.get(
        f"/analytics/?store={ids['gangnam']}").get_data(as_text=True)
    page = client.get(f"/analytics/?store={empty_id}").get_data(as_text=True)
    assert "your data runs" not in page  # no sale or arrival at this store yet
