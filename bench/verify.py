"""An update's apply time with TUF and director verification vs no verification at all
(``cloud/benchmarks/verify.py``, also ``edgeloop bench verify``), as the full file and as a
patch. Goal: the verification adds at most ``GOAL_ADDED_MS`` to an update; the edge checks
for updates every 30 s, so tens of milliseconds per update are nothing to a device."""

from __future__ import annotations

from bench.report import Result
from bench.setup import Bench
from cloud.benchmarks.verify import QUICK_RUNS, RUNS, measure

GOAL_ADDED_MS = 250.0


def run(bench: Bench, quick: bool) -> list[Result]:
    work = bench.workdir / "verify"  # its own keys, beside the bench's signing key
    work.mkdir()
    figures = measure(bench.redis_url, work, QUICK_RUNS if quick else RUNS)
    rows = []
    for encoding in ("full", "patch"):
        f = figures[encoding]
        added = f["verified_ms"] - f["baseline_ms"]
        rows.append(
            Result(
                f"verify_{encoding}",
                f["verified_ms"],
                f["baseline_ms"],
                "ms",
                f["ratio"],
                f"+<= {GOAL_ADDED_MS:g} ms",
                added <= GOAL_ADDED_MS,
                {"signed_ms": f["signed_ms"], "tuf_director_ms": f["tuf_director_ms"]},
            )
        )
    return rows
