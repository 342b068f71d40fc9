"""``edgeloop demo --scenario bad-canary``: a harmful version stops at the canary ring.

Ten edges (or more) serve v1. An operator publishes two versions: a good one
(v2) and a harmful one (v3: the same network with its output labels permuted,
which verifies, loads and passes its own probe set, and answers wrongly). Both
are rolled out through the REST API with an admin token, ring by ring, and the
rollout controller (in the API process) judges each ring from what its devices
report. v2 reaches the whole fleet; v3 fails its canary ring on accuracy (and
the canaries' own guards revert it), so the canaries go back to v2 and no
other device ever receives v3.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import httpx
import numpy as np
import torch
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cloud.api.tokens import TokenStore
from cloud.data.datasets import split
from cloud.demo.runner import FLEET, Demo, DemoError, run_to_end
from cloud.demo.services import free_port, python_module, start_redis
from cloud.demo.view import edges_table
from cloud.export.exporter import ExportResult, export_int8
from cloud.learning.training import Hyperparameters, bootstrap
from cloud.registry.blobs import DirBlobStore
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import Registry
from shared.messages import Explanation
from shared.signing import Signer, write_keypair

logger = logging.getLogger(__name__)

#: Dev-only pepper of the demo's private API (its Redis and tokens die with the run).
DEMO_PEPPER = "edgeloop-demo-pepper-not-a-secret"

#: Gates sized for a demo: decisions after a few dozen labels, not hundreds.
DEMO_GATE = {
    "min_labeled": 30,
    "min_requests": 40,
    "min_dwell_s": 6.0,
    "max_accuracy_drop": 0.10,
    # ten edge processes share two cores here: latency says more about the machine than B
    "max_p99_ratio": 20.0,
    "stage_timeout_s": 240.0,
}

#: The rings of the scenario's rollouts: two canaries, then half the fleet, then all of it.
RINGS = [
    {"name": "canary", "count": 2},
    {"name": "half", "percent": 50},
    {"name": "all", "percent": 100},
]


def operator_versions(demo: Demo) -> tuple[ExportResult, ExportResult]:
    """A good model, and the same model with its output labels permuted (harmful, valid)."""
    parts = split(demo.dataset, demo.options.seed)
    train = parts.seed_train
    hp = Hyperparameters(epochs=30, batch_size=64, lr=3e-3, seed=demo.options.seed + 100)
    model = bootstrap(train, hp).model
    cal, probe = train.X[:200], parts.seed_holdout.X[:32]
    good = export_int8(model, cal, probe)
    harmful = copy.deepcopy(model)
    last = [m for m in harmful.modules() if isinstance(m, torch.nn.Linear)][-1]
    perm = np.roll(np.arange(last.out_features), 1)  # every class answers as another
    with torch.no_grad():
        last.weight.copy_(last.weight[perm])
        last.bias.copy_(last.bias[perm])
    return good, export_int8(harmful, cal, probe)


class BadCanaryDemo(Demo):
    def start(self) -> None:
        redis_url = self._start_redis_and_keys()
        # The trainer ingests and bootstraps v1 (the fleet's target); its own rounds are
        # off so that the rollouts below are the only way versions move.
        self._start_trainer(
            redis_url, self.private_key, round_min_samples=10**9, round_interval_s=10**6
        )
        self._wait("trainer bootstrap: first version", self._first_version, timeout=300)
        self._start_api(redis_url)
        guard: dict[str, Any] = {"guard_p99_floor_ms": 200.0, "guard_min_labeled": 25}
        for i in range(1, self.options.edges + 1):
            self._start_edge(f"edge-{i:02d}", redis_url, self.public_key, **guard)
        self._wait("edges serving", self._edges_serving, timeout=180)

    def _start_redis_and_keys(self) -> str:
        redis_url = start_redis(self.group)
        self.connect_redis(redis_url)
        self.private_key, self.public_key = write_keypair(self.workdir / "keys")
        return redis_url

    def _start_api(self, redis_url: str) -> None:
        port = free_port()
        config = self._config(
            "api.toml",
            {
                "mode": "development",
                "fleet": FLEET,
                "redis_url": redis_url,
                "port": port,
                "blob_dir": str(self.workdir / "blobs"),
                "public_key": str(self.public_key),
                "token_pepper": DEMO_PEPPER,
                "controller_interval_s": 1.0,
            },
        )
        self.group.spawn("api", python_module("cloud.cli.main", "api", "--config", str(config)))
        assert self.redis is not None
        _, token = TokenStore(self.redis, self.keys, DEMO_PEPPER.encode()).issue(
            "demo-operator", "admin", by="demo"
        )
        headers = {"Authorization": f"Bearer {token}"}
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0, headers=headers)
        self._wait("the REST API", self._api_up, timeout=60)

    def _api_up(self) -> bool:
        try:
            return self.api.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    # -- the scenario -------------------------------------------------------------

    def publish_operator_versions(self) -> tuple[int, int]:
        self.headline = "operator: building a good version and a harmful one"
        good, harmful = operator_versions(self)
        assert self.redis is not None
        registry = Registry(self.redis, self.keys, DirBlobStore(self.workdir / "blobs"))
        publisher = Publisher(registry, Signer.from_file(self.private_key), release="manual")
        good_version = self._publish(publisher, good, "retrained on the seed data")
        bad_version = self._publish(
            publisher, harmful, "output labels permuted on purpose (scenario)"
        )
        return good_version, bad_version

    def _publish(self, publisher: Publisher, exported: ExportResult, what: str) -> int:
        request = PublishRequest(
            self.model,
            exported.content,
            num_features=self.dataset.num_features,
            labels=self.dataset.labels,
            probe=exported.probe,
            runtime=exported.runtime,
            explanation=Explanation(trigger="operator", summary=what),
        )
        return publisher.publish(request).version

    def roll_out(self, version: int, live: Live, what: str) -> dict[str, Any]:
        body = {"model": self.model, "target": str(version), "gate": DEMO_GATE, "stages": RINGS}
        r = self.api.post("/v1/rollouts", json=body)
        if r.status_code != 201:
            raise DemoError(f"the API refused the rollout of v{version}: {r.status_code} {r.text}")
        rollout: dict[str, Any] = r.json()
        while rollout["state"] in ("running", "paused", "waiting"):
            self._check_children()
            stage = rollout["stages"][rollout["current"]]
            self.headline = (
                f"{what}: rollout {rollout['id']} of v{version}, stage {stage['name']} "
                f"({len(stage['devices'])} devices): {_gate_line(stage)}"
            )
            live.update(self._render())
            time.sleep(1.0)
            rollout = self.api.get(f"/v1/rollouts/{rollout['id']}").json()
        return rollout

    def run_scenario(self) -> dict[str, Any]:
        good, bad = self.publish_operator_versions()
        self.start_apps(rate_hz=10.0)
        with Live(self._render(), console=self.console, refresh_per_second=2) as live:
            self._serve_for(12.0, live, "serving v1: the edges build up labeled accuracy")
            good_rollout = self.roll_out(good, live, "good update")
            self._serve_for(8.0, live, f"v{good} everywhere: serving")
            bad_rollout = self.roll_out(bad, live, "harmful update")
            self._serve_for(8.0, live, f"v{bad} stopped; the canaries are back on v{good}")
            self.stop_apps()
        return self.scenario_result(good, bad, good_rollout, bad_rollout)

    def _serve_for(self, seconds: float, live: Live, headline: str) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._check_children()
            self.headline = f"{headline} ({end - time.monotonic():.0f}s)"
            live.update(self._render())
            time.sleep(1.0)

    def _render(self) -> Any:
        return Group(
            Panel(Text(self.headline, style="bold")), edges_table(self.edge_health(), self.apps)
        )

    def scenario_result(
        self, good: int, bad: int, good_r: dict[str, Any], bad_r: dict[str, Any]
    ) -> dict[str, Any]:
        edges = self.edge_health()
        served_bad = sorted(d for d, app in self.apps.items() if app.stats.versions.get(bad))
        failed_apps = sum(a.stats.failed + a.stats.feedback_failed for a in self.apps.values())
        failed_edges = sum(s.counters.failed_requests for s in edges.values() if s)
        return {
            "scenario": "bad-canary",
            "edges": len(self.edge_urls),
            "good_version": good,
            "good_rollout_state": good_r["state"],
            "bad_version": bad,
            "rollout_state": bad_r["state"],
            "rollout_reason": bad_r.get("reason", ""),
            "canary_devices": sorted(bad_r["stages"][0]["devices"]),
            "devices_that_served_bad_version": served_bad,
            "self_reverts": sum(s.counters.self_reverts for s in edges.values() if s),
            "fleet_versions": {d: (s.version if s else None) for d, s in sorted(edges.items())},
            "predictions": sum(a.stats.requests for a in self.apps.values()),
            "failed_requests": failed_apps + failed_edges,
        }


def _gate_line(stage: dict[str, Any]) -> str:
    gate = stage.get("gate") or {}
    acc_a, acc_b = gate.get("accuracy_a"), gate.get("accuracy_b")
    acc = (
        f"accuracy B {acc_b:.2f} vs A {acc_a:.2f}"
        if acc_a is not None and acc_b is not None
        else "collecting"
    )
    reasons = "; ".join(gate.get("reasons", [])[:2])
    return f"{gate.get('decision', 'starting')}, {acc}" + (f" ({reasons})" if reasons else "")


def summary(result: dict[str, Any]) -> Table:
    t = Table(title="edgeloop demo: bad canary")
    t.add_column("measure")
    t.add_column("value")
    for k, v in result.items():
        t.add_row(k, str(v))
    return t


def run_bad_canary(demo: BadCanaryDemo) -> dict[str, Any]:
    return run_to_end(demo, demo.run_scenario, summary)
