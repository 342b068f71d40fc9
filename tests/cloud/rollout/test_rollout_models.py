"""Rollouts in a fleet of two models whose edges serve both: a rollout of one model is
judged only on that model's entry of each edge's status (``EdgeStatus.models``), on the
task's metric (accuracy, higher is better; a regressor's MAE, lower is better)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from cloud.registry.blobs import MemoryBlobStore
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import Registry
from cloud.rollout.controller import RolloutController
from shared.errors import InputError
from shared.keys import FleetKeys
from shared.messages import EdgeCounters, EdgeStatus, ModelServing, ProbeSet
from shared.rollouts import GatePolicy, RolloutSpec, StageSpec, desired_sha
from shared.signing import Signer, generate_keypair
from shared.status_report import add_status

CLF, REG = "digits", "temp"
BOTH = [f"pi-{i:02d}" for i in range(6)]  # serve both models
CLF_ONLY = ["pi-10", "pi-11"]
GATE = GatePolicy(min_labeled=20, min_requests=20, min_dwell_s=5, stage_timeout_s=300)
STAGES = [StageSpec(name="canary", count=2), StageSpec(name="all", percent=100)]


class Clock:
    t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class TwoModelFleet:
    """Versions A and B of each model; every device reports what it serves, per model."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.keys = FleetKeys("lab")
        self.registry = Registry(client, self.keys, MemoryBlobStore())
        publisher = Publisher(self.registry, Signer(generate_keypair()[0]))
        probe = ProbeSet(inputs=[[0.0]], expected=[[0.5, 0.5]])
        rng = np.random.default_rng(0)
        self.shas: dict[str, list[str]] = {}
        for model in (CLF, REG):
            for _ in range(2):
                blob = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
                req = PublishRequest(model, blob, 1, ["a", "b"], probe, runtime="t")
                self.shas.setdefault(model, []).append(publisher.publish(req).sha256)
            client.set(self.keys.target(model), self.shas[model][0])
        self.clock = Clock()
        self.controller = RolloutController(client, self.keys, self.registry, clock=self.clock)
        self.counters = {(d, m): EdgeCounters() for d in BOTH + CLF_ONLY for m in (CLF, REG)}
        self.follow()

    def desired(self, device: str, model: str) -> str | None:
        def get(key: str, field: str | None = None) -> str | None:
            raw = self.client.hget(key, field) if field else self.client.get(key)
            return raw.decode() if raw else None

        return desired_sha(
            get(self.keys.target(model)),
            get(self.keys.assignments(model), device),
            get(self.keys.pins(model), device),
        )

    def serving(self, device: str, model: str, labeled: int, good: dict[str, bool]) -> ModelServing:
        sha = self.desired(device, model)
        on_b = sha == self.shas[model][1]
        ok = good[model] or not on_b
        c = self.counters[(device, model)]
        c.predictions += labeled
        c.labeled += labeled
        if model == CLF:
            c.labeled_correct += round(labeled * (0.95 if ok else 0.3))
            return ModelServing(
                model=model,
                sha256=sha,
                state="serving",
                rolling_accuracy=0.95 if ok else 0.3,
                metric="accuracy",
                rolling_metric=0.95 if ok else 0.3,
                counters=c,
                latency_ms_p99=1.0,
            )
        # A regressor's labeled_correct means nothing; its MAE is what counts.
        return ModelServing(
            model=model,
            sha256=sha,
            state="serving",
            metric="mae",
            rolling_metric=0.5 if ok else 2.0,
            counters=c,
            latency_ms_p99=1.0,
        )

    def follow(self, labeled: int = 30, **good: bool) -> None:
        """Every device serves what it is told, and reports on each of its models."""
        quality = {CLF: good.get(CLF, True), REG: good.get(REG, True)}
        for device in BOTH + CLF_ONLY:
            models = [CLF, REG] if device in BOTH else [CLF]
            on = {m: self.serving(device, m, labeled, quality) for m in models}
            first = on[CLF]
            status = EdgeStatus(
                device_id=device,
                fleet="lab",
                **first.model_dump(),
                models=on,
                ts=self.clock(),
            )
            pipe = self.client.pipeline(transaction=False)  # as an edge writes its report
            add_status(pipe, self.keys, status, 3600, 10_000)
            pipe.execute()

    def run(self, rollout_id: str, **good: bool) -> str:
        for _ in range(20):
            self.follow(**good)
            self.clock.t += 10
            r = self.controller.step_one(rollout_id)
            if r.state != "running":
                return r.state
        return self.controller.get(rollout_id).state


@pytest.fixture
def fleet(redis_client: redis.Redis) -> TwoModelFleet:
    return TwoModelFleet(redis_client)


def test_a_regressors_rollout_is_judged_on_its_own_mae(fleet: TwoModelFleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=REG, target="2", gate=GATE, stages=STAGES))
    # Only devices that serve the model are in its rings.
    assert set(r.stages[-1].devices) == set(BOTH)
    # B's MAE is four times A's, while the classifier on the same edges does well.
    assert fleet.run(r.id, temp=False) == "rolled_back"
    r = fleet.controller.get(r.id)
    assert "mae" in r.reason and "lower is better" in r.reason, r.reason
    gate = r.stages[0].gate
    assert gate["metric"] == "mae" and gate["metric_a"] == pytest.approx(0.5)
    assert gate["metric_b"] == pytest.approx(2.0) and gate["accuracy_b"] is None
    assert all(fleet.desired(d, REG) == fleet.shas[REG][0] for d in BOTH)


def test_a_rollout_ignores_the_other_models_health(fleet: TwoModelFleet) -> None:
    """The classifier on the same edges answers badly (its status entries say so); the
    regressor's rollout, judged on the regressor's entries only, completes."""
    r = fleet.controller.create(RolloutSpec(model=REG, target="2", gate=GATE, stages=STAGES))
    assert fleet.run(r.id, digits=False) == "completed"
    assert all(fleet.desired(d, REG) == fleet.shas[REG][1] for d in BOTH)
    assert all(fleet.desired(d, CLF) == fleet.shas[CLF][0] for d in BOTH + CLF_ONLY)


def test_a_classifiers_rollout_is_judged_on_its_accuracy_only(fleet: TwoModelFleet) -> None:
    r = fleet.controller.create(RolloutSpec(model=CLF, target="2", gate=GATE, stages=STAGES))
    assert set(r.stages[-1].devices) == set(BOTH + CLF_ONLY)
    assert fleet.run(r.id, digits=False, temp=True) == "rolled_back"
    r = fleet.controller.get(r.id)
    assert "accuracy" in r.reason and r.stages[0].gate["metric"] == "accuracy"
    r2 = fleet.controller.create(RolloutSpec(model=CLF, target="2", gate=GATE, stages=STAGES))
    assert fleet.run(r2.id, digits=True, temp=False) == "completed"


def test_a_model_no_device_serves_cannot_be_rolled_out(fleet: TwoModelFleet) -> None:
    fleet.client.zrem(fleet.keys.devices, *BOTH)  # not seen for long: only CLF_ONLY are left
    with pytest.raises(InputError, match="temp"):
        fleet.controller.create(RolloutSpec(model=REG, target="2", gate=GATE, stages=STAGES))
