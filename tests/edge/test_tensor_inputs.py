"""Tensor inputs and regression on an edge: uint8 frames and sensor windows over
HTTP (JSON and .npy, one sample and a batch), regression outputs and targets, and
feedback as frames that the trainer's own ingest accepts.

The models are the cloud exporter's files (``tensor_models``), made once per
session; these tests skip where torch is not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from helpers import make_manifest, publish_version
from tensor_models import TensorModel

from edge.daemon import EdgeDaemon
from shared.keys import FEEDBACK_FRAMES_FIELD, FleetKeys
from shared.messages import EdgeStatus, PredictBatchResponse, PredictResponse
from shared.runtime import TFLiteModel
from shared.tensors import npy_bytes
from tests.serving import Signing, ingest_once, stream_frames, wait_for

pytestmark = pytest.mark.slow

Factory = Callable[..., EdgeDaemon]
Call = Callable[..., tuple[int, Any]]
NPY = "application/x-npy"


def serving(
    model: TensorModel,
    daemon_factory: Factory,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
    **settings: Any,
) -> EdgeDaemon:
    """A daemon serving ``model`` v1, published as the trainer would."""
    daemon = daemon_factory(model=model.name, **settings)
    manifest = make_manifest(model.content, 1, model=model.name, **model.manifest_fields())
    publish_version(
        redis_client, keys, signing.signer, model.content, 1, model=model.name, manifest=manifest
    )
    wait_for(lambda: daemon.chain.current is not None, what=f"{model.name} v1 served")
    return daemon


@pytest.fixture
def images(
    image_model: TensorModel,
    daemon_factory: Factory,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
) -> EdgeDaemon:
    return serving(image_model, daemon_factory, redis_client, keys, signing)


@pytest.fixture
def bearing(
    regression_model: TensorModel,
    daemon_factory: Factory,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
) -> EdgeDaemon:
    return serving(regression_model, daemon_factory, redis_client, keys, signing)


def test_frames_over_http_as_npy_and_json_single_and_batch(
    images: EdgeDaemon, image_model: TensorModel, serve: Callable[[EdgeDaemon], Call]
) -> None:
    call = serve(images)
    frames = image_model.X[:5]
    assert frames.dtype == np.uint8 and frames.shape == (5, 32, 32, 3)
    want = TFLiteModel(image_model.content).answers(frames)

    status, body = call(
        "POST", "/v1/predict?budget_ms=500", raw=npy_bytes(frames[0]), content_type=NPY
    )
    assert status == 200
    one = PredictResponse.model_validate(body)
    assert one.label == int(want[0].argmax()) and one.fallback is False and one.model_version == 1
    assert one.probabilities == pytest.approx(want[0].tolist()) and one.outputs is None

    status, body = call("POST", "/v1/predict", raw=npy_bytes(frames), content_type=NPY)
    assert status == 200
    batch = PredictBatchResponse.model_validate(body).predictions
    assert [p.label for p in batch] == want.argmax(axis=1).tolist()
    assert len({p.request_id for p in batch}) == 5  # each answer can get its own feedback

    status, body = call("POST", "/v1/predict", {"x": frames[:2].tolist()})
    assert status == 200
    assert [p["label"] for p in body["predictions"]] == want[:2].argmax(axis=1).tolist()
    status, body = call("POST", "/v1/predict", {"x": frames[3].tolist()})
    assert status == 200 and body["label"] == int(want[3].argmax())


def test_a_uint8_frame_stays_uint8_and_its_feedback_is_about_its_own_size(
    images: EdgeDaemon, image_model: TensorModel, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    frame = image_model.X[7]
    p = images.predict(frame)
    recalled = images.chain.recall(p.request_id)
    assert recalled is not None and recalled.x.dtype == np.uint8  # never widened to float
    images.feedback(int(image_model.y[7]), request_id=p.request_id)
    assert images.uplink.flush(5)
    ((event, sample),) = stream_frames(redis_client, keys.feedback_of(image_model.name))
    assert event["x_shape"] == [32, 32, 3] and event["x_dtype"] == "uint8" and "x" not in event
    assert sample == frame.tobytes()
    ((_, fields),) = redis_client.xrange(keys.feedback_of(image_model.name))
    on_stream = len(fields[FEEDBACK_FRAMES_FIELD.encode()])
    raw = frame.nbytes  # 3072
    envelope = on_stream - raw  # the event's JSON and the frame's 8-byte header
    assert envelope < 400, envelope
    assert on_stream <= 1.2 * raw + 400


def test_a_regressor_answers_outputs_and_learns_from_targets(
    bearing: EdgeDaemon,
    regression_model: TensorModel,
    serve: Callable[[EdgeDaemon], Call],
    redis_client: redis.Redis,
    keys: FleetKeys,
) -> None:
    call = serve(bearing)
    window, truth = regression_model.X[0], float(regression_model.y[0][0])
    status, body = call("POST", "/v1/predict", raw=npy_bytes(window), content_type=NPY)
    assert status == 200
    p = PredictResponse.model_validate(body)
    assert p.label is None and p.probabilities is None
    assert p.output_names == ["bearing_temp_c"] and len(p.outputs or []) == 1
    status, body = call("POST", "/v1/feedback", {"label": 1, "request_id": p.request_id})
    assert status == 422 and "target is required" in body["detail"]
    status, body = call("POST", "/v1/feedback", {"target": [truth], "request_id": p.request_id})
    assert status == 202
    status, body = call(
        "POST", f"/v1/feedback?target={truth + 1}", raw=npy_bytes(window), content_type=NPY
    )
    assert status == 202
    status, body = call("POST", "/v1/feedback?target=1,2", raw=npy_bytes(window), content_type=NPY)
    assert status == 422 and "1 output" in body["detail"]
    assert bearing.uplink.flush(5)
    joined, posted = (
        event for event, _ in stream_frames(redis_client, keys.feedback_of(regression_model.name))
    )
    assert joined["target"] == [truth] and joined["predicted_outputs"] == p.outputs
    assert "label" not in joined and posted["target"] == [pytest.approx(truth + 1)]
    health = EdgeStatus.model_validate(call("GET", "/v1/health")[1])
    assert health.metric == "mae" and health.rolling_accuracy is None
    assert health.rolling_metric == pytest.approx(abs(p.outputs[0] - truth), abs=1e-4)  # type: ignore[index]


@pytest.mark.parametrize(
    ("make_body", "status", "message"),
    [
        (lambda X: npy_bytes(X[0][:, :, 0]), 422, "[32, 32, 3]"),  # a grey frame
        (lambda X: npy_bytes(X[0].astype(np.float32) + 0.5), 422, "0..255 for a [32, 32, 3]"),
        (
            lambda X: npy_bytes(np.full((32, 32, 3), np.nan, np.float32)),
            422,
            "0..255 for a [32, 32, 3]",
        ),
        (lambda X: pickled_npy(), 422, "npy"),  # reading it would unpickle
        (lambda X: b"\x93NUMPY garbage", 422, "npy"),
        (lambda X: npy_bytes(X[:2].reshape(2, 3, 32, 32)), 422, "[32, 32, 3]"),
    ],
)
def test_bad_npy_bodies_are_4xx_naming_the_expected_shape(
    images: EdgeDaemon,
    image_model: TensorModel,
    serve: Callable[[EdgeDaemon], Call],
    make_body: Callable[[Any], bytes],
    status: int,
    message: str,
) -> None:
    call = serve(images)
    body = make_body(image_model.X)
    for path in ("/v1/predict", "/v1/feedback?label=1"):
        got, answer = call("POST", path, raw=body, content_type=NPY)
        assert got == status and message in answer["detail"], (path, answer)
    got, answer = call("POST", "/v1/predict", raw=b"x", content_type="text/plain")
    assert got == 415 and "application/x-npy" in answer["detail"]


def test_nan_in_a_window_is_refused(
    bearing: EdgeDaemon, serve: Callable[[EdgeDaemon], Call]
) -> None:
    call = serve(bearing)
    window = np.zeros((32, 4), np.float32)
    window[3, 1] = np.nan
    got, answer = call("POST", "/v1/predict", raw=npy_bytes(window), content_type=NPY)
    assert got == 422 and "finite" in answer["detail"] and "[32, 4]" in answer["detail"]
    got, answer = call("POST", "/v1/predict", raw=npy_bytes(window[:, :3]), content_type=NPY)
    assert got == 422 and "[32, 4]" in answer["detail"]


def test_a_baseline_for_another_input_is_not_a_fallback(images: EdgeDaemon) -> None:
    # The bundled baseline is the digits CNN: 64 floats, not a frame.
    assert [m.version for m in images.chain.serving] == [1]
    assert "not a fallback" in (images.health().last_error or "")


def test_the_trainers_ingest_accepts_what_the_edge_sends(
    images: EdgeDaemon,
    image_model: TensorModel,
    daemon_factory: Factory,
    regression_model: TensorModel,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
) -> None:
    """Edge -> real Redis -> the trainer's FeedbackIngest, for a uint8 image model and
    a regressor: every event accepted, samples and truths as sent."""
    frames, labels = image_model.X[:6], image_model.y[:6]
    for frame, label in zip(frames, labels, strict=True):
        images.feedback(int(label), request_id=images.predict(frame).request_id)
    assert images.uplink.flush(5)
    got = ingest_once(redis_client, keys, image_model.name, image_model.input, image_model.task)
    assert got.deadlettered == 0 and len(got.accepted) == 6
    assert got.accepted.X.dtype == np.uint8 and np.array_equal(got.accepted.X, frames)
    assert got.accepted.y.tolist() == labels.tolist()

    redis_client.delete(keys.feedback_of(image_model.name))
    bearing = serving(
        regression_model,
        daemon_factory,
        redis_client,
        keys,
        signing,
        device_id="pi-2",
        state_dir=images.settings.state_dir.parent / "pi-2",
    )
    windows, targets = regression_model.X[:4], regression_model.y[:4]
    bearing.feedback(target=targets[0].tolist(), request_id=bearing.predict(windows[0]).request_id)
    for window, target in zip(windows[1:], targets[1:], strict=True):
        bearing.feedback(target=target.tolist(), x=window)
    assert bearing.uplink.flush(5)
    reg = regression_model
    got = ingest_once(redis_client, keys, reg.name, reg.input, reg.task)
    assert got.deadlettered == 0 and len(got.accepted) == 4
    assert np.array_equal(got.accepted.X, windows)
    assert np.allclose(np.asarray(got.accepted.y, np.float32).reshape(4, -1), targets)
    assert np.isfinite(got.accepted.served[0]) and np.isnan(got.accepted.served[1:]).all()


def pickled_npy() -> bytes:
    """A .npy file of an object array: only pickle can read it."""
    import io

    out = io.BytesIO()
    np.save(out, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return out.getvalue()


def test_the_guard_judges_a_regressor_by_its_mae_on_the_same_inputs(
    regression_model: TensorModel, tmp_path: Any
) -> None:
    """A new version of a regressor on probation is scored against the previous one
    on the same labeled windows, in mean absolute error (lower is better)."""
    from edge.fallback import ServingChain
    from edge.guard import GuardPolicy, SwapGuard
    from edge.model_store import ModelStore

    reg = regression_model
    old = TFLiteModel(reg.content, version=1, input=reg.input, task=reg.task)
    new = TFLiteModel(reg.content + b"\0" * 8, version=2, input=reg.input, task=reg.task)
    chain = ServingChain()
    chain.set_models(current=old, last_known_good=None, baseline=None)
    guard = SwapGuard(chain, ModelStore(tmp_path), GuardPolicy(min_labeled=4, window_s=60))
    chain.swap(new)
    guard.swapped(old, new, back=False)
    for window, target in zip(reg.X[:4], reg.y[:4], strict=True):
        recalled = chain.recall(chain.predict(window).request_id)
        assert recalled is not None and recalled.predicted_outputs is not None
        guard.observe(recalled, np.atleast_1d(target).astype(float).tolist())
    assert guard.tick() is False  # the same weights: no worse
    e = guard.evidence
    assert e is not None and e.metric == "mae" and e.labeled == 4
    assert e.new_error == pytest.approx(e.previous_error) and e.new_error > 0
