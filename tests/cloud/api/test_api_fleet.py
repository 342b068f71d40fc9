"""Feedback and status over HTTP land exactly where an edge with Redis access writes them
(and the trainer's ingest takes the feedback as an edge's); devices, the fleet summary,
/metrics, and the controller's place in the API process."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings
from cloud.cli import main as cli
from cloud.data.ingest import FeedbackIngest, IngestOptions
from cloud.data.replay import DataOptions, TrainerData
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry
from edge.connections import FleetMember
from edge.status import ReportPolicy, StatusReporter
from edge.uplink import FeedbackUplink, UplinkPolicy
from shared.feedback_stream import events_of, frames_field, frames_of
from shared.keys import FEEDBACK_BATCH_FIELD, FleetKeys
from shared.messages import (
    DeadLetter,
    EdgeCounters,
    EdgeStatus,
    FeedbackEvent,
    ModelServing,
    ProbeSet,
)
from shared.signing import Signer, generate_keypair
from shared.task import TaskSpec
from shared.tensors import TensorSpec
from tests.cloud.api_helpers import (
    PEPPER,
    bearer,
    dev_api_settings,
    issue,
    report,
    sample,
    seed_versions,
)

FLEET = "lab"


@pytest.fixture
def settings(redis_url, tmp_path) -> ApiSettings:
    return dev_api_settings(FLEET, redis_url, tmp_path)


@pytest.fixture
def api(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _events(X, y, device="pi-01", epoch="e0", start=0) -> list[FeedbackEvent]:
    return [
        FeedbackEvent(
            event_id=f"{device}:{epoch}:{start + i}",
            device_id=device,
            model="digits",
            x=[float(v) for v in X[i]],
            label=int(y[i]),
            predicted=int(y[i]),
        )
        for i in range(len(y))
    ]


def _lines(client, stream) -> list[bytes]:
    entries = client.xrange(stream)
    assert all(set(fields) == {FEEDBACK_BATCH_FIELD.encode()} for _, fields in entries)
    return [
        line for _, fields in entries for line in fields[FEEDBACK_BATCH_FIELD.encode()].split(b"\n")
    ]


def _decoded(client, stream) -> list[tuple[str, int | None, list[float]]]:
    """(event id, label, sample) of every event on ``stream``, JSON lines or frames."""
    out = []
    for _, fields in client.xrange(stream):
        blob = frames_field(fields)
        if blob is None:
            pairs = [(line, b"") for line in events_of(fields) or []]
        else:
            pairs = frames_of(blob)
        for head, raw in pairs:
            e = json.loads(head)
            x = e["x"] if raw == b"" else np.frombuffer(raw, "<f4").tolist()
            out.append((e["event_id"], e["label"], np.float32(x).tolist()))
    return out


def test_feedback_over_http_is_an_edges_feedback_to_the_trainer(
    api, redis_client, redis_url, parts, tmp_path
):
    keys = FleetKeys(FLEET)
    device = bearer(issue(redis_client, FLEET, "device", "pi-01", device="pi-01"))
    events = _events(parts.stream.X[:300], parts.stream.y[:300])
    r = api.post("/v1/feedback", json=events[0].model_dump(), headers=device)
    assert r.status_code == 202 and r.json()["accepted"] == 1
    body = {"events": [e.model_dump() for e in events[1:]]}
    r = api.post("/v1/feedback", json=body, headers=device)
    assert r.status_code == 202 and r.json()["accepted"] == 299 and len(r.json()["entries"]) == 2
    api.post("/v1/feedback", json=body, headers=device)  # a retry: duplicates
    wrong = _events(np.zeros((1, 3)), [1], start=1000)[0]  # the trainer's check: feature count
    assert api.post("/v1/feedback", json=wrong.model_dump(), headers=device).status_code == 202

    # The same events through a real edge uplink, to another fleet: the same lines.
    other = FleetKeys("edge-ref")
    (tmp_path / "uplink").mkdir()
    uplink = FeedbackUplink(
        FleetMember(redis_url, other, "pi-01", "digits"),
        "e0",
        tmp_path / "uplink",
        UplinkPolicy(flush_ms=5),
    )
    uplink.start()
    for e in events:
        uplink.submit(e)
    assert uplink.flush(10)
    uplink.close()
    # The edge sends its samples as frames of raw bytes, the API flat vectors as JSON
    # lines: the same events either way.
    assert (
        _decoded(redis_client, other.feedback_of("digits"))
        == _decoded(redis_client, keys.feedback_of("digits"))[:300]
    )

    sizes = {
        "replay_capacity": 1000,
        "holdout_capacity": 200,
        "recent_window": 50,
        "recent_train": 50,
    }
    data = TrainerData(redis_client, keys, DataOptions.flat("digits", 10, 64, **sizes))
    ingest = FeedbackIngest(
        redis_client, keys, data, IngestOptions(model="digits", consumer="t1", block_ms=10)
    )
    ingest.ensure_group()
    for _ in range(20):
        if ingest.poll(block_ms=10).entries == 0:
            break
    assert (ingest.counters.accepted, ingest.counters.duplicates, ingest.counters.deadlettered) == (
        300,
        299,
        1,
    )
    (letter,) = [DeadLetter.from_wire(f[b"data"]) for _, f in redis_client.xrange(keys.deadletter)]
    assert "feature count 3" in letter.reason


def test_feedback_goes_to_its_models_stream(api, redis_client):
    keys = FleetKeys(FLEET)
    admin = bearer(issue(redis_client, FLEET, "admin"))
    digits = _events(np.ones((2, 64)), [3, 4])
    shapes = [e.model_copy(update={"model": "shapes"}) for e in _events(np.ones((3, 8)), [1] * 3)]
    body = {"events": [e.model_dump() for e in [*digits, *shapes]]}
    assert api.post("/v1/feedback", json=body, headers=admin).status_code == 202
    assert len(_lines(redis_client, keys.feedback_of("digits"))) == 2
    assert len(_lines(redis_client, keys.feedback_of("shapes"))) == 3
    assert not redis_client.exists(keys.feedback)  # the stream of edges before streams per model

    one = {"events": [e.model_dump() for e in shapes]}
    r = api.post("/v1/models/shapes/feedback", json=one, headers=admin)
    assert r.status_code == 202 and r.json()["accepted"] == 3
    assert len(_lines(redis_client, keys.feedback_of("shapes"))) == 6
    r = api.post("/v1/models/shapes/feedback", json=body, headers=admin)
    assert r.status_code == 422 and "'digits'" in r.json()["detail"]
    r = api.post("/v1/models/sh{apes/feedback", json=one, headers=admin)
    assert r.status_code == 422
    assert len(_lines(redis_client, keys.feedback_of("digits"))) == 2  # nothing of a refused one


def test_tensor_feedback_over_http_travels_as_frames_to_the_trainer(api, redis_client, tmp_path):
    """A published uint8 [2, 2, 3] model: nested lists (or a flat list) become frames of raw
    bytes on the model's stream, which its trainer accepts; a wrong shape is a 422 naming it."""
    keys = FleetKeys(FLEET)
    spec = TensorSpec(shape=[2, 2, 3], dtype="uint8")
    registry = Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
    probe = ProbeSet(inputs=[[0.0] * 12], expected=[[0.5, 0.5]])
    request = PublishRequest("cam", b"x" * 100, 12, ["a", "b"], probe, runtime="t", input=spec)
    Publisher(registry, Signer(generate_keypair()[0])).publish(request)
    admin = bearer(issue(redis_client, FLEET, "admin"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 2, 2, 3))
    events = [
        {"event_id": f"pi-01:e0:{i}", "device_id": "pi-01", "model": "cam", "label": i % 2}
        for i in range(4)
    ]
    body = {
        "events": [{**e, "x": img.tolist()} for e, img in zip(events[:3], images[:3], strict=True)]
    }
    assert api.post("/v1/models/cam/feedback", json=body, headers=admin).status_code == 202
    flat = {**events[3], "x": images[3].reshape(-1).tolist()}
    assert api.post("/v1/feedback", json=flat, headers=admin).status_code == 202
    entries = redis_client.xrange(keys.feedback_of("cam"))
    assert all(set(fields) == {b"frames"} for _, fields in entries)
    blob = b"".join(fields[b"frames"] for _, fields in entries)
    assert len(blob) < 4 * (12 + 400)  # the sample's 12 bytes, not a JSON list, besides the event

    for bad, words in (
        (images[0][:1].tolist(), "[2, 2, 3]"),
        ((images[0] + 300).tolist(), "0..255"),
        (images[:2].tolist(), "2 samples"),
    ):
        r = api.post("/v1/models/cam/feedback", json={**events[0], "x": bad}, headers=admin)
        assert r.status_code == 422 and words in r.json()["detail"], r.text

    options = DataOptions("cam", spec, TaskSpec.classification(["a", "b"]), 100, 50, 20, 20)
    data = TrainerData(redis_client, keys, options)
    ingest = FeedbackIngest(redis_client, keys, data, IngestOptions(model="cam", consumer="t1"))
    ingest.ensure_group()
    assert len(ingest.poll(block_ms=10).accepted) == 4 and ingest.counters.deadlettered == 0
    assert sorted(data.stats().items()) and data.stats()["accepted"] == 4


