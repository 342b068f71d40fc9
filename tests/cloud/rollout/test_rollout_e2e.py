"""Rollouts end to end: the REST API (its own controller thread) and real edge daemons
in-process on a real redis-server, serving real TFLite models and feeding labeled
feedback through their in-process API so the gates have data.

v1 and v2 are the bundled digits baseline (padded, so distinct versions that answer
alike); v3 is the committed permuted model (valid, signed, and wrong: it answers
(true + 1) % 10). The edges' own guard is off, so the cloud's gate is what decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry
from cloud.rollout.rings import ring_order
from edge.daemon import EdgeDaemon
from edge.settings import BUNDLED_BASELINE, EdgeSettings
from shared.config import load_settings
from shared.keys import FleetKeys
from shared.messages import ProbeSet
from shared.rollouts import AssignmentNotice
from shared.runtime import TFLiteModel
from shared.signing import Signer, write_keypair
from tests.cloud.api_helpers import PEPPER, bearer, issue, sample

FLEET = "roll"
LABELS = [str(i) for i in range(10)]
EDGE_DATA = Path(__file__).resolve().parents[2] / "edge" / "data"
PERMUTED = EDGE_DATA / "permuted_digits.tflite"
GATE = {
    "min_labeled": 20,
    "min_requests": 20,
    "min_dwell_s": 0.5,
    "stage_timeout_s": 60,
    "max_accuracy_drop": 0.1,
}
STAGES = [
    {"name": "canary", "count": 1},
    {"name": "half", "percent": 50},
    {"name": "all", "percent": 100},
]

pytestmark = pytest.mark.timeout(240)


def _probe(content: bytes) -> ProbeSet:
    inputs = np.random.default_rng(0).integers(0, 17, size=(8, 64)).astype(np.float32)
    return ProbeSet(
        inputs=inputs.tolist(), expected=TFLiteModel(content).predict_proba_batch(inputs).tolist()
    )


class Fleet:
    """Versions v1..v3 published (v1 the target), edge daemons, and labeled traffic."""

    def __init__(self, client: redis.Redis, redis_url: str, tmp: Path, devices: int) -> None:
        self.client, self.redis_url, self.tmp = client, redis_url, tmp
        self.keys = FleetKeys(FLEET)
        write_keypair(tmp / "keys")
        registry = Registry(client, self.keys, DirBlobStore(tmp / "blobs"))
        signer = Signer.from_file(tmp / "keys" / "signing.key")
        publisher = Publisher(registry, signer, release="manual")
        baseline = BUNDLED_BASELINE.read_bytes()
        self.shas = [""]  # by version number
        for content in (baseline + b"\0", baseline + b"\0\0", PERMUTED.read_bytes()):
            self.shas.append(
                publisher.publish(
                    PublishRequest(
                        "digits", content, 64, LABELS, _probe(content), runtime="ai-edge-litert"
                    )
                ).sha256
            )
        client.set(self.keys.target("digits"), self.shas[1])
        client.xadd(self.keys.deltas, {"assign": AssignmentNotice(model="digits").to_wire()})
        with np.load(EDGE_DATA / "digits_sample.npz", allow_pickle=False) as d:
            self.X, self.y = d["x"].astype(np.float32), d["y"].astype(int)
        self.ids = [f"pi-{i}" for i in range(devices)]
        self.daemons: dict[str, EdgeDaemon] = {}
        self.served: dict[str, set[str]] = {d: set() for d in self.ids}
        self.cursor = 0
        for device in self.ids:
            self.start(device)

    def settings(self, device: str) -> EdgeSettings:
        return load_settings(
            EdgeSettings,
            None,
            device_id=device,
            fleet=FLEET,
            redis_url=self.redis_url,
            public_key=self.tmp / "keys" / "signing.pub",
            state_dir=self.tmp / device,
            status_interval_s=0.2,
            status_ttl_s=2,
            feedback_flush_ms=10,
            warmup_invokes=1,
            desired_poll_s=1.0,
            guard_enabled=False,
        )

    def start(self, device: str) -> None:
        self.daemons[device] = EdgeDaemon(self.settings(device))
        self.daemons[device].start()

    def stop(self, device: str) -> None:
        self.daemons.pop(device).stop()

    def close(self) -> None:
        for d in list(self.daemons):
            self.stop(d)

    def serving(self, device: str) -> str | None:
        status = self.daemons[device].health()
        return status.sha256

    def traffic(self, n: int = 8) -> None:
        """``n`` labeled predictions on every running daemon, as a sensor app makes them."""
        for device, daemon in self.daemons.items():
            for _ in range(n):
                i = self.cursor % len(self.y)
                self.cursor += 1
                p = daemon.predict(self.X[i])
                self.served[device].add(p.model_sha256)
                daemon.feedback(int(self.y[i]), request_id=p.request_id)

    def until(self, predicate: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
        """Keep traffic flowing until ``predicate()`` is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.traffic()
            time.sleep(0.05)


@pytest.fixture
def fleet(redis_client, redis_url, tmp_path) -> Iterator[Fleet]:
    f = Fleet(redis_client, redis_url, tmp_path, devices=4)
    try:
        f.until(lambda: all(f.serving(d) == f.shas[1] for d in f.daemons), what="every edge on v1")
        yield f
    finally:
        f.close()


