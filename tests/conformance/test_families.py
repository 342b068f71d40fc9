"""One suite over every model family, as River runs one check suite over every
estimator: each zoo family on data of its kind, and a model a user writes in a
file of their own (``path/to/file.py:build``), goes through build -> train ->
export -> static int8 -> numeric check in the edge runtime -> budgeted update ->
patch applied with the edge's code -> a complete explanation; then, on a real
edge (``EdgeDaemon`` and its HTTP API under uvicorn, a real redis-server), the
parent and its child published by the cloud's publisher, the child reaching the
edge as a patch -> predict over HTTP (JSON and npy, single and batch) answered as
the edge runtime answers in process -> feedback over HTTP, back from the model's
feedback stream as the same tensor and accepted by the trainer's ingest as the
sample sent -> a sample of the wrong shape refused with a 422 naming the shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from cloud.benchmarks.families import FAMILIES, TINY, FamilyResult, Parent, run_family, train_parent
from cloud.evaluation.explain import RoundRecord, Side, explain_version
from cloud.evaluation.gate import HeldOut
from cloud.export.artifact import Artifact
from cloud.export.exporter import agreement, probe_set
from cloud.export.int8_check import check_all_int8
from cloud.learning.models import predict
from cloud.registry.blobs import MemoryBlobStore
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import Registry
from edge.daemon import EdgeDaemon
from shared.codec import sha256_hex
from shared.delta import apply_patch, make_patch
from shared.keys import FleetKeys
from shared.messages import PredictBatchResponse, PredictResponse
from shared.runtime import TFLiteModel
from shared.task import TaskSpec
from shared.tensors import DTYPES, npy_bytes
from tests.serving import NPY, Call, Signing, ingest_once, stream_frames, wait_for

#: A user's model file: uint8 camera frames, a conv with a batch norm (folded into the
#: conv by the converter), a depthwise conv, a dense head. Nothing of edgeloop's.
CUSTOM_MODEL = """
import torch
from torch import nn


