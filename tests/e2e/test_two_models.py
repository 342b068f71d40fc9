"""Two models on the same edges, each with its own trainer, end to end.

A real redis-server, two in-process ``Trainer`` objects (the digits CNN and a
regression MLP over the regression example's sensor windows), two real edge
daemons that serve both models at once, the real publisher and the real rollout
controller. What is checked is state, never logs: the versions and sha256 each
edge serves per model, the counters of ``EdgeStatus.models``, the contents of the
feedback streams, the targets and assignments, and the rollouts' records.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis
import torch

from cloud.data.datasets import Split
from cloud.export.exporter import export_int8
from cloud.learning.weights import load_weights
from cloud.registry.publisher import Published, PublishRequest
from cloud.rollout.controller import RolloutController
from cloud.trainer.loop import Trainer
from cloud.trainer.settings import TrainerSettings
from edge.daemon import EdgeDaemon
from edge.settings import EdgeSettings
from shared.config import load_settings
from shared.feedback_stream import feedback_stream, frames_field, frames_of
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, ModelServing
from shared.rollouts import GatePolicy, Rollout, RolloutSpec, StageSpec
from shared.signing import write_keypair

pytestmark = [pytest.mark.slow, pytest.mark.cloud, pytest.mark.timeout(600)]

FLEET = "two"
CLF, REG = "digits", "bearing"
DEVICES = ["pi-a", "pi-b"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Small, fast trainers: rounds start on a count of new samples and the gate lets any
# child through (how good a round is, is the trainer tests' business; here it is
# which model a version, a patch or a rollout reaches).
TRAINER: dict[str, Any] = {
    "release": "direct",  # a published version is the fleet's target at once
    "bootstrap_epochs": 12,
    "epochs": 3,
    "refit_epochs": 2,
    "update_select_factor": 1,
    "round_min_samples": 50,
    "round_interval_s": 3600,
    # held-out samples are drawn at random from the events' ids: a third, of which a
    # round needs a few (a stricter figure would fail now and then on the draw)
    "holdout_every": 3,
    "gate_min_recent": 5,
    "min_gain": -1.0,
    "forgetting_tolerance": 1.0,
    "update_max_loss": 1.0,
    "drift_window": 1000,
    "status_interval_s": 0.2,
    "block_ms": 10,
    "replay_capacity": 1000,
    "recent_train": 300,
    "lock_ttl_ms": 300_000,
    "read_shared_stream": False,
}
GATE = GatePolicy(min_labeled=20, min_requests=20, min_dwell_s=0.5, stage_timeout_s=120)
STAGES = [StageSpec(name="canary", count=1), StageSpec(name="all", percent=100)]


def bearing_data() -> dict[str, object]:
    """A ``py:`` dataset: 600 sensor windows [32, 4] and temperatures (examples/regression),
    without the drift."""
    spec = importlib.util.spec_from_file_location(
        "example_regression", EXAMPLES / "regression" / "data.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data: dict[str, object] = module.make(n=600, n_drift=1)
    return {k: v for k, v in data.items() if not k.endswith("_drift")}


@dataclass
class TwoModelFleet:
    client: redis.Redis
    keys: FleetKeys
    trainers: dict[str, Trainer]
    edges: dict[str, EdgeDaemon]
    cursor: int = 0
    #: (device, model) -> every sha256 that answered the traffic there
    answered: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def parts(self, model: str) -> Split:
        return self.trainers[model].parts

    def sha(self, model: str, version: int) -> str:
        return dict(self.trainers[model].publisher.versions(model))[version]

    def serving(self, device: str, model: str) -> ModelServing:
        found = self.edges[device].health().serving(model)
        assert found is not None, f"{device} reports no {model}"
        return found

    def wait_serving(self, device: str, model: str, sha: str) -> None:
        """Wait until ``device`` reports serving ``sha`` as ``model``."""
        self.until(
            lambda: self.serving(device, model).sha256 == sha,
            what=f"{device} serving {model} {sha[:12]}",
        )

    def get(self, key: str) -> str | None:
        raw = self.client.get(key)
        return raw.decode() if isinstance(raw, bytes) else None

    def traffic(self, n: int = 10, models: tuple[str, ...] = (CLF, REG)) -> dict[str, int]:
        """``n`` labeled predictions per model on every edge, as a sensor app makes them
        (each sample predicted, then its truth sent back with the request id)."""
        sent = dict.fromkeys(models, 0)
        for device, daemon in self.edges.items():
            for _ in range(n):
                for model in models:
                    stream = self.parts(model).stream
                    i = self.cursor % len(stream.y)
                    served = daemon.served(model)
                    p = served.predict(stream.X[i])
                    self.answered.setdefault((device, model), set()).add(p.model_sha256)
                    if model == CLF:
                        served.feedback(int(stream.y[i]), request_id=p.request_id)
                    else:
                        truth = np.atleast_1d(stream.y[i]).astype(float).tolist()
                        served.feedback(target=truth, request_id=p.request_id)
                    sent[model] += 1
                self.cursor += 1
        for daemon in self.edges.values():
            for model in models:
                assert daemon.served(model).uplink.flush(10)
        return sent

    def ingest(self, model: str) -> None:
        """Let ``model``'s trainer read what is on its stream (and run a due round)."""
        trainer = self.trainers[model]
        for _ in range(200):
            if trainer.step(block_ms=20).entries == 0 and trainer._round is None:
                return

    def until(self, predicate: Callable[[], Any], timeout: float = 90, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def stream(self, model: str) -> list[dict[str, Any]]:
        """The FeedbackEvent JSON of every event on ``model``'s stream."""
        out = []
        entries = self.client.xrange(feedback_stream(self.keys, model))
        for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], entries):
            blob = frames_field(fields)
            assert blob is not None, "an edge writes frames"
            out += [json.loads(event) for event, _ in frames_of(blob)]
        return out


