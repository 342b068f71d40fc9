"""The daemon's in-process API: predict, feedback joins, health, status keys, lifecycle."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
from helpers import digit_inputs, publish_version, stream_events, variant

from edge.daemon import EdgeDaemon
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, FeedbackEvent
from shared.runtime import interpreter_class
from tests.serving import Signing, stream_frames, wait_for

Factory = Callable[..., EdgeDaemon]


@pytest.fixture
def serving(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> EdgeDaemon:
    """A daemon serving v1 from the cloud (not just the baseline)."""
    daemon = daemon_factory()
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: daemon.chain.current is not None, what="v1 served")
    return daemon


def test_feedback_joins_the_stored_input_and_prediction(
    serving: EdgeDaemon, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    x = digit_inputs(1, seed=4)[0]
    p = serving.predict(x.copy())
    accepted = serving.feedback(label=3, request_id=p.request_id)
    assert accepted.event_id == f"pi-1:{serving.store.epoch}:0" and accepted.queued
    assert serving.uplink.flush(5)
    (event,) = [
        FeedbackEvent.model_validate(e)
        for e in stream_events(redis_client, keys.feedback_of("digits"))
    ]
    assert event.x == x.tolist() and event.label == 3
    assert (event.predicted, event.model_version, event.request_id) == (p.label, 1, p.request_id)
    assert event.model_sha256 == p.model_sha256 and event.fallback is False
    assert event.device_id == "pi-1" and event.model == "digits"


def test_feedback_with_an_input_instead_of_a_request_id(
    serving: EdgeDaemon, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    serving.feedback(label=0, x=[1.0] * 64)
    serving.feedback(label=1, x=np.arange(64, dtype=np.float32).reshape(1, 64))
    serving.feedback(label=2, x=[0.1] * 63 + [7])  # float64 and int values: as the model's float32
    serving.feedback(label=3, x=np.full(64, 3e38, np.float32))  # large, but float32
    assert serving.uplink.flush(5)
    first, second, third, fourth = stream_events(redis_client, keys.feedback_of("digits"))
    assert first["x"] == [1.0] * 64 and "predicted" not in first and "request_id" not in first
    assert second["x"] == list(range(64))
    assert third["x"] == np.asarray([0.1] * 63 + [7.0], np.float32).tolist()
    assert (
        third["x_shape"] == [64]
        and third["x_dtype"] == "float32"
        and "x" not in third_raw(redis_client, keys)
    )
    assert fourth["x"] == [float(np.float32(3e38))] * 64


def third_raw(client: redis.Redis, keys: FleetKeys) -> dict[str, object]:
    """The third event's JSON as it is on the stream (its sample travels beside it)."""
    return stream_frames(client, keys.feedback_of("digits"))[2][0]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"label": 3, "request_id": "nope-1"}, "NotFound", "unknown or expired"),
        ({"label": 10, "x": [0.0] * 64}, "InputError", "outside the model's classes 0..9"),
        ({"label": -1, "x": [0.0] * 64}, "InputError", "outside"),
        ({"label": 1, "x": [0.0] * 63}, "InputError", r"shape \[64\]"),
        ({"label": 1, "x": [float("nan")] * 64}, "InputError", "finite"),
        ({"label": 1, "x": np.full(64, np.inf, np.float32)}, "InputError", "finite"),
        ({"label": 1, "x": np.array([np.inf, -np.inf] * 32, np.float32)}, "InputError", "finite"),
        ({"label": 1, "x": [1e39] * 64}, "InputError", "finite"),  # beyond float32
        ({"label": 1, "x": ["a"] * 64}, "InputError", "numbers"),
        ({"label": 1}, "InputError", "request_id"),
    ],
)
def test_bad_feedback_raises_a_named_error(
    serving: EdgeDaemon, kwargs: dict[str, object], error: str, message: str
) -> None:
    with pytest.raises(Exception, match=message) as info:
        serving.feedback(**kwargs)  # type: ignore[arg-type]
    assert type(info.value).__name__ == error
    assert serving.uplink.sent == 0