def test_feedback_the_api_refuses_at_once(api, redis_client):
    admin = bearer(issue(redis_client, FLEET, "admin"))
    good = _events(np.ones((1, 64)), [3])[0].model_dump()
    for bad, words in (
        ({**good, "x": [float("nan")] * 64}, "NaN"),
        ({**good, "event_id": "pi-01:e0"}, "idempotency"),
        ({**good, "schema_version": 9}, "schema_version 9"),
        ({"events": []}, "events"),
        ({"events": [good] * 1001}, "events"),
        ({**good, "label": "three"}, "label"),
    ):
        r = api.post(
            "/v1/feedback",
            content=_json(bad),
            headers={**admin, "content-type": "application/json"},
        )
        assert r.status_code == 422 and words in r.json()["detail"], (words, r.text)
    assert redis_client.exists(FleetKeys(FLEET).feedback_of("digits")) == 0


def _json(value) -> bytes:
    import json

    return json.dumps(value, allow_nan=True).encode()


@pytest.mark.redis_cluster
def test_status_over_http_writes_the_edge_reporters_keys(api, redis_client, redis_url):
    keys, other = FleetKeys(FLEET), FleetKeys("edge-ref")
    status = EdgeStatus(
        device_id="pi-01",
        fleet=FLEET,
        model="digits",
        version=2,
        sha256="ab" * 32,
        state="serving",
        rolling_accuracy=0.9,
        counters=EdgeCounters(
            predictions=10, fallback_predictions=2, fallback_reasons={"latency_budget": 2}
        ),
    )
    device = bearer(issue(redis_client, FLEET, "device", "pi-01", device="pi-01"))
    r = api.post("/v1/devices/pi-01/status", json=status.model_dump(), headers=device)
    assert r.status_code == 202 and r.json() == {"device_id": "pi-01", "ttl_s": 10}
    member = FleetMember(redis_url, other, "pi-01", "digits")
    reporter = StatusReporter(member, lambda: status, ReportPolicy(ttl_s=10))
    assert reporter.publish(status.model_copy(update={"fleet": "edge-ref"}))
    reporter.stop()
    for k in (keys, other):
        assert (
            redis_client.type(k.device("pi-01")) == b"string"
            and 0 < redis_client.ttl(k.device("pi-01")) <= 10
        )
        assert redis_client.zscore(k.devices, "pi-01") == pytest.approx(status.ts)
        (entry,) = redis_client.xrange(k.status)
        assert set(entry[1]) == {b"data"}
    assert EdgeStatus.from_wire(redis_client.get(keys.device("pi-01"))) == status
    wrong_fleet = status.model_copy(update={"fleet": "other"}).model_dump()
    r = api.post("/v1/devices/pi-01/status", json=wrong_fleet, headers=device)
    assert r.status_code == 422 and "fleet" in r.json()["detail"]


