"""An erasure by housekeeping (retention, an expired sign-up) is reported to the cloud even when the daemon dies
between the gallery's commit and the outbox's: the ids to report are recorded by the erasure's own transaction."""

from __future__ import annotations

import json
import sqlite3
import threading

from dangol_edge.events import EventFactory, Outbox
from dangol_edge.workers.base import Stats
from dangol_edge.workers.housekeeping import HousekeepingWorker
from tests.edge.test_clock_step import DAY, _regular, clock, door  # noqa: F401


def _reports(state) -> list[str]:
    return [c for r in state.pending(1000) for e in [json.loads(r["payload"])] if e["kind"] == "erasure-done"
            for c in e["customer_ids"]]


def _restarted(door, on_erased=None):  # noqa: F811
    """A housekeeping worker of a daemon started again on the same files."""
    import uuid

    events, outbox = EventFactory(uuid.UUID(int=0)), Outbox(uuid.UUID(int=0), door.state, None)
    return HousekeepingWorker(door.hk.config, door.gallery, door.state, outbox, None, Stats(),
                              on_erased or (lambda cid: outbox.erase([cid], [events.erasure_done([cid])])),
                              lambda: None, threading.Event())


def test_a_retention_erasure_is_reported_after_the_daemon_died_before_reporting_it(door):  # noqa: F811
    lin = _regular(door.gallery, "Lin Miranda", 2)
    door.gallery.db.execute("UPDATE customers SET updated_at = '2000-01-01T00:00:00+00:00'")

    def dies(cid):  # the outbox's commit never happens (the daemon is killed after the gallery's)
        raise sqlite3.OperationalError("disk I/O error")

    _restarted(door, dies).tidy()
    assert door.gallery.customers() == [] and _reports(door.state) == []
    _restarted(door).tidy()  # the next start
    assert _reports(door.state) == [lin]
    _restarted(door).tidy()  # reported once, not again
    assert _reports(door.state) == [lin]


def test_an_expired_signup_is_reported_after_the_daemon_died_before_reporting_it(door):  # noqa: F811
    from tests.edge.test_clock_step import _template

    pending = door.gallery.enroll("", _template(1), status="pending", pending_ttl_s=60)
    door.clock.advance(120)

    def dies(cid):
        raise sqlite3.OperationalError("disk I/O error")

    _restarted(door, dies).tidy()
    assert door.gallery.customers() == []
    _restarted(door).tidy()
    assert _reports(door.state) == [pending.id]
