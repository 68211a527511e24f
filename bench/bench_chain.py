#!/usr/bin/env python
"""A chain at scale (run by hand, not by pytest): PostgreSQL + Mosquitto with many stores and customers.

    python bench/bench_chain.py                                  # modest: 20 stores x 2,000 customers (~1-2 min)
    python bench/bench_chain.py --stores 200 --customers 100000  # the issue's chain: 100,000 menus
    python bench/bench_chain.py --not-enrolled                   # every menu to every store (stores x customers)

What it does, all real: creates a throwaway PostgreSQL database (``--postgres``, trust auth; dropped at the end
unless ``--keep``), migrates it, bulk-inserts the stores, consenting customers (names encrypted as in production;
each enrolled at one store, round robin, unless ``--not-enrolled``), a menu of ``--items`` items and one menu of
``--picks`` picks per customer (core SQL, batches of 10,000); starts its own ``mosquitto`` on a free port
(anonymous, no persistence: the broker keeps retained messages in memory); then times
:func:`dangol_cloud.publishing.publish` — the retained ``catalogue/1`` of every store and the retained ``menu/1``
of every customer at the store that enrolled them (every store with ``--not-enrolled``), QoS 1, as ``dangol-cloud
publish`` does.

Prints: rows inserted and seconds, publish seconds and messages per second, the broker's resident memory
(VmRSS from /proc) before and after, memory per retained message, the retained messages a store's box receives
when it subscribes (counted on one sampled store, ``menus/+`` and ``catalogue``), and a linear projection of
broker memory to ``--project-stores`` x ``--project-customers``. See docs/scaling.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE ``name`` through ``admin_url`` (a psycopg conninfo URL of the ``postgres`` database)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(db, n_stores: int, n_customers: int, n_items: int, n_picks: int, enrolled: bool = True,
         batch: int = 10_000) -> dict[str, float]:
    """Bulk-insert stores, items, one model version, consenting customers and their menus; seconds per table.
    With ``enrolled`` each customer was enrolled at one store (round robin, a ``customer_origins`` row), so
    :func:`~dangol_cloud.publishing.publish` sends the menu there only; without, to every store."""
    from sqlalchemy import insert

    from dangol_cloud.models import CatalogueItem, Customer, Menu, ModelVersion, Store
    from dangol_cloud.models_ops import CustomerOrigin

    now = datetime.now(UTC)
    seconds = {}
    items = [str(uuid.uuid4()) for _ in range(n_items)]
    t0 = time.perf_counter()
    stores = [str(uuid.uuid4()) for _ in range(n_stores)]
    with db.transaction() as s:
        s.execute(insert(Store), [{"id": store, "name": f"store {k:04d}", "ref": f"S{k:04d}", "created_at": now}
                                  for k, store in enumerate(stores)])
        s.execute(insert(CatalogueItem), [{"id": i, "ref": f"I{k:04d}", "name": f"item {k}", "category": f"c{k % 8}",
                                           "price": 3.5, "description": "", "tags": [], "available": True,
                                           "retired": False, "created_at": now, "updated_at": now}
                                          for k, i in enumerate(items)])
        s.execute(insert(ModelVersion), [{"version": "bench", "created_at": now, "path": "-", "details": {}}])
    seconds["stores + items"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = [str(uuid.uuid4()) for _ in range(n_customers)]
    for start in range(0, n_customers, batch):
        with db.transaction() as s:
            s.execute(insert(Customer), [{"id": c, "display_name": f"Customer {start + k} Bench", "status": "active",
                                          "source": "dashboard", "consent_by": "bench", "consent_at": now,
                                          "consent_text_version": "1", "created_at": now}
                                         for k, c in enumerate(ids[start:start + batch])])
            if enrolled:
                s.execute(insert(CustomerOrigin), [{"customer_id": c, "store_id": stores[(start + k) % n_stores],
                                                    "device_id": None, "created_at": now}
                                                   for k, c in enumerate(ids[start:start + batch])])
    seconds["customers"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, n_customers, batch):
        with db.transaction() as s:
            s.execute(insert(Menu), [{"customer_id": c, "model_version": "bench", "generated_at": now,
                                      "picks": [{"item_id": items[(start + k + j) % n_items], "score": 1.0 - j / 10,
                                                 "reasons": ["you often buy this (5 of your 9 visits)"]}
                                                for j in range(n_picks)]}
                                     for k, c in enumerate(ids[start:start + batch])])
    seconds["menus"] = time.perf_counter() - t0
    return seconds


def count_retained(url: str, topics: list[str], quiet: float = 2.0, timeout: float = 600.0) -> tuple[int, int]:
    """Subscribe with a fresh clean session and count the retained messages (and their bytes) that arrive until
    none has come for ``quiet`` seconds."""
    from dangol_cloud.mqtt import connect

    count, size, last = 0, 0, [time.monotonic()]
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        nonlocal count, size
        if msg.retain:
            with lock:
                count += 1
                size += len(msg.payload)
                last[0] = time.monotonic()

    client = connect(url, f"bench-box-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    for topic in topics:
        client.subscribe(topic, qos=1)
    start = time.monotonic()
    last[0] = start
    while time.monotonic() - last[0] < quiet and time.monotonic() - start < timeout:
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
    return count, size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", type=int, default=20)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--items", type=int, default=60, help="menu items in the catalogue")
    ap.add_argument("--picks", type=int, default=6, help="picks per customer's menu")
    ap.add_argument("--postgres", default=os.environ.get("DANGOL_BENCH_POSTGRES",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"),
                    help="conninfo URL of an existing database used to CREATE/DROP the throwaway one")
    ap.add_argument("--max-inflight", type=int, default=1000, help="mosquitto max_inflight_messages")
    ap.add_argument("--project-stores", type=int, default=200)
    ap.add_argument("--project-customers", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the throwaway database")
    ap.add_argument("--not-enrolled", action="store_true",
                    help="customers without an enrolling store: every store gets every menu (stores x customers)")
    args = ap.parse_args(argv)

    from rich.console import Console

    from dangol_cloud.crypto import decode_key, generate_key
    from dangol_cloud.db import Database
    from dangol_cloud.local_broker import BrokerError, MosquittoBroker
    from dangol_cloud.models import Store
    from dangol_cloud.publishing import publish

    import dangol_protocol as proto

    out = Console(width=160)
    name = f"dangol_bench_chain_{os.getpid()}"
    admin = args.postgres
    create_database(admin, name)
    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    out.print(f"throwaway database {name}; {args.stores} stores x {args.customers:,} customers, "
              f"{args.picks} picks each; load average {os.getloadavg()[0]:.1f}")
    try:
        db = Database(url, data_key=decode_key(generate_key(), "bench key"))
        t0 = time.perf_counter()
        db.migrate()
        out.print(f"migrated in {time.perf_counter() - t0:.1f} s")
        for table, sec in fill(db, args.stores, args.customers, args.items, args.picks,
                                not args.not_enrolled).items():
            out.print(f"insert {table:<15} {sec:7.1f} s")
        with db.sessions() as s:
            sample_store = s.query(Store).order_by(Store.name).first().id
        with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp, MosquittoBroker(
                tmp, options=[f"max_inflight_messages {args.max_inflight}", "max_queued_messages 0"],
                log_file=Path(tmp) / "log", log_types=()) as broker:  # anonymous, no persistence, a free port
            idle = rss_mib(broker.pid)
            from dangol_cloud.publishing import publish_catalogue_version

            with db.transaction() as s:
                publish_catalogue_version(s, published_by="bench")
            t0 = time.perf_counter()
            with db.transaction() as s:
                report = publish(s, broker.url, timeout=600.0)
            seconds = time.perf_counter() - t0
            messages = report.catalogue + report.menus
            time.sleep(1.0)
            after = rss_mib(broker.pid)
            out.print(f"publish: {messages:,} retained messages ({report.menus:,} menus, "
                      f"{report.catalogue} catalogues) in {seconds:.1f} s = {messages / seconds:,.0f} messages/s")
            per = (after - idle) * 1024 * 1024 / max(messages, 1)
            out.print(f"mosquitto RSS: idle {idle:.1f} MiB, after publish {after:.1f} MiB "
                      f"(+{after - idle:.1f} MiB, {per:,.0f} bytes per retained message)")
            t0 = time.perf_counter()
            count, size = count_retained(broker.url, [proto.menus_wildcard(sample_store),
                                                      proto.catalogue_topic(sample_store)])
            out.print(f"a store's box subscribing: {count:,} retained messages ({size / 1e6:.1f} MB) in "
                      f"{time.perf_counter() - t0 - 2.0:.1f} s (store {sample_store})")
            total = args.project_customers + args.project_stores if not args.not_enrolled else \
                args.project_stores * (args.project_customers + 1)
            out.print(f"projection to {args.project_stores} stores x {args.project_customers:,} customers: "
                      f"{total:,} retained messages, ~{total * per / 1024 ** 3:.1f} GiB of broker memory, "
                      f"~{total / (messages / seconds) / 60:.0f} min to publish at this rate")
    except BrokerError as exc:
        raise SystemExit(f"bench_chain: {exc}") from None
    finally:
        if not args.keep:
            drop_database(admin, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