@pytest.mark.redis_cluster
def test_devices_and_the_fleet_summary(api, redis_client, tmp_path):
    shas = seed_versions(redis_client, FLEET, tmp_path / "blobs")
    viewer = bearer(issue(redis_client, FLEET, "viewer"))
    report(
        redis_client,
        FLEET,
        "pi-01",
        shas[0],
        version=1,
        rolling_accuracy=0.93,
        counters=EdgeCounters(
            predictions=100, fallback_predictions=3, fallback_reasons={"absent": 3}
        ),
    )
    report(redis_client, FLEET, "pi-02", shas[1], version=2, counters=EdgeCounters(predictions=50))
    report(redis_client, FLEET, "pi-03", shas[0], version=1, ttl_s=1)
    time.sleep(1.1)  # its report expired: offline
    redis_client.hset(FleetKeys(FLEET).pins("digits"), "pi-02", shas[1])

    listing = api.get("/v1/devices", headers=viewer).json()
    assert listing["total"] == 3 and {d["device_id"] for d in listing["devices"]} == {
        "pi-01",
        "pi-02",
        "pi-03",
    }
    one = api.get("/v1/devices/pi-02", headers=viewer).json()
    assert one["health"] == "serving" and one["version"] == 2 and one["pinned_sha256"] == shas[1]
    assert one["desired_sha256"] == shas[1] and one["counters"]["predictions"] == 50
    assert api.get("/v1/devices/pi-01", headers=viewer).json()["desired_sha256"] == shas[0]
    assert api.get("/v1/devices/pi-03", headers=viewer).json()["health"] == "offline"
    assert api.get("/v1/devices/pi-99", headers=viewer).status_code == 404
    assert len(api.get("/v1/devices?limit=1&offset=1", headers=viewer).json()["devices"]) == 1

    summary = api.get("/v1/fleet", headers=viewer).json()
    assert summary["devices"] == 3 and summary["online"] == 2
    assert summary["by_version"] == {"unknown": 1, "v1": 1, "v2": 1}
    assert summary["by_health"] == {"offline": 1, "serving": 2}
    assert summary["models"]["digits"] == {
        "target_version": 1,
        "target_sha256": shas[0],
        "active_rollout": None,
        "ordered_version": None,  # no director_key
        "ordered_sha256": None,
        "devices": 2,
        "by_version": {"v1": 1, "v2": 1},
    }

    text = api.get("/metrics", headers=viewer).text
    assert sample(text, "edgeloop_devices", version="v1", health="serving") == 1
    assert sample(text, "edgeloop_devices", version="unknown", health="offline") == 1
    assert sample(text, "edgeloop_edge_predictions") == 150
    assert sample(text, "edgeloop_edge_fallback_predictions") == 3
    assert sample(text, "edgeloop_edge_fallbacks_by_reason", reason="absent") == 3
    route = "/v1/devices/{device_id}"
    assert sample(text, "edgeloop_api_requests_total", method="GET", route=route, status="404") == 1
    assert api.get("/metrics").status_code == 401