class Frames(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.conv = nn.Conv2d(channels, 12, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(12)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        x = (x * (1.0 / 255.0)).permute(0, 3, 1, 2)
        x = torch.relu(self.norm(self.conv(x)))
        x = nn.functional.max_pool2d(torch.relu(self.depthwise(x)), 2)
        return self.head(x.mean(dim=(2, 3)))


def build(info):
    return Frames(info.input_shape[-1], info.width)
"""

#: name -> (the data's family, the model spec; None: the family's zoo model)
CASES: dict[str, tuple[str, str | None]] = {f: (f, None) for f in FAMILIES}
CASES["custom"] = ("dwcnn", "custom")

#: A minute or more each on a small machine (see tests/cloud/export/test_family_deltas.py).
SLOW = {"digits", "cnn1d", "dwcnn", "custom"}


@pytest.fixture(scope="session")
def custom_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("user") / "frames_model.py"
    path.write_text(CUSTOM_MODEL)
    return f"{path}:build"


@pytest.fixture(scope="session")
def runs(custom_spec: str) -> Callable[[str], tuple[Parent, FamilyResult]]:
    """Each case's parent and one budgeted round, made once per session."""
    made: dict[str, tuple[Parent, FamilyResult]] = {}

    def get(case: str) -> tuple[Parent, FamilyResult]:
        if case not in made:
            family, spec = CASES[case]
            parent = train_parent(family, TINY, model=custom_spec if spec == "custom" else spec)
            made[case] = (parent, run_family(parent))
        return made[case]

    return get


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_a_model_family_goes_through_the_whole_loop(case: str, runs, tmp_path: Path):
    parent, result = runs(case)
    content = parent.exported.content
    # export: an all-int8 file (every conv and dense op on int8 activations)
    check_all_int8(content)
    artifact = Artifact(content)
    assert artifact.input == parent.model.input_spec
    # numeric check in the edge runtime: the file answers as the torch model does
    X = parent.data.holdout.X[:64]
    assert agreement(parent.model.task, artifact.answers(X), predict(parent.model, X)) >= 0.95
    # budgeted update: every parameter maps onto the file (never a layout fall-back); a
    # zoo model's child is written on the parent's frozen grid, and the patch is small
    # (a user's batch norm may move its statistics so far on the drift that the folded
    # weights leave the frozen range: that round re-calibrates, as the trainer's would)
    figures = result.figures()
    assert "layout" not in figures["recalibrated_for"] and result.model is not None
    if case != "custom":
        assert result.child is not None, figures["recalibrated_for"]
    patch = make_patch(result.base, result.content)
    rebuilt = apply_patch(result.base, patch, max_size=len(result.content))
    assert sha256_hex(rebuilt) == sha256_hex(result.content)
    if result.child is not None:
        assert len(patch) < 0.1 * len(rebuilt)
    # a complete explanation of the child against its parent
    task = parent.model.task
    data = HeldOut(
        earlier=(parent.data.holdout.X[:48], parent.data.holdout.y[:48]),
        recent=(parent.data.X_drift[:48], parent.data.y_drift[:48]),
        task=task,
    )
    details = result.child.details if result.child is not None else {}
    record = RoundRecord("count", {"new_samples": 96}, {}, {"delta": details})
    e = explain_version(
        record,
        Side(result.model, Artifact(rebuilt), rebuilt),
        Side(parent.model, artifact, content),
        data,
    )
    assert e.summary and e.evaluation.parent is not None
    assert e.evaluation.child.recent.samples == 48
    assert e.weights.source != "none" and e.weights.layers
    assert e.attribution is not None
    assert np.isfinite(result.metric_budgeted)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_a_model_family_is_served_by_an_edge_and_learns_from_its_feedback(
    case: str,
    runs,
    daemon_factory: Callable[..., EdgeDaemon],
    serve: Callable[[EdgeDaemon], Call],
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
):
    parent, result = runs(case)
    spec, task = parent.model.input_spec, parent.model.task
    edge = daemon_factory(model=case)
    # the parent, then its child: the publisher lists a patch from the parent, and the
    # edge builds the child from the file it serves with its own updater
    publisher = Publisher(Registry(redis_client, keys, MemoryBlobStore()), signing.signer)
    v1 = publisher.publish(_request(case, parent.exported.content, parent))
    wait_for(lambda: _serving(edge) == v1.sha256, what=f"{case} v1 served")
    v2 = publisher.publish(_request(case, result.content, parent))
    assert v2.version == 2 and any(p.encoding == "patch" for p in v2.payloads)
    wait_for(lambda: _serving(edge) == v2.sha256, what=f"{case} v2 served")
    counters = edge.health().counters
    assert (counters.patches_applied, counters.full_downloads, counters.patch_failures) == (1, 1, 0)

    # predict over HTTP: JSON lists and npy bodies, one sample and a batch, answered as
    # the edge runtime answers in process, by the child
    call = serve(edge)
    X = np.ascontiguousarray(parent.data.X_drift[:3], spec.np_dtype)
    want = TFLiteModel(result.content, input=spec, task=task).answers(X)
    single_json = call("POST", "/v1/predict", {"x": X[0].tolist()})
    batch_json = call("POST", "/v1/predict", {"x": X.tolist()})
    single_npy = call("POST", "/v1/predict", raw=npy_bytes(X[1]), content_type=NPY)
    batch_npy = call("POST", "/v1/predict", raw=npy_bytes(X), content_type=NPY)
    assert [s for s, _ in (single_json, batch_json, single_npy, batch_npy)] == [200] * 4
    answers = [
        (PredictResponse.model_validate(single_json[1]), want[0]),
        (PredictResponse.model_validate(single_npy[1]), want[1]),
    ]
    for body in (batch_json[1], batch_npy[1]):
        batch = PredictBatchResponse.model_validate(body).predictions
        assert len(batch) == len(X)
        answers += zip(batch, want, strict=True)
    for got, expected in answers:
        assert (got.model_version, got.model_sha256, got.fallback) == (2, v2.sha256, False)
        if task.is_classification:
            assert got.label == int(expected.argmax()) and got.outputs is None
            assert got.probabilities == pytest.approx(expected.tolist(), abs=1e-6)
        else:
            assert got.label is None and got.output_names == task.outputs
            assert got.outputs == pytest.approx(expected.tolist(), abs=1e-5)
    # the npy sample is served as it came: uint8 frames stay uint8, never widened
    assert spec.dtype == ("uint8" if CASES[case][0] == "dwcnn" else "float32")
    recalled = edge.chain.recall(answers[1][0].request_id)
    assert recalled is not None and recalled.x.dtype == spec.np_dtype

    # feedback over HTTP: JSON for the npy-predicted sample (joined by request_id), npy
    # for another sample (sent whole); both come back from the model's stream as the
    # tensors sent, and the trainer's ingest accepts them as the samples sent
    y = parent.data.y_drift[1:3]
    (key, first), (_, second) = (_truth(task, t) for t in y)
    joined = {key: first, "request_id": answers[1][0].request_id}
    assert call("POST", "/v1/feedback", joined)[0] == 202
    query = f"{key}={','.join(map(str, np.atleast_1d(second)))}"  # target=1.5,2.5
    status, _ = call("POST", f"/v1/feedback?{query}", raw=npy_bytes(X[2]), content_type=NPY)
    assert status == 202 and edge.uplink.flush(5)
    frames = stream_frames(redis_client, keys.feedback_of(case))
    assert len(frames) == 2
    for (event, sample), sent in zip(frames, X[1:3], strict=True):
        assert event["model"] == case and event["x_dtype"] == spec.dtype
        assert event["x_shape"] == spec.shape and "x" not in event
        back = np.frombuffer(sample, DTYPES[event["x_dtype"]]).reshape(event["x_shape"])
        assert back.dtype == sent.dtype and back.tobytes() == sent.tobytes()
    got = ingest_once(redis_client, keys, case, spec, task).accepted
    assert len(got) == 2 and got.X.dtype == spec.np_dtype and np.array_equal(got.X, X[1:3])
    if task.is_classification:
        assert got.y.tolist() == y.tolist()
    else:
        assert np.allclose(np.asarray(got.y, np.float32).reshape(y.shape), y)

    # a sample of the wrong shape: a 422 that names the shape expected
    wrong = np.zeros([*spec.shape[:-1], spec.shape[-1] + 1], spec.np_dtype)
    status, body = call("POST", "/v1/predict", raw=npy_bytes(wrong), content_type=NPY)
    assert status == 422 and str(spec.shape) in body["detail"], body


def _request(model: str, content: bytes, parent: Parent) -> PublishRequest:
    """What a trainer publishes for ``content`` (a probe of its own answers included)."""
    task, spec = parent.model.task, parent.model.input_spec
    return PublishRequest(
        model,
        content,
        num_features=spec.size,
        labels=task.labels,
        probe=probe_set(Artifact(content), parent.data.holdout.X[:16], task),
        runtime="conformance",
        input=spec,
        task=task,
    )


def _serving(edge: EdgeDaemon) -> str | None:
    current = edge.chain.current
    return current.sha256 if current is not None else None


def _truth(task: TaskSpec, y: Any) -> tuple[str, int | list[float]]:
    """A feedback request's truth: ("label", the class index) or ("target", the targets)."""
    if task.is_classification:
        return "label", int(y)
    return "target", np.atleast_1d(y).astype(float).tolist()
