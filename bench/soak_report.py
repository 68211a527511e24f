"""The report of ``bench/soak.py``: what one soak run measured (:class:`SoakRun`) and its printed summary.

Events produced are the ones the daemon's outbox took, as the soak's daemon process recorded them
(``bench/soak.py``, :func:`read_record`): since the edge deletes an outbox row once the broker acknowledges
it, the outbox table alone no longer shows what was produced.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

#: An event counts as "waited in the outbox" when the broker acknowledged it more than this many seconds after
#: the outbox took it (it was produced while the broker was down).
WAITED_S = 1.0


def median(xs):
    """The median of ``xs``; nan for an empty sequence."""
    return statistics.median(xs) if xs else float("nan")


def read_record(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Read the record the soak's daemon writes (lines ``q <event_id> <unix time>`` when the outbox takes an
    event, ``a <event_id> <unix time>`` when the broker acknowledges it).

    Returns:
        (event_id → time the outbox took it, event_id → time of its acknowledgement), each the first time seen,
        in seconds since the epoch; both empty when the file does not exist yet. A line cut short by a process
        that was killed while writing it is skipped.
    """
    queued: dict[str, float] = {}
    acked: dict[str, float] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return queued, acked
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("q", "a"):
            continue
        try:
            t = float(parts[2])
        except ValueError:
            continue
        (queued if parts[0] == "q" else acked).setdefault(parts[1], t)
    return queued, acked


@dataclass
class SoakRun:
    """What one soak run measured (times in seconds, memory in KiB)."""

    duration: float  # the daemon's planned run time
    ran: float  # time from the daemon's start to the end of the run
    sample_s: float  # RSS sampling period
    down_s: float  # seconds the broker stayed down each restart
    log_path: Path  # the daemon's log
    restarts: int = 0
    crashed: int | None = None  # the daemon's exit status when it exited before the end
    stop_rc: int | None = None  # its exit status after SIGTERM
    pending_at_stop: int = 0  # outbox rows left at that stop
    drained_by_restart: bool = False  # a second start sent them
    pending: int = 0  # outbox rows left at the end
    queued: dict[str, float] = field(default_factory=dict)  # event_id → time the outbox took it
    acked: dict[str, float] = field(default_factory=dict)  # event_id → time the broker acknowledged it
    received: list[str] = field(default_factory=list)  # event_ids at the subscriber, in order, with repeats
    counters: dict = field(default_factory=dict)  # the daemon's own counters, printed at its exit
    health: list[dict] = field(default_factory=list)  # the health reports on its status topic
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s since start, VmRSS, RssAnon)

    @property
    def waited(self) -> int:
        """Events acknowledged more than :data:`WAITED_S` after the outbox took them."""
        return sum(1 for e, t in self.queued.items() if e in self.acked and self.acked[e] - t > WAITED_S)

    @property
    def missing(self) -> list[str]:
        """Produced events the subscriber never received, in the order they were produced."""
        delivered = set(self.received)
        return [e for e in self.queued if e not in delivered]

    @property
    def ok(self) -> bool:
        """The verdict: events were produced, every one was delivered (repeats allowed), the daemon ran to the end."""
        return bool(self.queued) and not self.missing and self.crashed is None


def print_report(r: SoakRun) -> bool:
    """Print the summary of a soak run (``bench/soak.py``'s docstring lists the lines); returns :attr:`SoakRun.ok`."""
    delivered = set(r.received)
    produced = list(r.queued)
    missing = r.missing
    stray = delivered - set(produced)
    dups = len(r.received) - len(delivered)
    print()
    print(f"Soak of the edge daemon on short_hamilton_clip.mp4 (real time, looping, cool-down 0), "
          f"{min(r.ran, r.duration) / 60:.1f} min:")
    if r.crashed is not None:
        print(f"  DAEMON EXITED EARLY with status {r.crashed}; see {r.log_path}")
    print(f"  daemon stop            exit status {r.stop_rc} after SIGTERM; outbox pending at stop {r.pending_at_stop}"
          + (" (drained by a second start)" if r.drained_by_restart else ""))
    print(f"  broker restarts        {r.restarts} (SIGTERM, down {r.down_s:g} s, same port, persistence on)")
    print(f"  events produced        {len(produced)} (taken by the outbox; still pending {r.pending}; {r.waited} "
          f"waited > {WAITED_S:g} s in the outbox, i.e. were produced while the broker was down)")
    print(f"  events delivered       {len(produced) - len(missing)} unique event_ids of those at the subscriber"
          f" ({len(stray)} not produced)")
    print(f"  missing                {len(missing)}" + (f": {missing[:5]}…" if missing else ""))
    print(f"  duplicates received    {dups} (the cloud deduplicates on event_id)")
    c = r.counters
    if c:
        print(f"  daemon counters        arrivals {c['arrivals']}, unknown faces {c['unknown']}, "
              f"frames captured {c['frames_captured']}, dropped {c['frames_dropped']} "
              f"({100 * c['frames_dropped'] / max(1, c['frames_captured']):.1f} %), "
              f"processed {c['frames_processed']}")
    if r.health:
        fps = [h["fps"] for h in r.health]
        last = r.health[-1]
        frames = (f", frames captured {last['frames_captured']} / dropped {last['frames_dropped']}"
                  if last.get("frames_captured") is not None else "")
        print(f"  status/health          {len(r.health)} reports; last: camera {last['camera']}, fps {last['fps']}, "
              f"gallery_size {last['gallery_size']}, queue_depth {last['queue_depth']}{frames}; "
              f"fps min/median/max {min(fps)}/{median(fps)}/{max(fps)}")
    if r.samples:
        _print_rss(r)
    print(f"  result                 {'OK' if r.ok else 'FAIL'}: produced {len(produced)}, "
          f"delivered {len(produced) - len(missing)}")
    return r.ok


def _print_rss(r: SoakRun) -> None:
    """RSS at minute 1, at the end, the peak, and the flat/growing verdict (see ``bench/soak.py``)."""
    mib = [(t, k / 1024) for t, k, _ in r.samples]
    anon = [a / 1024 for _, _, a in r.samples]
    i_1 = min(range(len(mib)), key=lambda i: abs(mib[i][0] - 60))
    at_1 = mib[i_1]
    warm = min(60.0, r.duration / 3)
    post = [m for t, m in mib if t >= warm]
    third = max(1, len(post) // 3)
    first, last = median(post[:third]), median(post[-third:])
    change = (last - first) / first * 100 if first else float("nan")
    flat = abs(change) <= 10
    print(f"  RSS (MiB)              minute 1 ({at_1[0]:.0f} s) {at_1[1]:.1f}, end {mib[-1][1]:.1f}, "
          f"peak {max(m for _, m in mib):.1f}  ({len(r.samples)} samples every {r.sample_s:g} s); "
          f"anonymous part (RssAnon): minute 1 {anon[i_1]:.1f}, end {anon[-1]:.1f}, peak {max(anon):.1f}")
    print(f"  RSS verdict            {'FLAT' if flat else 'GROWING' if change > 0 else 'SHRINKING'}: "
          f"median of the last third {last:.1f} vs first third {first:.1f} after {warm:.0f} s warm-up "
          f"({change:+.1f} %, limit ±10 %)")