def test_a_device_serving_two_models_is_shown_per_model(api, redis_client, tmp_path):
    shas = seed_versions(redis_client, FLEET, tmp_path / "blobs")
    keys = FleetKeys(FLEET)
    redis_client.set(keys.target("temp"), "ab" * 32)
    redis_client.hset(keys.pins("temp"), "pi-01", "cd" * 32)
    viewer = bearer(issue(redis_client, FLEET, "viewer"))
    digits = ModelServing(model="digits", version=2, sha256=shas[1], rolling_accuracy=0.9)
    temp = ModelServing(model="temp", version=5, sha256="cd" * 32, metric="mae", rolling_metric=0.4)
    both = {"digits": digits, "temp": temp}
    report(redis_client, FLEET, "pi-01", shas[1], version=2, models=both)
    report(redis_client, FLEET, "pi-02", shas[0], version=1)  # an edge with one model

    one = api.get("/v1/devices/pi-01", headers=viewer).json()
    assert set(one["models"]) == {"digits", "temp"} and one["version"] == 2
    assert one["models"]["digits"]["desired_sha256"] == shas[0]  # the fleet's target
    assert one["models"]["temp"]["desired_sha256"] == "cd" * 32  # pinned
    assert one["models"]["temp"]["pinned_sha256"] == "cd" * 32
    assert (
        one["models"]["temp"]["metric"] == "mae" and one["models"]["temp"]["rolling_metric"] == 0.4
    )
    assert set(api.get("/v1/devices/pi-02", headers=viewer).json()["models"]) == {"digits"}

    models = api.get("/v1/fleet", headers=viewer).json()["models"]
    assert models["digits"]["devices"] == 2 and models["digits"]["by_version"] == {"v1": 1, "v2": 1}
    assert models["temp"]["devices"] == 1 and models["temp"]["by_version"] == {"v5": 1}
    assert models["temp"]["target_sha256"] == "ab" * 32


