"""The local HTTP API, served by a real uvicorn on a free port (stdlib client, so
the edge-only install needs no httpx)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
import uvicorn
from helpers import publish_version, stream_events, variant
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.api import MAX_BODY_BYTES, create_app
from edge.daemon import EdgeDaemon
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, FeedbackAccepted, PredictResponse
from tests.serving import Signing, wait_for

Factory = Callable[..., EdgeDaemon]
Call = Callable[..., tuple[int, Any]]


@pytest.fixture
def api(daemon_factory: Factory, serve: Callable[[EdgeDaemon], Call]) -> Call:
    return serve(daemon_factory())


X = [float(i % 17) for i in range(64)]


def test_predict_answers_with_a_request_id(api: Call) -> None:
    status, body = api("POST", "/v1/predict", {"x": X})
    assert status == 200
    p = PredictResponse.model_validate(body)
    assert len(p.probabilities) == 10 and 0 <= p.label < 10 and p.request_id
    assert p.fallback and p.fallback_reason == "absent"  # only the bundled baseline yet
    status, body = api("POST", "/v1/predict", {"x": X, "budget_ms": 5})
    assert status == 200 and body["request_id"] != p.request_id


def test_predict_answers_from_a_published_version(
    daemon_factory: Factory,
    serve: Callable[[EdgeDaemon], Call],
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
) -> None:
    daemon = daemon_factory()
    call = serve(daemon)
    publish_version(redis_client, keys, signing.signer, variant(1), 1)
    wait_for(lambda: daemon.chain.current is not None, what="v1 served")
    status, body = call("POST", "/v1/predict", {"x": X})
    assert status == 200 and body["model_version"] == 1 and body["fallback"] is False


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"x": [1.0, 2.0]}', "shape [64]"),
        (b'{"x": [' + b"NaN, " * 63 + b"1.0]}", "finite"),
        (b'{"x": [' + b"1e39, " * 63 + b"1.0]}", "finite"),
        (b'{"x": []}', "at least 1"),
        (b'{"x": "abc"}', "list"),
        (b'{"budget_ms": 5}', "Field required"),
        (b'{"x": [1.0], "budget_ms": 0}', "greater than 0"),
        (b"{not json", "JSON"),
    ],
)
def test_bad_predict_input_is_a_422_with_a_message(api: Call, raw: bytes, message: str) -> None:
    status, body = api("POST", "/v1/predict", raw=raw)
    assert status == 422
    assert message.lower() in json.dumps(body).lower()


def test_predict_reads_a_body_sent_in_chunks(daemon_factory: Factory) -> None:
    """The predict route reads its body itself: a chunked upload, which uvicorn
    hands over in several messages, is joined before it is parsed."""
    config = uvicorn.Config(
        create_app(daemon_factory()), host="127.0.0.1", port=0, log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn started")
        port = server.servers[0].sockets[0].getsockname()[1]
        body = json.dumps({"x": X}).encode()
        chunks = [body[i : i + 50] for i in range(0, len(body), 50)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/predict", body=iter(chunks), encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 200
        assert len(json.loads(resp.read())["probabilities"]) == 10
        conn.request("GET", "/v1/predict")
        resp = conn.getresponse()
        assert resp.status == 405 and json.loads(resp.read())["detail"]
        conn.close()
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/feedback"])
def test_a_body_over_the_limit_is_a_413_and_the_edge_keeps_serving(api: Call, path: str) -> None:
    huge = b'{"x": [' + b"1.0, " * (MAX_BODY_BYTES // 5) + b"1.0]}"
    status, body = api("POST", path, raw=huge)
    assert status == 413 and str(MAX_BODY_BYTES) in body["detail"]
    status, _ = api("POST", "/v1/predict", {"x": X})
    assert status == 200


def test_feedback_is_accepted_and_reaches_the_stream(
    api: Call, daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    _, predicted = api("POST", "/v1/predict", {"x": X})
    status, body = api("POST", "/v1/feedback", {"label": 4, "request_id": predicted["request_id"]})
    assert status == 202
    accepted = FeedbackAccepted.model_validate(body)
    assert accepted.event_id.startswith("pi-1:") and accepted.queued
    wait_for(
        lambda: stream_events(redis_client, keys.feedback_of("digits")), what="the event in Redis"
    )
    (event,) = stream_events(redis_client, keys.feedback_of("digits"))
    assert event["event_id"] == accepted.event_id and event["x"] == X and event["label"] == 4
    status, _ = api("POST", "/v1/feedback", {"label": 4, "x": X})
    assert status == 202


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"label": 1, "request_id": "feedbeef-1"}, 404, "unknown or expired"),
        ({"label": 10, "x": X}, 422, "outside the model's classes"),
        ({"label": -1, "x": X}, 422, "greater than or equal to 0"),
        ({"label": 1, "x": X[:10]}, 422, "shape [64]"),
        ({"label": 1}, 422, "request_id"),
    ],
)
def test_bad_feedback_is_a_4xx_with_a_message(
    api: Call, body: dict[str, Any], status: int, message: str
) -> None:
    got, answer = api("POST", "/v1/feedback", body)
    assert got == status
    assert message in json.dumps(answer)


def test_health_reports_the_status(api: Call) -> None:
    api("POST", "/v1/predict", {"x": X})
    status, body = api("GET", "/v1/health")
    assert status == 200
    health = EdgeStatus.model_validate(body)
    assert health.device_id == "pi-1" and health.counters.predictions == 1
    assert health.counters.fallback_reasons == {"absent": 1}


def test_without_a_model_health_and_predict_are_503(
    daemon_factory: Factory, serve: Callable[[EdgeDaemon], Call]
) -> None:
    call = serve(daemon_factory(baseline_model=None))
    status, body = call("GET", "/v1/health")
    assert status == 503 and body["device_id"] == "pi-1" and body["state"] == "degraded"
    status, body = call("POST", "/v1/predict", {"x": X})
    assert status == 503 and "no model is loaded" in body["detail"]


def test_the_openapi_schema_documents_the_api(api: Call) -> None:
    status, schema = api("GET", "/openapi.json")
    assert status == 200
    paths = schema["paths"]
    predict = paths["/v1/predict"]["post"]
    answers = predict["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert [a["$ref"].rsplit("/", 1)[1] for a in answers] == [
        "PredictResponse",
        "PredictBatchResponse",
    ]
    assert {"415", "422", "503"} <= set(predict["responses"])
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body["title"] == "PredictRequest" and set(body["properties"]) == {"x", "budget_ms"}
    assert predict["requestBody"]["content"]["application/x-npy"]["schema"]["format"] == "binary"
    assert [p["name"] for p in predict["parameters"]] == ["budget_ms"]
    feedback = paths["/v1/feedback"]["post"]
    assert [p["name"] for p in feedback["parameters"]] == ["label", "target", "request_id"]
    feedback_body = paths["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert set(feedback_body["properties"]) == {"label", "target", "request_id", "x"}
    assert {"202", "404", "422"} <= set(paths["/v1/feedback"]["post"]["responses"])
    assert paths["/v1/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("EdgeStatus")


def test_random_inputs_are_answered_or_refused_never_a_500(api: Call) -> None:
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(floats, max_size=70) | st.lists(st.just(1.0), min_size=64, max_size=64))
    def check(x: list[float]) -> None:
        status, body = api("POST", "/v1/predict", {"x": x})
        assert status in (200, 422), body
        if status == 200:
            assert len(x) == 64 and len(body["probabilities"]) == 10

    check()