def test_labeled_feedback_feeds_the_rolling_accuracy(serving: EdgeDaemon) -> None:
    predictions = [serving.predict(x) for x in digit_inputs(4, seed=5)]
    for i, p in enumerate(predictions):
        serving.feedback(label=p.label if i < 3 else (p.label + 1) % 10, request_id=p.request_id)
    health = serving.health()
    assert health.rolling_accuracy == pytest.approx(0.75)
    assert (health.counters.labeled, health.counters.labeled_correct) == (4, 3)
    assert health.counters.predictions == 4
    assert health.latency_ms_p50 is not None and health.latency_ms_p99 is not None


@pytest.mark.redis_cluster
def test_status_is_published_to_the_health_key_stream_and_index(
    serving: EdgeDaemon, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    wait_for(lambda: redis_client.get(keys.device("pi-1")), what="health key")
    status = EdgeStatus.from_wire(redis_client.get(keys.device("pi-1")))  # type: ignore[arg-type]
    assert (
        status.device_id == "pi-1"
        and status.fleet == "lab"
        and status.runtime == interpreter_class()[1]  # whichever runtime is installed
    )
    assert 0 < redis_client.ttl(keys.device("pi-1")) <= 5
    assert redis_client.zscore(keys.devices, "pi-1") is not None
    wait_for(lambda: redis_client.xlen(keys.status) >= 2, what="periodic reports")
    latest = redis_client.xrevrange(keys.status, count=1)[0][1][b"data"]
    assert EdgeStatus.from_wire(latest).device_id == "pi-1"


def test_stop_is_idempotent_drains_feedback_and_reports_stopping(
    serving: EdgeDaemon, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    p = serving.predict([0.0] * 64)
    serving.feedback(label=1, request_id=p.request_id)
    serving.stop()
    serving.stop()
    assert len(stream_events(redis_client, keys.feedback_of("digits"))) == 1
    status = json.loads(redis_client.get(keys.device("pi-1")))  # type: ignore[arg-type]
    assert status["state"] == "stopping"
    assert serving.health().state == "stopping"


def test_two_daemons_run_side_by_side(
    daemon_factory: Factory, tmp_path: Path, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    a = daemon_factory(device_id="pi-a", state_dir=tmp_path / "a", http_port=0)
    b = daemon_factory(device_id="pi-b", state_dir=tmp_path / "b", http_port=0)
    ea = a.feedback(label=1, request_id=a.predict([0.0] * 64).request_id)
    eb = b.feedback(label=2, request_id=b.predict([0.0] * 64).request_id)
    assert ea.event_id.startswith("pi-a:") and eb.event_id.startswith("pi-b:")
    assert a.store.epoch != b.store.epoch
    with pytest.raises(Exception, match="unknown or expired"):
        a.feedback(label=1, request_id=b.predict([0.0] * 64).request_id)
    wait_for(lambda: redis_client.zcard(keys.devices) == 2, what="both devices reporting")
    assert a.uplink.flush(5) and b.uplink.flush(5)
    assert {e["device_id"] for e in stream_events(redis_client, keys.feedback_of("digits"))} == {
        "pi-a",
        "pi-b",
    }


def test_an_edge_with_redis_down_serves_and_spools(daemon_factory: Factory) -> None:
    daemon = daemon_factory(redis_url="redis://127.0.0.1:1/0")
    p = daemon.predict(np.zeros(64, np.float32))
    assert p.fallback_reason == "absent" and p.model_version is None  # the bundled baseline
    daemon.feedback(label=2, request_id=p.request_id)
    assert not daemon.uplink.flush(0.3)
    assert daemon.uplink.spooled == 1
    health = daemon.health()
    assert health.state == "degraded" and health.counters.feedback_spooled == 1
    assert health.last_error is not None and "refused" in health.last_error.lower()


def test_without_any_model_the_daemon_says_so(daemon_factory: Factory) -> None:
    daemon = daemon_factory(baseline_model=None, redis_url="redis://127.0.0.1:1/0")
    assert not daemon.can_serve
    with pytest.raises(Exception, match="no model is loaded") as info:
        daemon.predict([0.0] * 64)
    assert type(info.value).__name__ == "Unavailable"
    assert daemon.health().version is None