def test_the_fleet_view_shows_stale_devices(api, redis_client, tmp_path):
    """An edge whose TUF timestamp or director order expired says so in its status; the
    API's device and fleet views and the CLI's tables show it."""
    from rich.console import Console

    from cloud.api.schemas import DevicesPublic, FleetPublic
    from cloud.cli.render.rollout import devices_table, fleet_view

    shas = seed_versions(redis_client, FLEET, tmp_path / "blobs")
    viewer = bearer(issue(redis_client, FLEET, "viewer"))
    report(redis_client, FLEET, "pi-01", shas[0], version=1, stale=True)
    report(redis_client, FLEET, "pi-02", shas[0], version=1)
    report(redis_client, FLEET, "pi-03", shas[0], version=1, stale=True, ttl_s=1)
    time.sleep(1.1)  # offline (its report expired): its last word unknown

    assert api.get("/v1/devices/pi-01", headers=viewer).json()["stale"] is True
    assert api.get("/v1/devices/pi-02", headers=viewer).json()["stale"] is False
    summary = api.get("/v1/fleet", headers=viewer).json()
    assert summary["stale"] == ["pi-01"]

    console = Console(width=200, record=True)
    console.print(fleet_view(FleetPublic.model_validate(summary)))
    listing = DevicesPublic.model_validate(api.get("/v1/devices", headers=viewer).json())
    console.print(devices_table(listing))
    text = console.export_text()
    assert "stale update metadata: pi-01" in text
    rows = {line.split()[1]: line for line in text.splitlines() if "pi-0" in line}
    assert "stale" in rows["pi-01"] and "stale" not in rows["pi-02"]


def test_the_api_with_a_director_key_signs_its_decisions(redis_client, redis_url, tmp_path):
    """REST pins and rollouts of an API given ``director_key`` are signed director orders."""
    from edge.director import DirectorGate
    from shared.signing import Verifier, write_keypair

    private, public = write_keypair(tmp_path / "director")
    settings = dev_api_settings(FLEET, redis_url, tmp_path, director_key=private)
    shas = seed_versions(redis_client, FLEET, tmp_path / "blobs")
    for d in ("pi-01", "pi-02"):
        report(redis_client, FLEET, d, shas[0])
    admin = bearer(issue(redis_client, FLEET, "admin"))
    keys = FleetKeys(FLEET)

    def ordered(device: str) -> str | None:
        gate = DirectorGate(
            keys, "digits", device, [Verifier.from_file(public)], tmp_path / f"{device}.n"
        )
        order = gate.read(redis_client)
        return order.sha256 if order else None

    with TestClient(create_app(settings)) as api:
        spec = {"model": "digits", "target": "1", "stages": [{"name": "all", "percent": 100}]}
        rid = api.post("/v1/rollouts", json=spec, headers=admin).json()["id"]
        api.post(f"/v1/rollouts/{rid}/promote", headers=admin).raise_for_status()
        assert ordered("pi-01") == ordered("pi-02") == shas[0]
        pin = {"model": "digits", "version": "2"}
        api.put("/v1/devices/pi-02/pin", json=pin, headers=admin).raise_for_status()
        assert (ordered("pi-01"), ordered("pi-02")) == (shas[0], shas[1])
        api.delete("/v1/devices/pi-02/pin", headers=admin).raise_for_status()
        assert ordered("pi-02") == shas[0]
        redis_client.set(keys.target("digits"), shas[2])  # around the controller
        viewer = bearer(issue(redis_client, FLEET, "viewer"))
        digits = api.get("/v1/fleet", headers=viewer).json()["models"]["digits"]
        assert (digits["target_version"], digits["ordered_version"]) == (3, 1)
        assert ordered("pi-01") == shas[0]


def test_the_controller_runs_in_the_api_and_alone(settings, redis_client, tmp_path, capsys):
    shas = seed_versions(redis_client, FLEET, tmp_path / "blobs")
    for d in ("pi-01", "pi-02"):
        report(redis_client, FLEET, d, shas[0], rolling_accuracy=0.9)
    admin = bearer(issue(redis_client, FLEET, "admin"))
    spec = {
        "model": "digits",
        "target": "2",
        "auto_promote": False,
        "stages": [{"name": "canary", "count": 1}, {"name": "all", "percent": 100}],
        "gate": {"min_labeled": 0, "min_requests": 0, "min_dwell_s": 0},
    }
    live = settings.model_copy(update={"controller_interval_s": 0.05})
    app = create_app(live)
    with TestClient(app) as api:
        rid = api.post("/v1/rollouts", json=spec, headers=admin).json()["id"]
        canary = api.get(f"/v1/rollouts/{rid}", headers=admin).json()["stages"][0]["devices"][0]
        report(redis_client, FLEET, canary, shas[1], rolling_accuracy=0.9)
        deadline = time.monotonic() + 10
        while api.get(f"/v1/rollouts/{rid}", headers=admin).json()["state"] != "waiting":
            assert time.monotonic() < deadline, "the API's controller did not judge the stage"
            time.sleep(0.05)
        loop = app.state.controller_loop
        assert loop.steps > 0 and loop.errors == 0
    assert not loop._thread.is_alive()  # stopped with the app

    with TestClient(create_app(settings)) as api:  # no controller in this one
        r = api.post(f"/v1/rollouts/{rid}/promote", headers=admin)
        assert r.status_code == 200 and r.json()["current"] == 1
    config = tmp_path / "api.toml"
    config.write_text(
        f'mode = "development"\nfleet = "{FLEET}"\nredis_url = "{settings.redis_url}"\n'
        f'blob_dir = "{tmp_path / "blobs"}"\ntoken_pepper = "{PEPPER}"\n'
    )
    for d in ("pi-01", "pi-02"):
        report(redis_client, FLEET, d, shas[1], rolling_accuracy=0.9)
    assert cli.main(["controller", "--config", str(config), "--once"]) == 0  # stage 'all' judged
    assert cli.main(["controller", "--config", str(config), "--once"]) == 0
    with TestClient(create_app(settings)) as api:
        state = api.get(f"/v1/rollouts/{rid}", headers=admin).json()
    assert state["state"] == "completed", state