def _api(f: Fleet) -> ApiSettings:
    return ApiSettings(
        fleet=FLEET,
        redis_url=f.redis_url,
        blob_dir=f.tmp / "blobs",
        public_key=f.tmp / "keys" / "signing.pub",
        token_pepper=PEPPER,
        controller_interval_s=0.2,
    )


@pytest.fixture
def admin(fleet) -> dict[str, str]:
    return bearer(issue(fleet.client, FLEET, "admin"))


def _ended(api: TestClient, headers: dict[str, str], rid: str) -> Callable[[], Any]:
    def ended() -> Any:
        r = api.get(f"/v1/rollouts/{rid}", headers=headers).json()
        return r if r["state"] not in ("running", "waiting", "paused") else None

    return ended


def test_a_good_version_reaches_the_whole_fleet_and_a_bad_one_stops_at_the_canary(fleet, admin):
    f = fleet
    f.until(
        lambda: all(s.rolling_accuracy for s in map(EdgeDaemon.health, f.daemons.values())),
        what="accuracy on v1",
    )
    with TestClient(create_app(_api(f)), raise_server_exceptions=False) as api:
        r = api.post(
            "/v1/rollouts",
            headers=admin,
            json={"model": "digits", "target": "2", "stages": STAGES, "gate": GATE},
        )
        assert r.status_code == 201, r.text
        good = f.until(_ended(api, admin, r.json()["id"]), what="the good rollout to end")
        assert good["state"] == "completed", good["reason"]
        assert [s["status"] for s in good["stages"]] == ["passed"] * 3
        assert [len(s["devices"]) for s in good["stages"]] == [1, 2, 4]
        assert f.client.get(f.keys.target("digits")).decode() == f.shas[2]
        f.until(lambda: all(f.serving(d) == f.shas[2] for d in f.ids), what="every edge on v2")
        fleet_view = api.get("/v1/fleet", headers=admin).json()
        assert (
            fleet_view["by_version"] == {"v2": 4}
            and fleet_view["models"]["digits"]["target_version"] == 2
        )

        for d in f.ids:
            f.served[d].clear()
        r = api.post(
            "/v1/rollouts",
            headers=admin,
            json={"model": "digits", "target": "3", "stages": STAGES, "gate": GATE},
        )
        assert r.status_code == 201, r.text
        bad = f.until(_ended(api, admin, r.json()["id"]), what="the bad rollout to end")
        assert bad["state"] == "rolled_back", bad
        assert bad["current"] == 0 and bad["stages"][0]["status"] == "failed"
        assert "accuracy" in bad["reason"], bad["reason"]
        canary = bad["stages"][0]["devices"]
        assert canary == ring_order(f.ids)[:1]
        assert {d for d in f.ids if f.shas[3] in f.served[d]} == set(canary)  # nobody else
        assert f.client.get(f.keys.target("digits")).decode() == f.shas[2]
        f.until(lambda: all(f.serving(d) == f.shas[2] for d in f.ids), what="the canary back on v2")
        metrics = api.get("/metrics", headers=admin).text
        assert sample(metrics, "edgeloop_rollouts", model="digits", state="rolled_back") == 1
        assert sample(metrics, "edgeloop_rollouts", model="digits", state="completed") == 1
        assert sample(metrics, "edgeloop_devices", version="v2", health="serving") == 4


def test_an_offline_device_converges_and_a_restarted_controller_resumes(fleet, admin):
    f = fleet
    order = ring_order(f.ids)
    offline = order[-1]  # not a canary
    f.stop(offline)
    spec = {"model": "digits", "target": "2", "stages": STAGES, "gate": GATE}
    with TestClient(create_app(_api(f)), raise_server_exceptions=False) as api:
        r = api.post("/v1/rollouts", headers=admin, json=spec)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert offline in r.json()["stages"][-1]["devices"]  # seen recently: in the last ring
        f.until(
            lambda: api.get(f"/v1/rollouts/{rid}", headers=admin).json()["current"] >= 1,
            what="the canary stage to pass",
        )
    # No controller now: the rollout holds where it is.
    frozen = TestClient(create_app(_api(f).model_copy(update={"controller_interval_s": 0})))
    with frozen:
        before = frozen.get(f"/v1/rollouts/{rid}", headers=admin).json()
        for _ in range(10):
            f.traffic()
            time.sleep(0.05)
        after = frozen.get(f"/v1/rollouts/{rid}", headers=admin).json()
        assert after["state"] == "running" and after["current"] == before["current"]
    with TestClient(create_app(_api(f)), raise_server_exceptions=False) as api:  # a new process
        done = f.until(_ended(api, admin, rid), what="the resumed rollout to end")
        assert done["state"] == "completed", done["reason"]
        device = api.get(f"/v1/devices/{offline}", headers=admin).json()
        assert device["health"] in ("offline", "stopping")
    assert all(f.serving(d) == f.shas[2] for d in f.daemons)
    f.start(offline)
    f.until(lambda: f.serving(offline) == f.shas[2], what="the returning device on v2")
