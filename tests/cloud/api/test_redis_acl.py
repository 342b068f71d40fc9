"""deploy/cloud/users.acl on a real redis-server: a real edge daemon does all it needs as
the ``edge`` user, which can do nothing else (no announcing, no targets, no reading
feedback or the replay buffer, no other fleet); trainer and API users do their jobs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry
from edge.daemon import EdgeDaemon
from edge.settings import BUNDLED_BASELINE, EdgeSettings
from shared.config import load_settings
from shared.feedback_stream import ADD_ENTRIES_SCRIPT
from shared.keys import FleetKeys
from shared.messages import ProbeSet
from shared.runtime import TFLiteModel
from shared.signing import Signer, write_keypair
from tests.acl_redis import acl_server, noperm
from tests.cloud.api_helpers import bearer, dev_api_settings, issue

ACL = Path(__file__).resolve().parents[3] / "deploy" / "cloud" / "users.acl"
USERS = ("admin", "trainer", "api", "edge")
FLEET = "default"  # the fleet the shipped file is written for


@pytest.fixture
def acl_redis(tmp_path) -> Iterator[dict[str, str]]:
    """A redis-server with the shipped ACL file (each user's placeholder hash replaced by the
    hash of a test password); the URL of each user."""
    lines = []
    for line in ACL.read_text().splitlines():
        user = line.split()[1]
        password = f"pw-{user}"
        lines.append(
            line.replace("#" + "0" * 64, "#" + hashlib.sha256(password.encode()).hexdigest())
        )
    text = "\n".join(lines) + "\n"
    with acl_server(
        text, tmp_path, lambda port: f"redis://admin:pw-admin@127.0.0.1:{port}/0"
    ) as port:
        urls = {u: f"redis://{u}:pw-{u}@127.0.0.1:{port}/0" for u in USERS}
        urls["anonymous"] = f"redis://127.0.0.1:{port}/0"
        yield urls


def test_an_edge_user_does_what_an_edge_does_and_nothing_else(acl_redis, tmp_path):
    keys, other = FleetKeys(FLEET), FleetKeys("other")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_redis["anonymous"]).ping()

    # The trainer publishes a version (it may not set the fleet's target: the edge follows
    # the announcement, as in a fleet with no target).
    trainer = redis.Redis.from_url(acl_redis["trainer"])
    write_keypair(tmp_path / "keys")
    registry = Registry(trainer, keys, DirBlobStore(tmp_path / "blobs"))
    content = BUNDLED_BASELINE.read_bytes() + b"\0"
    inputs = np.zeros((2, 64), dtype=np.float32)
    probe = ProbeSet(
        inputs=inputs.tolist(), expected=TFLiteModel(content).predict_proba_batch(inputs).tolist()
    )
    publisher = Publisher(
        registry, Signer.from_file(tmp_path / "keys" / "signing.key"), release="manual"
    )
    labels = [str(i) for i in range(10)]
    request = PublishRequest("digits", content, 64, labels, probe, runtime="ai-edge-litert")
    sha = publisher.publish(request).sha256

    # A real edge daemon as the edge user: installs it, serves, reports, sends feedback.
    settings = load_settings(
        EdgeSettings,
        None,
        device_id="pi-1",
        fleet=FLEET,
        redis_url=acl_redis["edge"],
        public_key=tmp_path / "keys" / "signing.pub",
        state_dir=tmp_path / "edge",
        status_interval_s=0.2,
        feedback_flush_ms=10,
        warmup_invokes=1,
    )
    with EdgeDaemon(settings) as daemon:
        deadline = time.monotonic() + 20
        while daemon.health().sha256 != sha:
            assert time.monotonic() < deadline, daemon.health().last_error
            time.sleep(0.05)
        p = daemon.predict(inputs[0])
        daemon.feedback(3, request_id=p.request_id)
        assert daemon.uplink.flush(10)
        deadline = time.monotonic() + 10
        while not trainer.exists(keys.device("pi-1")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert daemon.health().last_error is None, daemon.health().last_error
    # (on the model's own stream, or the fleet-wide one of edges before streams per model)
    assert trainer.xlen(keys.feedback) + trainer.xlen(keys.feedback_of("digits")) == 1
    assert redis.Redis.from_url(acl_redis["admin"]).xlen(keys.status) >= 1  # not the trainer's
    assert trainer.zscore(keys.devices, "pi-1") is not None

    edge = redis.Redis.from_url(acl_redis["edge"])
    allowed = [
        lambda: edge.xadd(keys.feedback, {"events": b"{}"}),
        lambda: edge.xadd(keys.feedback_of("digits"), {"events": b"{}"}),
        lambda: edge.evalsha(
            edge.script_load(ADD_ENTRIES_SCRIPT), 1, keys.feedback_of("digits"), b"{}"
        ),
        lambda: edge.xadd(keys.status, {"data": b"{}"}),
        lambda: edge.set(keys.device("pi-1"), b"{}", ex=10),
        lambda: edge.get(keys.device("pi-1")),
        lambda: edge.zadd(keys.devices, {"pi-1": 1.0}),
        lambda: edge.xread({keys.deltas: "0"}, count=1),
        lambda: edge.xrevrange(keys.deltas, count=1),
        lambda: edge.get(keys.manifest(sha)),
        lambda: edge.get(keys.artifact(sha)),
        lambda: edge.get(keys.patch(sha, sha)),
        lambda: edge.get(keys.target("digits")),
        lambda: edge.hget(keys.assignments("digits"), "pi-1"),
        lambda: edge.hget(keys.pins("digits"), "pi-1"),
    ]
    for i, call in enumerate(allowed):
        assert not noperm(call), f"allowed call {i} was refused"
    denied = {
        "announce a version": lambda: edge.xadd(keys.deltas, {"data": b"{}"}),
        "set a target": lambda: edge.set(keys.target("digits"), sha),
        "pin itself": lambda: edge.hset(keys.pins("digits"), "pi-1", sha),
        "write a manifest": lambda: edge.set(keys.manifest("ab" * 32), b"{}"),
        "read the feedback": lambda: edge.xrange(keys.feedback),
        "XREAD the feedback": lambda: edge.xread({keys.feedback: "0"}),
        "read it in a script": lambda: edge.eval(
            "return redis.call('XRANGE', KEYS[1], '-', '+')", 1, keys.feedback
        ),
        "read a model's feedback": lambda: edge.xrange(keys.feedback_of("digits")),
        "read a model's feedback in a script": lambda: edge.eval(
            "return redis.call('XRANGE', KEYS[1], '-', '+')", 1, keys.feedback_of("digits")
        ),
        "read a model's watermarks": lambda: edge.hgetall(keys.seen_of("digits")),
        "another fleet's model feedback": lambda: edge.xadd(
            other.feedback_of("digits"), {"events": b"{}"}
        ),
        "read the replay buffer": lambda: edge.hgetall(keys.replay("digits")),
        "read the weights": lambda: edge.get(keys.weights(sha)),
        "read tokens": lambda: edge.hgetall(keys.tokens),
        "delete the status": lambda: edge.delete(keys.device("pi-1")),
        "another fleet's target": lambda: edge.get(other.target("digits")),
        "another fleet's deltas": lambda: edge.xread({other.deltas: "0"}),
        "another fleet's feedback": lambda: edge.xadd(other.feedback, {"events": b"{}"}),
        "list keys": lambda: edge.keys("*"),
        "flush": lambda: edge.flushall(),
        "config": lambda: edge.config_get("*"),
    }
    refused = {what for what, call in denied.items() if noperm(call)}
    assert refused == set(denied)
    assert trainer.get(keys.target("digits")) is None  # nothing changed

    assert noperm(lambda: trainer.flushall()) and noperm(
        lambda: trainer.get(other.target("digits"))
    )
    edge.close()
    trainer.close()


def test_the_api_user_serves_the_api(acl_redis, tmp_path):
    api_client = redis.Redis.from_url(acl_redis["api"])
    token = issue(api_client, FLEET, "admin")
    settings = dev_api_settings(FLEET, acl_redis["api"], tmp_path, controller_interval_s=0.05)
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        status = {"device_id": "pi-1", "fleet": FLEET, "model": "digits", "state": "serving"}
        assert (
            api.post("/v1/devices/pi-1/status", json=status, headers=bearer(token)).status_code
            == 202
        )
        assert api.get("/v1/fleet", headers=bearer(token)).json()["online"] == 1
        event = {"event_id": "pi-1:e0:1", "device_id": "pi-1", "model": "digits", "x": [1.0]}
        r = api.post(
            "/v1/models/digits/feedback", json={**event, "label": 1}, headers=bearer(token)
        )
        assert r.status_code == 202, r.text
        assert api_client.xlen(FleetKeys(FLEET).feedback_of("digits")) == 1
        assert api.get("/healthz").status_code == 200
        assert api.get("/metrics", headers=bearer(token)).status_code == 200
        time.sleep(0.2)
        assert api.app.state.controller_loop.errors == 0
    api_client.close()


def test_a_command_the_redis_refuses_is_a_503_naming_it(acl_redis, tmp_path, caplog):
    """A deployment fault, not a client's: the API's Redis user without a write it needs
    (a node that refuses a command: NOPERM here; a cluster down or a read-only replica
    answer the same way) makes the request a 503 whose message names the refusal, and the
    API goes on serving what it can."""
    admin = redis.Redis.from_url(acl_redis["admin"])
    admin.acl_setuser(
        "reader",
        enabled=True,
        passwords=["+pw-reader"],
        keys=["*"],
        commands=["+@read", "+@connection", "+evalsha", "+script|load"],
    )
    api_client = redis.Redis.from_url(acl_redis["api"])
    token = issue(api_client, FLEET, "admin")
    url = acl_redis["api"].replace("api:pw-api", "reader:pw-reader")
    settings = dev_api_settings(FLEET, url, tmp_path, controller_interval_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        status = {"device_id": "pi-1", "fleet": FLEET, "model": "digits", "state": "serving"}
        r = api.post("/v1/devices/pi-1/status", json=status, headers=bearer(token))
        assert r.status_code == 503, r.text
        assert r.json()["detail"].startswith("the registry's Redis refused a command: ")
        assert "permission" in r.json()["detail"].lower()
        assert api.get("/v1/models", headers=bearer(token)).status_code == 200
    assert "Redis refused a command of POST /v1/devices/pi-1/status" in caplog.text
    admin.close()
    api_client.close()