@pytest.mark.redis_cluster
def test_several_controllers_at_once_apply_each_decision_once(settings, redis_client, tmp_path):
    from cloud.registry.versions import DirBlobStore, Registry
    from cloud.rollout.controller import RolloutController
    from cloud.rollout.loop import ControllerLoop
    from shared.rollouts import desired_sha

    shas = seed_versions(redis_client, FLEET, tmp_path / "blobs")
    devices = [f"pi-{i}" for i in range(6)]
    for d in devices:
        report(redis_client, FLEET, d, shas[0], rolling_accuracy=0.9)
    keys = FleetKeys(FLEET)
    admin = bearer(issue(redis_client, FLEET, "admin"))
    spec = {
        "model": "digits",
        "target": "2",
        "stages": [
            {"name": "c", "count": 1},
            {"name": "h", "percent": 50},
            {"name": "all", "percent": 100},
        ],
        "gate": {"min_labeled": 0, "min_requests": 0, "min_dwell_s": 0},
    }
    busy = settings.model_copy(update={"controller_interval_s": 0.01})
    loose = ControllerLoop(
        RolloutController(
            redis_client, keys, Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
        ),
        0.01,
    )
    with TestClient(create_app(busy)) as one, TestClient(create_app(busy)) as two:
        loose.start()
        rid = one.post("/v1/rollouts", json=spec, headers=admin).json()["id"]
        deadline = time.monotonic() + 20
        while two.get(f"/v1/rollouts/{rid}", headers=admin).json()["state"] == "running":
            assert time.monotonic() < deadline, "the rollout did not complete"
            for d in devices:  # edges follow what they are told
                get = redis_client.get(keys.target("digits"))
                assigned = redis_client.hget(keys.assignments("digits"), d)
                sha = desired_sha(
                    get.decode() if get else None, assigned.decode() if assigned else None, None
                )
                report(redis_client, FLEET, d, sha, rolling_accuracy=0.9)
            time.sleep(0.01)
        loose.stop()
        r = one.get(f"/v1/rollouts/{rid}", headers=admin).json()
    assert r["state"] == "completed"
    events = [e["what"] for e in r["events"]]
    for stage in ("c", "h", "all"):
        assert events.count(f"stage {stage} passed") == 1, events
        assert sum(e.startswith(f"stage {stage}: v2 assigned") for e in events) == 1, events
    assert sum(e.startswith("completed") for e in events) == 1


def test_the_openapi_schema_documents_auth_and_write_shapes_with_examples(api):
    spec = api.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    create = spec["paths"]["/v1/rollouts"]["post"]
    assert {"201", "401", "403", "404", "409", "422"} <= set(create["responses"])
    assert create["security"] == [{"HTTPBearer": []}]
    schemas = spec["components"]["schemas"]
    for name in ("RolloutCreate", "PinCreate", "TokenCreate"):
        assert schemas[name].get("examples"), name
    body = spec["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == {"one", "batch"}
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_a_body_over_the_limit_is_a_413(settings, redis_client):
    device = bearer(issue(redis_client, FLEET, "device", "pi-01", device="pi-01"))
    small = settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(small)) as api:
        events = _events(np.ones((20, 64)), [1] * 20)
        r = api.post(
            "/v1/feedback", json={"events": [e.model_dump() for e in events]}, headers=device
        )
        assert r.status_code == 413 and "send smaller batches" in r.json()["detail"]
        r = api.post("/v1/feedback", json=events[0].model_dump(), headers=device)
        assert r.status_code == 202
