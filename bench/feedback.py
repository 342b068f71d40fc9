"""Feedback events/s from the edge (``EdgeDaemon.feedback``) to the trainer's
ack (ingest in its own process), vs ``redis-benchmark`` XADD of the same
payload with its default 50 clients; goal ≥ 0.5×."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import redis

from bench.ingest_worker import trainer_data
from bench.report import Result, at_least
from bench.setup import FLEET, MODEL, Bench, baseline_bytes, digits_inputs
from cloud.demo.services import python_module
from edge.daemon import EdgeDaemon
from shared.keys import FEEDBACK_GROUP, FleetKeys, legacy_feedback_group
from shared.messages import FeedbackEvent


def redis_benchmark_xadd(bench: Bench, payload: bytes, n: int) -> float:
    port = bench.client.connection_pool.connection_kwargs["port"]
    out = subprocess.run(
        [
            "redis-benchmark",
            "-p",
            str(port),
            "-n",
            str(n),
            "-q",
            "XADD",
            "bench:xadd",
            "*",
            "data",
            payload.decode(),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.findall(r"([\d.]+) requests per second", out)
    bench.client.delete("bench:xadd")
    return float(match[-1])


def _acked(client: redis.Redis, keys: FleetKeys) -> tuple[int, int]:
    """(events the trainer accepted, stream entries read but not acked yet) over the
    model's own stream and the fleet-wide one (where edges before streams per model
    write). Events, not entries: an edge's stream entry holds a batch of them. The
    count is exact: it is written in the transaction that acks the entries."""
    accepted = trainer_data(client, FLEET, MODEL).stats()["accepted"]
    pending = 0
    for stream, group in (
        (keys.feedback_of(MODEL), FEEDBACK_GROUP),
        (keys.feedback, legacy_feedback_group(MODEL)),
    ):
        if client.exists(stream):
            pending += int(client.xpending(stream, group)["pending"])
    return accepted, pending


def run(bench: Bench, quick: bool) -> Result:
    if shutil.which("redis-benchmark") is None:
        raise RuntimeError("redis-benchmark is not installed (it comes with redis-server)")
    n = 20_000 if quick else 100_000
    bench.publish(baseline_bytes())
    xs = digits_inputs(256)
    sample = FeedbackEvent(
        event_id="bench-feedback:e:1",
        device_id="bench-feedback",
        model=MODEL,
        x=xs[0].tolist(),
        label=3,
        predicted=3,
        model_version=1,
    )
    baseline = redis_benchmark_xadd(bench, sample.to_wire(), n)

    worker = bench.group.spawn(
        "ingest", python_module("bench.ingest_worker", bench.redis_url, FLEET, MODEL)
    )
    stream = bench.keys.feedback_of(MODEL)  # the ingest makes its streams and groups
    deadline = time.monotonic() + 30
    while not bench.client.exists(stream) and time.monotonic() < deadline:
        time.sleep(0.05)
    with EdgeDaemon(bench.edge_settings("bench-feedback")) as daemon:
        t0 = time.perf_counter()
        for i in range(n):
            daemon.feedback(label=int(i % 10), x=xs[i % len(xs)])
        submitted = time.perf_counter() - t0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            accepted, pending = _acked(bench.client, bench.keys)
            if accepted >= n and pending == 0:
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
    bench.group.stop(worker)
    accepted, pending = _acked(bench.client, bench.keys)
    result = at_least(
        "feedback edge->trainer ack vs redis-benchmark XADD",
        n / elapsed,
        baseline,
        "events/s",
        0.5,
        events=n,
        acked=accepted,
        submit_rate=round(n / submitted),
        payload_bytes=len(sample.to_wire()),
    )
    result.met = result.met and accepted >= n and pending == 0
    return result
