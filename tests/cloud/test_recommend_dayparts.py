"""Day-part profiles (breakfast/lunch/afternoon/evening) computed by hand, and a day-part menu on real
Complete Journey purchases."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dangol_cloud.recommend import Recommender, RecommenderConfig, load_purchases, restrict_to_top_items, train
from dangol_cloud.recommend.dayparts import DayPartProfile, daypart_of


def test_daypart_of_hours() -> None:
    assert daypart_of(np.arange(24)).tolist() == [3] * 5 + [0] * 6 + [1] * 3 + [2] * 3 + [3] * 7


def test_daypart_adjustment_by_hand() -> None:
    # customer 0: item 0 at breakfast on days 1 and 2, items 0 and 1 in the evening of day 3;
    # customer 1: item 1 at breakfast on day 1
    u, i = np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 1, 1])
    day, hour = np.array([1, 2, 3, 3, 1]), np.array([8, 9, 19, 19, 8])
    profile = DayPartProfile.build(u, i, day, hour, (2, 2))
    adj = profile.adjustment(np.array([0]), 0, smoothing=1.0)[0]  # breakfast
    # q(bf | item 0) = (2 + 1) / (3 + 4) = 3/7;  q(bf | item 1) = (1 + 1) / (2 + 4) = 1/3
    # q(bf | u0, item 0) = (2 + 3/7) / (3 + 1) = 17/28;  q(bf | u0, item 1) = (0 + 1/3) / (1 + 1) = 1/6
    # visits: u0 breakfast 2 of 3, all customers 3 of 4 -> q(bf) = (3 + 1) / (4 + 4) = 1/2,
    # q(bf | u0) = (2 + 1/2) / (3 + 1) = 5/8
    assert adj == pytest.approx([math.log(17 / 28 / (5 / 8)), math.log(1 / 6 / (5 / 8))])
    assert DayPartProfile.build(u, i, day, np.zeros(5, int), (2, 2)) is None  # no time of day


def test_daypart_menus_on_complete_journey(tmp_path: Path) -> None:
    import os

    root = Path(os.environ.get("DANGOL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
    inter, items, _ = load_purchases(root / "purchases/completejourney/transactions.csv", "completejourney")
    households = sorted(inter["customer"].unique())[:150]
    sub, catalogue = restrict_to_top_items(inter[inter["customer"].isin(households)], items, 60)
    cfg = RecommenderConfig(no_components=8, epochs=3, rerank_max_customers=150, daypart_weight=2.0,
                            daypart_smoothing=2.0)
    model = train(sub, catalogue, config=cfg)
    assert model.dayparts is not None
    # in this slice most baskets are in the evening; afternoon menus should differ for afternoon shoppers
    hours = sub.assign(part=daypart_of(sub["ts"].dt.hour.to_numpy()))
    afternoon = hours[hours["part"] == 2]["customer"].value_counts().index[:20].tolist()
    menus = {h: model.recommend(afternoon, n=10, hour=h) for h in (15, 19)}
    changed = [c for c in afternoon if [p.item for p in menus[15][c]] != [p.item for p in menus[19][c]]]
    assert len(changed) >= 5
    assert any("you often have it at afternoon" in p.reasons for c in afternoon for p in menus[15][c])
    blind = model.recommend(afternoon, n=10)
    model.config = replace(model.config, daypart_weight=0.0)
    assert {c: [p.item for p in v] for c, v in model.recommend(afternoon, n=10, hour=15).items()} == {
        c: [p.item for p in v] for c, v in blind.items()}
    model.config = cfg
    loaded = Recommender.load(model.save(tmp_path))
    again = loaded.recommend(afternoon, n=10, hour=15)
    assert {c: [p.item for p in v] for c, v in again.items()} == {c: [p.item for p in v] for c, v in menus[15].items()}


def test_training_writes_daypart_menus_from_the_database(tmp_path: Path, sqlite_url) -> None:
    import os

    from sqlalchemy import select

    from dangol_cloud.importers import parse_purchases
    from dangol_cloud.ingest import import_rows
    from dangol_cloud.models import Menu, MenuDayparts
    from dangol_cloud.settings import Settings
    from dangol_cloud.training import train_from_database

    from .conftest import _database

    root = Path(os.environ.get("DANGOL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
    src = root / "purchases/completejourney"
    (tmp_path / "cj").mkdir()
    (tmp_path / "cj/products.csv").write_bytes((src / "products.csv").read_bytes())
    with (src / "transactions.csv").open() as fin, (tmp_path / "cj/transactions.csv").open("w") as fout:
        fout.write(next(fin))
        households = set()
        for line in fin:  # every line of the first 30 households in the file (whole histories)
            h = line.split(",", 1)[0]
            if h in households or len(households) < 30:
                households.add(h)
                fout.write(line)
    db = _database(sqlite_url)
    try:
        with db.transaction() as s:
            import_rows(s, parse_purchases(tmp_path / "cj/transactions.csv", "completejourney"),
                        source="completejourney", key_prefix="completejourney")
        settings = Settings(cloud_home=tmp_path / "home", database_url=sqlite_url, secret_key="x",
                            timezone="America/New_York", _env_file=None)  # the data's zone: its sales carry offsets
        train_from_database(db, settings)
        with db.sessions() as s:
            menus = {m.customer_id: m for m in s.scalars(select(Menu))}
            slots = s.scalars(select(MenuDayparts)).all()
    finally:
        db.dispose()
    assert len(slots) == len(menus) == 30
    for row in slots:
        assert set(row.dayparts) == {"breakfast", "lunch", "afternoon", "evening"}
        assert all(len(picks) == len(menus[row.customer_id].picks) for picks in row.dayparts.values())
    assert any(row.dayparts["breakfast"] != row.dayparts["evening"] for row in slots)


def test_complete_journey_times_are_the_shops_local_hours() -> None:
    """Complete Journey's ``transaction_timestamp`` is UTC (the year runs 2017-01-01 13:28 to 2018-01-01 03:47;
    baskets peak at 21-22 h and are fewest at 8 h): read as a wall clock, "breakfast" would be past midnight in
    the US. The importer marks it UTC, and the frames give US Eastern local time (:data:`DATASET_TIMEZONES`)."""
    import os
    from datetime import timezone

    from dangol_cloud.importers import parse_purchases

    root = Path(os.environ.get("DANGOL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
    path = root / "purchases/completejourney/transactions.csv"
    first = next(r for r in parse_purchases(path, "completejourney") if hasattr(r, "ts"))
    assert first.ts.tzinfo is not None and first.ts.utcoffset() == timezone.utc.utcoffset(None)
    inter, _, _ = load_purchases(path, "completejourney")
    assert inter["ts"].dt.tz is None  # naive local time, as the recommender's frames are
    assert inter["ts"].min().year == 2017 and inter["ts"].max().year == 2017  # the calendar year 2017, locally
    busiest = inter.drop_duplicates(["customer", "ts"])["ts"].dt.hour.value_counts().idxmax()
    assert 12 <= busiest <= 19  # a grocery's busiest hour is in the afternoon, not at 9-10 pm
