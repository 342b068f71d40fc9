"""The fleet summary (``GET /v1/fleet``'s ``FleetView.read_fleet``) from the fleet's counts
vs the scan it replaced (``FleetView.scan_fleet``: every device's status read and parsed),
in process against a real redis-server, at 1 000, 10 000 and 30 000 devices (``--quick``:
1 000 and 10 000); goal: the counted summary's p99 at most 50 ms at every size.

Also measured per size: the controller's fold of the reports edges wrote themselves
(reports/s), one page of ``GET /v1/devices`` by cursor, and the counts' Redis memory
per device.

And the rollout gate's step (``cloud/rollout/gate_book.py``) with a ring of N devices
on B, each of which sent one report since the last step, against reading and verifying
the whole ring (what a step did before the book, and what a stage's start still does);
goal: a step's cost at most 10x the share of the ring that reported (100 reports: the
ring's read at 1 000 devices, a tenth of it at 10 000)."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.report import Result, at_most
from bench.setup import FLEET, MODEL, Bench
from cloud.api.views.fleet import FleetView
from cloud.registry.blobs import DirBlobStore
from cloud.registry.fleet_counts import FleetCounts
from cloud.registry.versions import Registry
from cloud.rollout.controller import RolloutController
from shared.messages import EdgeCounters, EdgeStatus, VersionRecord
from shared.rollouts import GatePolicy, RolloutSpec, StageSpec
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


def measure_gate(bench: Bench, n: int, reporting: int = 100) -> Result:
    """A step of a one-ring rollout over ``n`` devices on B after ``reporting`` of them
    reported, against the ring's read."""
    client, keys = bench.client, bench.keys
    client.flushdb()
    a, b = "a" * 64, "b" * 64

    class Versions:
        def get(self, model: str, ref: str | int) -> VersionRecord:
            sha = b if str(ref) == "2" else a
            version = 2 if sha == b else 1
            return VersionRecord.model_construct(
                model=model, version=version, sha256=sha, size=0, created_at=0.0
            )

        def queue_artifact(self, pipe: Any, sha256: str) -> None:
            """Nothing is collected here: no file to bring back."""

    def report(devices: list[str], sha: str, served: int) -> None:
        pipe = client.pipeline(transaction=False)
        for i, d in enumerate(devices):
            counters = EdgeCounters(predictions=served, labeled=served, labeled_correct=served)
            s = EdgeStatus(device_id=d, fleet=FLEET, model=MODEL, sha256=sha, counters=counters)
            add_status(pipe, keys, s, 3600, 10 * n)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()

    devices = [f"dev-{i:07d}" for i in range(n)]
    report(devices, a, 10)
    client.set(keys.target(MODEL), a)
    controller = RolloutController(client, keys, Versions())
    gate = GatePolicy(min_dwell_s=10**6)
    r = controller.create(
        RolloutSpec(model=MODEL, target="2", stages=[StageSpec(name="all", percent=100)], gate=gate)
    )
    report(devices, b, 20)
    controller.step_one(r.id)  # every device's switch
    steps = []
    for k in range(20):
        report(random.Random(k).sample(devices, reporting), b, 30 + k)
        steps += _timed(lambda: controller.step_one(r.id), 1)
    ring = _timed(lambda: controller.statuses(devices), 3)
    step_p50, ring_p50 = statistics.median(steps), statistics.median(ring)
    record = len(client.get(keys.rollout(r.id)) or b"")
    result = at_most(
        f"rollout gate step, ring of {n:,}",
        round(step_p50, 2),
        round(ring_p50, 1),
        "ms p50",
        10 * reporting / n,
        reports_per_step=reporting,
        step_p99_ms=round(_p(steps, 0.99), 2),
        rollout_record_bytes=record,
    )
    return result


def run(bench: Bench, quick: bool) -> list[Result]:
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 30_000)
    return [measure(bench, n) for n in sizes] + [measure_gate(bench, n) for n in (1_000, 10_000)]
