"""The fleet summary (``GET /v1/fleet``'s ``FleetView.read_fleet``) from the fleet's counts
vs the scan it replaced (``FleetView.scan_fleet``: every device's status read and parsed),
in process against a real redis-server, at 1 000, 10 000 and 30 000 devices (``--quick``:
1 000 and 10 000); goal: the counted summary's p99 at most 50 ms at every size.

Also measured per size: the controller's fold of the reports edges wrote themselves
(reports/s), one page of ``GET /v1/devices`` by cursor, and the counts' Redis memory
per device."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from bench.report import Result
from bench.setup import FLEET, MODEL, Bench
from cloud.api.views.fleet import FleetView
from cloud.registry.blobs import DirBlobStore
from cloud.registry.fleet_counts import FleetCounts
from cloud.registry.versions import Registry
from shared.messages import EdgeCounters, EdgeStatus
from shared.status_report import add_status

GOAL_MS = 50.0
STATES = ("serving", "serving", "serving", "degraded", "starting")


def _statuses(n: int, seed: int = 0) -> list[EdgeStatus]:
    rng = random.Random(seed)
    return [
        EdgeStatus(
            device_id=f"dev-{i:07d}",
            fleet=FLEET,
            model=MODEL,
            version=rng.choice([None, 1, 2, 3]),
            state=rng.choice(STATES),
            counters=EdgeCounters(predictions=rng.randrange(10_000), labeled=rng.randrange(100)),
        )
        for i in range(n)
    ]


def _timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(bench: Bench, n: int) -> Result:
    client, keys = bench.client, bench.keys
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    for i, s in enumerate(_statuses(n)):
        add_status(pipe, keys, s, 3600, 10 * n)  # as edges with Redis write them
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()

    counts = FleetCounts(client, keys)
    counts.recount()  # the counts as of now: empty, at an empty stream position
    client.set(keys.counts_cursor, "0-0")  # ... then fold every report, as the controller does
    t = time.perf_counter()
    counts.catch_up(rounds=10 * n // counts.batch + 1)
    fold_s = time.perf_counter() - t

    registry = Registry(client, keys, DirBlobStore(bench.workdir / "blobs"))
    view = FleetView(client, keys, registry, None, counts)
    assert view.read_fleet() == view.scan_fleet(), "the counts differ from a full scan"
    counted = _timed(view.read_fleet, 200)
    scanned = _timed(view.scan_fleet, max(3, min(30, 30_000 // n)))
    page = _timed(lambda: view.list_devices(500, cursor="dev-0000500"), 50)
    memory = sum(
        int(client.memory_usage(k) or 0)
        for k in (keys.counted, keys.counted_ids, keys.counted_live, keys.fleet_counts)
    )
    p99 = _p(counted, 0.99)
    scan_p99 = _p(scanned, 0.99)
    return Result(
        f"fleet summary, {n:,} devices",
        round(p99, 2),
        round(scan_p99, 2),
        "ms p99",
        round(p99 / scan_p99, 4),
        f"<= {GOAL_MS:g} ms",
        p99 <= GOAL_MS,
        {
            "counts_p50_ms": round(statistics.median(counted), 2),
            "scan_p50_ms": round(statistics.median(scanned), 1),
            "speedup_p50": round(statistics.median(scanned) / statistics.median(counted), 1),
            "fold_reports_per_s": round(n / fold_s),
            "devices_page_500_p99_ms": round(_p(page, 0.99), 1),
            "counts_bytes_per_device": round(memory / n),
        },
    )


def run(bench: Bench, quick: bool) -> list[Result]:
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 30_000)
    return [measure(bench, n) for n in sizes]
