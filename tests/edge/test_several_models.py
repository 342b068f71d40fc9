"""One edge serving two models: each answers over HTTP under its name, takes its own
updates, keeps its own state and counters, and sends its own feedback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from helpers import digit_inputs, make_manifest, publish_version, stream_events, variant
from tensor_models import TensorModel

from edge.daemon import EdgeDaemon
from shared.codec import sha256_hex
from shared.feedback_stream import feedback_stream
from shared.keys import FleetKeys
from shared.messages import EdgeStatus
from tests.serving import Signing, wait_for

pytestmark = pytest.mark.slow

Call = Callable[..., tuple[int, Any]]


def test_an_edge_serves_two_models_each_with_its_own_updates_and_status(
    daemon_factory: Callable[..., EdgeDaemon],
    serve: Callable[[EdgeDaemon], Call],
    regression_model: TensorModel,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
) -> None:
    reg = regression_model
    daemon = daemon_factory(models=["digits", reg.name])
    call = serve(daemon)
    assert daemon.settings.model == "digits"

    def publish_bearing(content: bytes, version: int) -> None:
        manifest = make_manifest(content, version, model=reg.name, **reg.manifest_fields())
        publish_version(
            redis_client, keys, signing.signer, content, version, model=reg.name, manifest=manifest
        )

    publish_version(redis_client, keys, signing.signer, variant(1), 1)  # digits v1
    publish_bearing(reg.content, 1)
    bearing = daemon.served(reg.name)
    wait_for(lambda: bearing.chain.current is not None, what="bearing v1 served")
    wait_for(lambda: daemon.chain.current is not None, what="digits v1 served")

    # Each model answers under its name; /v1/predict is the first model's.
    x = digit_inputs(1)[0].tolist()
    status, digits_answer = call("POST", "/v1/models/digits/predict", {"x": x})
    assert status == 200 and len(digits_answer["probabilities"]) == 10
    status, first = call("POST", "/v1/predict", {"x": x})
    assert status == 200 and first["label"] == digits_answer["label"]
    window = reg.X[0]
    status, answer = call("POST", f"/v1/models/{reg.name}/predict", {"x": window.tolist()})
    assert status == 200 and answer["output_names"] == ["bearing_temp_c"]
    assert answer["model_version"] == 1 and answer["label"] is None
    status, body = call("POST", "/v1/models/nope/predict", {"x": x})
    assert status == 404 and "'digits', 'bearing'" in body["detail"]
    status, body = call("POST", "/v1/models/nope/feedback", {"label": 1, "x": x})
    assert status == 404 and "'digits'" in body["detail"]
    status, body = call("POST", f"/v1/models/{reg.name}/predict", {"x": x})  # digits' input
    assert status == 422 and "[32, 4]" in body["detail"]

    # Feedback goes to each model's stream, with its own event ids.
    status, _ = call(
        "POST",
        f"/v1/models/{reg.name}/feedback",
        {"target": [float(reg.y[0][0])], "request_id": answer["request_id"]},
    )
    assert status == 202
    status, _ = call("POST", "/v1/feedback", {"label": 3, "request_id": first["request_id"]})
    assert status == 202
    assert bearing.uplink.flush(5) and daemon.uplink.flush(5)
    events = [
        *stream_events(redis_client, feedback_stream(keys, "digits")),
        *stream_events(redis_client, feedback_stream(keys, reg.name)),
    ]
    by_model = {e["model"]: e for e in events}
    assert set(by_model) == {"digits", reg.name}
    assert by_model[reg.name]["x_shape"] == [32, 4] and "target" in by_model[reg.name]
    heads = {e["event_id"].rsplit(":", 1)[0] for e in events}
    assert len(heads) == 2  # two epochs: the trainers' watermarks never mix the models

    # A new version of one model reaches only that model.
    publish_bearing(reg.content + b"\0" * 8, 2)
    wait_for(lambda: bearing.chain.current.version == 2, what="bearing v2 served")  # type: ignore[union-attr]
    assert daemon.chain.current is not None and daemon.chain.current.version == 1
    assert bearing.chain.last_known_good is not None
    assert bearing.store.current == sha256_hex(reg.content + b"\0" * 8)
    assert (daemon.settings.state_dir / reg.name / "state.json").exists()

    # The status reports each model; the top-level fields are the first model's.
    health = EdgeStatus.model_validate(call("GET", "/v1/health")[1])
    assert set(health.models) == {"digits", reg.name}
    assert health.model == "digits" and health.version == 1 and health.metric == "accuracy"
    reg_status = health.serving(reg.name)
    assert reg_status is not None and reg_status.version == 2 and reg_status.metric == "mae"
    assert reg_status.counters.swaps == 2 and health.counters.swaps == 1
    assert reg_status.counters.labeled == 1 and reg_status.rolling_metric is not None
    assert reg_status.state == "serving" and reg_status.rolling_accuracy is None

    # Redis sees the same report (the status reporter publishes the whole EdgeStatus).
    def reported() -> EdgeStatus | None:
        raw = redis_client.get(keys.device("pi-1"))
        status = EdgeStatus.from_wire(raw) if raw else None
        served = status.serving(reg.name) if status else None
        return status if served is not None and served.version == 2 else None

    assert wait_for(reported, what="a status with bearing v2").serving("digits").version == 1
    assert np.isfinite(answer["outputs"][0])