@pytest.fixture
def fleet(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[TwoModelFleet]:
    write_keypair(tmp_path / "keys")
    common: dict[str, Any] = {
        "fleet": FLEET,
        "redis_url": redis_url,
        "signing_key": tmp_path / "keys" / "signing.key",
        "blob_dir": tmp_path / "blobs",
        **TRAINER,
    }
    trainers = {
        CLF: Trainer(TrainerSettings(**common, consumer="trainer-digits"), background_rounds=False),
        REG: Trainer(
            TrainerSettings(
                **common,
                consumer="trainer-bearing",
                model="regression_mlp",
                model_name=REG,
                dataset=f"py:{__file__}:bearing_data",
            ),
            background_rounds=False,
        ),
    }
    edges: dict[str, EdgeDaemon] = {}
    try:
        for device in DEVICES:
            settings = load_settings(
                EdgeSettings,
                None,
                device_id=device,
                fleet=FLEET,
                models=[CLF, REG],
                redis_url=redis_url,
                public_key=tmp_path / "keys" / "signing.pub",
                state_dir=tmp_path / device,
                status_interval_s=0.2,
                status_ttl_s=5,
                feedback_flush_ms=10,
                warmup_invokes=1,
                desired_poll_s=0.5,
                guard_enabled=False,  # the cloud's gate decides rollouts here
            )
            edges[device] = EdgeDaemon(settings)
            edges[device].start()
        yield TwoModelFleet(redis_client, FleetKeys(FLEET), trainers, edges)
    finally:
        for daemon in edges.values():
            daemon.stop(timeout=2.0)
        for trainer in trainers.values():
            trainer.close()


def run_rollout(f: TwoModelFleet, controller: RolloutController, rollout: Rollout) -> Rollout:
    """Step the rollout while both models on every edge keep answering labeled traffic;
    at every step, the other model's target and assignments stay as they were."""
    other = REG if rollout.model == CLF else CLF
    untouched = (f.get(f.keys.target(other)), f.client.hgetall(f.keys.assignments(other)))
    deadline = time.monotonic() + 120
    r = rollout
    while r.state == "running":
        assert time.monotonic() < deadline, f"rollout {r.id} still running: {r}"
        f.traffic(5)
        time.sleep(0.25)  # a status report or two from each edge
        r = controller.step_one(r.id)
        now = (f.get(f.keys.target(other)), f.client.hgetall(f.keys.assignments(other)))
        assert now == untouched, f"the rollout of {rollout.model} changed {other}'s"
    return r


def test_an_edge_serves_two_models_with_two_trainers(fleet: TwoModelFleet) -> None:
    f = fleet
    clf, reg = f.trainers[CLF], f.trainers[REG]

    # (1) Each trainer bootstraps its own model; both edges load both v1s.
    for trainer in (clf, reg):
        trainer.start()
    assert [v for v, _ in clf.publisher.versions(CLF)] == [1]
    assert [v for v, _ in reg.publisher.versions(REG)] == [1]
    v1 = {m: f.sha(m, 1) for m in (CLF, REG)}
    assert v1[CLF] != v1[REG]
    for device in DEVICES:
        for model in (CLF, REG):
            f.wait_serving(device, model, v1[model])
    health = f.edges[DEVICES[0]].health()
    assert health.serving(CLF).metric == "accuracy"  # type: ignore[union-attr]
    assert health.serving(REG).metric == "mae"  # type: ignore[union-attr]

    # (2) Feedback through the edges lands on each model's own stream, and each trainer
    # reads only its own.
    sent = f.traffic(20)  # fewer than a round needs
    assert sent == {CLF: 40, REG: 40}
    clf_events, reg_events = f.stream(CLF), f.stream(REG)
    assert len(clf_events) == 40 and {e["model"] for e in clf_events} == {CLF}
    assert len(reg_events) == 40 and {e["model"] for e in reg_events} == {REG}
    assert all(e["label"] is not None and e.get("target") is None for e in clf_events)
    assert all(e["target"] is not None and e["x_shape"] == [32, 4] for e in reg_events)
    assert f.client.xlen(f.keys.feedback) == 0  # nothing on the fleet-wide stream
    f.ingest(CLF)
    assert clf.data.stats()["accepted"] == 40 and reg.data.stats()["accepted"] == 0
    f.ingest(REG)
    assert reg.data.stats()["accepted"] == 40 and clf.data.stats()["accepted"] == 40
    for model in (CLF, REG):
        stream = feedback_stream(f.keys, model)
        groups = f.client.xinfo_groups(stream)
        assert [(g["name"], g["pending"]) for g in groups] == [(b"trainers", 0)], groups
        readers = f.client.xinfo_consumers(stream, "trainers")
        assert [c["name"].decode() for c in readers] == [f.trainers[model].settings.consumer]
    assert clf.status.rounds == 0 and reg.status.rounds == 0

    # (3) A round of the classifier publishes its v2 as a patch; the edges apply it to
    # the classifier only.
    before = {d: {m: f.serving(d, m).counters for m in (CLF, REG)} for d in DEVICES}
    f.traffic(15, models=(CLF,))
    f.ingest(CLF)
    assert clf.status.rounds == 1, clf.status.last_round
    version, sha2, signed = clf.publisher.latest(CLF)  # type: ignore[misc]
    assert version == 2 and signed.manifest().parent_sha256 == v1[CLF]
    assert f.get(f.keys.target(CLF)) == sha2 and f.get(f.keys.target(REG)) == v1[REG]
    for device in DEVICES:
        f.wait_serving(device, CLF, sha2)
        now = f.serving(device, CLF).counters
        assert now.patches_applied == before[device][CLF].patches_applied + 1
        assert now.full_downloads == before[device][CLF].full_downloads
        assert f.edges[device].served(CLF).store.current == sha2
        other = f.serving(device, REG)
        assert other.sha256 == v1[REG] and other.version == 1
        assert other.counters.patches_applied == before[device][REG].patches_applied
        assert other.counters.swaps == before[device][REG].swaps
    assert reg.publisher.versions(REG) == [(1, v1[REG])]

    # ... then a round of the regressor does the same for the regressor.
    f.traffic(15, models=(REG,))
    f.ingest(REG)
    assert reg.status.rounds == 1, reg.status.last_round
    version, reg2, signed = reg.publisher.latest(REG)  # type: ignore[misc]
    assert version == 2 and signed.manifest().parent_sha256 == v1[REG]
    for device in DEVICES:
        f.wait_serving(device, REG, reg2)
        assert f.serving(device, REG).counters.patches_applied == 1
        assert f.serving(device, CLF).sha256 == sha2
        assert f.serving(device, CLF).counters.patches_applied == 1
    assert [v for v, _ in clf.publisher.versions(CLF)] == [1, 2]

    # (4) Versions 3, released by rollouts: rings over the two edges, each gate judging
    # its model's metric from that model's entry of the edges' statuses.
    for trainer in (clf, reg):
        trainer.publisher.release = "manual"
    f.traffic(25)  # a round of each
    f.ingest(CLF)
    f.ingest(REG)
    assert clf.status.rounds == 2 and reg.status.rounds == 2
    clf3, reg3 = f.sha(CLF, 3), f.sha(REG, 3)
    assert f.get(f.keys.target(CLF)) == sha2 and f.get(f.keys.target(REG)) == reg2

    controller = RolloutController(f.client, f.keys, clf.registry)
    r = controller.create(RolloutSpec(model=CLF, target="3", gate=GATE, stages=STAGES))
    assert len(r.stages[0].devices) == 1 and sorted(r.stages[-1].devices) == DEVICES
    r = run_rollout(f, controller, r)
    assert r.state == "completed", r.reason
    gate = r.stages[0].gate
    assert gate["metric"] == "accuracy" and gate["metric_b"] is not None, gate
    assert f.get(f.keys.target(CLF)) == clf3
    assert not f.client.exists(f.keys.assignments(CLF))
    # The regressor was not touched: same target, no assignments, same file served.
    assert f.get(f.keys.target(REG)) == reg2 and not f.client.exists(f.keys.assignments(REG))
    for device in DEVICES:
        f.wait_serving(device, CLF, clf3)
        assert f.serving(device, REG).sha256 == reg2

    r = controller.create(RolloutSpec(model=REG, target="3", gate=GATE, stages=STAGES))
    r = run_rollout(f, controller, r)
    gate = r.stages[0].gate
    assert gate["metric"] == "mae" and gate["accuracy_b"] is None, gate
    assert gate["metric_a"] is not None and gate["metric_b"] is not None, gate
    assert r.state == "completed", r.reason
    assert f.get(f.keys.target(REG)) == reg3 and f.get(f.keys.target(CLF)) == clf3
    for device in DEVICES:
        f.wait_serving(device, REG, reg3)
        assert f.serving(device, CLF).sha256 == clf3

    # A regressor version that is off by five standard deviations: valid, signed, and
    # wrong. Its rollout stops at the canary on the regressor's MAE (on the edges' own
    # labeled traffic) and leaves the classifier alone.
    bad = publish_offset_version(reg, reg3)
    r = controller.create(RolloutSpec(model=REG, target=str(bad.version), gate=GATE, stages=STAGES))
    canary = r.stages[0].devices[0]
    r = run_rollout(f, controller, r)
    assert r.state == "rolled_back", r
    assert r.current == 0 and r.stages[0].status == "failed"
    assert "mae" in r.reason and "lower is better" in r.reason, r.reason
    gate = r.stages[0].gate
    assert gate["metric"] == "mae" and gate["metric_b"] > 2 * gate["metric_a"], gate
    assert f.get(f.keys.target(REG)) == reg3 and not f.client.exists(f.keys.assignments(REG))
    assert f.get(f.keys.target(CLF)) == clf3 and not f.client.exists(f.keys.assignments(CLF))
    for device in DEVICES:
        f.wait_serving(device, REG, reg3)
        assert f.serving(device, CLF).sha256 == clf3
    assert f.edges[canary].served(REG).store.current == reg3
    # The canary answered with the bad version (the gate had its labeled traffic); the
    # other edge never did.
    assert [d for d in DEVICES if bad.sha256 in f.answered[(d, REG)]] == [canary]
    status = EdgeStatus.from_wire(f.client.get(f.keys.device(DEVICES[0])))  # type: ignore[arg-type]
    assert set(status.models) == {CLF, REG}


def publish_offset_version(trainer: Trainer, base_sha: str) -> Published:
    """Publish (release manual: no target) the regressor ``base_sha`` with its output
    shifted by five of the targets' standard deviations, exported as a round would."""
    model = trainer.rounds.fresh_model()
    raw = trainer.client.get(trainer.keys.weights(base_sha))
    assert isinstance(raw, bytes)
    load_weights(model.net, raw)
    last = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.add_(5.0)  # the output layer works in standardized target units
    data = trainer.parts.seed_train
    probe = trainer.parts.seed_holdout.X[:32]
    exported = export_int8(model, data.X[:200], probe, min_agreement=0.0)
    return trainer.publisher.publish(
        PublishRequest(
            trainer.settings.model_name,
            exported.content,
            num_features=data.num_features,
            labels=trainer.rounds.labels,
            probe=exported.probe,
            runtime=exported.runtime,
            input=data.input,
            task=data.task,
        )
    )
