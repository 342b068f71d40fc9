"""Prometheus metrics of the API process, in the text exposition format (0.0.4).

Written by hand (a few gauges and counters; no client library needed). Fleet
figures are read from Redis at scrape time: rollouts by state, devices by
version and health, and the edges' own counters summed over the devices that
are online (an edge's counters restart with it, so the sums can go down: they
are gauges). The API's requests are counted in-process by method, route
template and status.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request, Response

from cloud.fleet_view import FleetView
from cloud.rollout.controller import RolloutController

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: EdgeCounters fields exported as fleet-wide sums.
EDGE_COUNTERS = (
    "predictions", "failed_requests", "fallback_predictions", "labeled", "labeled_correct",
    "feedback_sent", "feedback_spooled", "feedback_dropped", "swaps", "updates_refused",
    "self_reverts", "bytes_downloaded", "patches_applied", "full_downloads", "patch_failures",
)  # fmt: skip


class RequestCounts:
    """Requests answered, by (method, route template, status)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, int]] = Counter()

    def add(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self._counts[(method, route, status)] += 1

    def items(self) -> list[tuple[tuple[str, str, int], int]]:
        with self._lock:
            return sorted(self._counts.items())


def install(app: FastAPI, counts: RequestCounts) -> None:
    """Count every request by its route's template (never the raw path: ids would
    make a series per device)."""

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            counts.add(request.method, template, status)


def exposition(
    fleet: FleetView,
    controller: RolloutController,
    counts: RequestCounts,
    loop: Any | None,
) -> str:
    lines: list[str] = []
    devices = fleet.statuses()

    by_state: Counter[tuple[str, str]] = Counter(
        (r.model, r.state) for r in controller.list(limit=100)
    )
    _family(lines, "edgeloop_rollouts", "gauge", "Rollouts by model and state (the newest 100).",
            (({"model": m, "state": s}, n) for (m, s), n in sorted(by_state.items())))  # fmt: skip

    version_health: Counter[tuple[str, str]] = Counter()
    for d in devices:
        version = (
            "unknown" if d.health == "offline" else (f"v{d.version}" if d.version else "baseline")
        )
        version_health[(version, d.health)] += 1
    _family(lines, "edgeloop_devices", "gauge", "Devices by served version and health.",
            (({"version": v, "health": h}, n) for (v, h), n in sorted(version_health.items())))  # fmt: skip

    sums: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for d in devices:
        if d.counters is None:
            continue
        for name in EDGE_COUNTERS:
            sums[name] += getattr(d.counters, name)
        reasons.update(d.counters.fallback_reasons)
    for name in EDGE_COUNTERS:
        _family(lines, f"edgeloop_edge_{name}", "gauge",
                f"Sum of the online edges' {name.replace('_', ' ')} counters.",
                [({}, sums[name])])  # fmt: skip
    _family(lines, "edgeloop_edge_fallbacks_by_reason", "gauge",
            "Sum of the online edges' fallback answers by the first link's reason.",
            (({"reason": r}, n) for r, n in sorted(reasons.items())))  # fmt: skip

    _family(lines, "edgeloop_api_requests_total", "counter", "API requests answered.",
            (({"method": m, "route": r, "status": str(s)}, n)
             for (m, r, s), n in counts.items()))  # fmt: skip
    if loop is not None:
        _family(lines, "edgeloop_controller_steps_total", "counter",
                "Rollout controller steps in this process.", [({}, loop.steps)])  # fmt: skip
        _family(lines, "edgeloop_controller_errors_total", "counter",
                "Rollout controller steps that failed in this process.", [({}, loop.errors)])  # fmt: skip
    return "\n".join(lines) + "\n"


def _family(
    lines: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[dict[str, str], float]],
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        if labels:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{inner}}} {_number(value)}")
        else:
            lines.append(f"{name} {_number(value)}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
