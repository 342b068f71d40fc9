"""Prometheus metrics of the API process, exposed with ``prometheus-client``.

Fleet figures are read from Redis at scrape time by a collector: rollouts by
state, devices by version and health, and the edges' own counters summed over
the devices that are online, all from the fleet's counts (cloud/registry/
fleet_counts.py), not from each device (an edge's counters restart with it, so the sums
can go down: they are gauges). The API's requests are counted in-process by
method, route template and status. Each app has a registry of its own, so two
APIs in one process (tests) keep their figures apart.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from cloud.api.schemas import DevicePublic
from cloud.api.views.fleet import FleetView, version_label
from cloud.rollout.controller import RolloutController
from cloud.rollout.loop import ControllerLoop

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The controller loop running in this process now, if any.
LoopOf = Callable[[], ControllerLoop | None]

#: EdgeCounters fields exported as fleet-wide sums.
EDGE_COUNTERS = (
    "predictions",
    "failed_requests",
    "fallback_predictions",
    "labeled",
    "labeled_correct",
    "feedback_sent",
    "feedback_spooled",
    "feedback_dropped",
    "swaps",
    "updates_refused",
    "self_reverts",
    "bytes_downloaded",
    "patches_applied",
    "full_downloads",
    "patch_failures",
    "adapted_predictions",
    "adapter_labels",
    "adapter_switches",
)


class FleetCollector(Collector):
    """The fleet's rollouts and devices, and the controller loop of this process
    (``loop()``: the one running now, if any; the API starts it with its lifespan)."""

    def __init__(self, fleet: FleetView, controller: RolloutController, loop: LoopOf) -> None:
        self.fleet = fleet
        self.controller = controller
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        yield from self._rollouts()
        yield from self._devices()
        loop = self.loop()
        if loop is not None:
            steps = CounterMetricFamily(
                "edgeloop_controller_steps", "Rollout controller steps in this process."
            )
            steps.add_metric([], loop.steps)
            errors = CounterMetricFamily(
                "edgeloop_controller_errors",
                "Rollout controller steps that failed in this process.",
            )
            errors.add_metric([], loop.errors)
            yield from (steps, errors)

    def _rollouts(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "edgeloop_rollouts",
            "Rollouts by model and state (the newest 100).",
            labels=["model", "state"],
        )
        by_state = Tally((r.model, r.state) for r in self.controller.recent(limit=100))
        for (model, state), n in sorted(by_state.items()):
            family.add_metric([model, state], n)
        yield family

    def _devices(self) -> Iterator[Metric]:
        counts = self.fleet.counts
        counts.read_refresh()
        f = counts.read()
        family = GaugeMetricFamily(
            "edgeloop_devices",
            "Devices by served version and health.",
            labels=["version", "health"],
        )
        for (version, health), n in sorted(f.version_health.items()):
            family.add_metric([version, health], n)
        yield family
        yield from _edge_gauges(Tally(f.edge), Tally(f.reasons))


def scan_devices(devices: list[DevicePublic]) -> Iterator[Metric]:
    """The device families from every device's status, read one by one: what the
    collector exposed before the counts (``FleetView.statuses``), kept to check them."""
    yield _by_version(devices)
    yield from _edge_sums(devices)


def _by_version(devices: list[DevicePublic]) -> Metric:
    family = GaugeMetricFamily(
        "edgeloop_devices",
        "Devices by served version and health.",
        labels=["version", "health"],
    )
    version_health = Tally((version_label(d), d.health) for d in devices)
    for (version, health), n in sorted(version_health.items()):
        family.add_metric([version, health], n)
    return family


def _edge_sums(devices: list[DevicePublic]) -> Iterator[Metric]:
    """The online edges' counters summed, and their fallbacks by reason."""
    sums: Tally[str] = Tally()
    reasons: Tally[str] = Tally()
    for d in devices:
        if d.counters is None:
            continue
        for name in EDGE_COUNTERS:
            sums[name] += getattr(d.counters, name)
        reasons.update(d.counters.fallback_reasons)
    yield from _edge_gauges(sums, reasons)


def _edge_gauges(sums: Tally[str], reasons: Tally[str]) -> Iterator[Metric]:
    for name in EDGE_COUNTERS:
        yield GaugeMetricFamily(
            f"edgeloop_edge_{name}",
            f"Sum of the online edges' {name.replace('_', ' ')} counters.",
            value=sums[name],
        )
    by_reason = GaugeMetricFamily(
        "edgeloop_edge_fallbacks_by_reason",
        "Sum of the online edges' fallback answers by the first link's reason.",
        labels=["reason"],
    )
    for reason, n in sorted(reasons.items()):
        if n:
            by_reason.add_metric([reason], n)
    yield by_reason


class ApiMetrics:
    """One app's registry: the fleet collector and the request counter."""

    def __init__(self, fleet: FleetView, controller: RolloutController, loop: LoopOf) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(fleet, controller, loop))
        self.requests = Counter(
            "edgeloop_api_requests",
            "API requests answered.",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def install(app: FastAPI, metrics: ApiMetrics) -> None:
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
            metrics.requests.labels(request.method, template, str(status)).inc()
