"""An enrolled edge without Redis sends its feedback and status through the cloud API,
signed by its device key exactly as over Redis: the real API on uvicorn relays the entries
unchanged, the trainer's own ingest and the rollout gates' ``verified_statuses`` verify
them. The API carries a device's signature but never lends its own trust: another device's
entry is a 403 with nothing written, a forged one is dead-lettered by the trainer, and an
API that is down for a while costs nothing (the edge spools, then delivers)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import urllib3

from cloud.api.app import create_app
from cloud.registry.devices import Credentials, DeviceRegistry
from cloud.registry.tuf_keys import KeyDir, init_fleet
from edge.connections import FleetMember
from edge.daemon import EdgeDaemon
from edge.fleet_api import FleetApi
from edge.http_uplink import HttpSink
from edge.uplink import FeedbackUplink, UplinkPolicy
from shared.device_identity import FEEDBACK, STATUS, DeviceKeyring, DeviceSigner
from shared.feedback_stream import frame
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, FeedbackEvent
from shared.signing import generate_keypair
from shared.status_report import verified_statuses
from tests.cloud.api_helpers import dev_api_settings, free_port, issue, serving
from tests.cloud.data.test_ingest import dead_letters, make_ingest
from tests.serving import make_settings, wait_for

FLEET = "lab"
#: Nothing listens here: the edge under test has no Redis at all.
NO_REDIS = "redis://127.0.0.1:1/0"


@dataclass
class Enrolled:
    client: redis.Redis
    keys: FleetKeys
    a: Credentials  # pi-1, whose token the edge holds
    b: Credentials  # pi-2
    token: str  # pi-1's device token
    key_file: Path  # pi-1's device.key


@pytest.fixture
def enrolled(redis_client: redis.Redis, tmp_path: Path) -> Enrolled:
    keys = FleetKeys(FLEET)
    registry = DeviceRegistry(redis_client, keys)
    a, b = registry.enroll("pi-1"), registry.enroll("pi-2")
    key_file = tmp_path / "device.key"
    key_file.write_bytes(a.private_key)
    key_file.chmod(0o600)
    token = issue(redis_client, FLEET, "device", name="pi-1", device="pi-1")
    return Enrolled(redis_client, keys, a, b, token, key_file)


@pytest.fixture
def api(enrolled: Enrolled, redis_url: str, tmp_path: Path) -> Iterator[str]:
    with serving(create_app(dev_api_settings(FLEET, redis_url, tmp_path / "api"))) as url:
        yield url


def _event(device: str, seq: int) -> bytes:
    head = {
        "event_id": f"{device}:e0:{seq}",
        "device_id": device,
        "model": "digits",
        "x_shape": [64],
        "x_dtype": "float32",
        "label": seq % 10,
    }
    return frame(json.dumps(head).encode(), bytes(4 * 64))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(url: str, token: str, path: str, body: object) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = urllib3.request(
        "POST",
        url + path,
        body=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        retries=False,
    )
    return r.status, r.data.decode()


def test_an_enrolled_http_only_edge_feeds_the_trainer_and_the_gates_through_an_outage(
    enrolled: Enrolled, redis_url: str, tmp_path: Path, signing
) -> None:
    client, keys = enrolled.client, enrolled.keys
    keydir = KeyDir(tmp_path / "tuf-keys")
    init_fleet(client, keys, keydir, root_keys=1, threshold=1)
    port = free_port()  # the API starts later: the edge begins in an outage
    settings = make_settings(
        tmp_path,
        NO_REDIS,
        signing.public_key,
        update_source="http",
        api_url=f"http://127.0.0.1:{port}",
        api_token=enrolled.token,
        tuf_root=keydir.trusted_root,
        device_key=enrolled.key_file,
        desired_poll_s=0.5,
        guard_enabled=False,
    )
    assert settings.uplink == "http"  # follows update_source
    ingest = make_ingest(client, keys)
    keyring = DeviceKeyring(client, keys)
    with EdgeDaemon(settings) as daemon:
        uplink = daemon.uplink
        for i in range(20):
            daemon.feedback(label=i % 10, x=[float(i % 16)] * 64)
        assert not uplink.flush(timeout=2.0)  # nobody answers: kept, not lost
        wait_for(lambda: uplink.spool_bytes > 0, what="events spooled")
        assert uplink.sent == 0 and uplink.dropped == 0 and not uplink.connected

        with serving(create_app(dev_api_settings(FLEET, redis_url, tmp_path / "api")), port):
            for i in range(20, 30):
                daemon.feedback(label=i % 10, x=[float(i % 16)] * 64)
            assert uplink.flush(timeout=10.0)
            assert uplink.sent == 30 and uplink.resent >= 1 and uplink.refused == 0
            statuses, refused = wait_for(
                lambda: (s := verified_statuses(client, keys, ["pi-1"], keyring))[0]["pi-1"] and s,
                what="pi-1's status verified",
            )
            assert refused == {} and EdgeStatus.from_wire(statuses["pi-1"]).device_id == "pi-1"
        assert daemon.status.refused == 0

    # The trainer's own ingest: every event accepted as signed by pi-1, none dead-lettered.
    accepted = sum(len(ingest.poll(block_ms=10).accepted) for _ in range(5))
    assert accepted == 30 and ingest.counters.deadlettered == 0
    # The entries are the edge's, signed by it: the API made no signature of its own.
    fields = client.xrange(keys.feedback_of("digits"))[0][1]
    assert fields[b"device"] == b"pi-1" and len(fields[b"sig"]) == 64
    # And the status in the stream and device-sig:pi-1 is pi-1's own signature.
    sig = client.get(keys.device_sig("pi-1"))
    assert keyring.check(STATUS, "pi-1", client.get(keys.device("pi-1")), sig) is None


def test_a_device_token_relays_its_own_devices_entries_only(enrolled: Enrolled, api: str) -> None:
    client, keys = enrolled.client, enrolled.keys
    stream = keys.feedback_of("digits")
    path = "/v1/models/digits/feedback/entries"
    other = _event("pi-2", 1)
    signed_b = DeviceSigner(FLEET, "pi-2", enrolled.b.private_key)
    forged_as_b = {
        "entries": [{"payload": _b64(other), "device": "pi-2", "sig": _b64(signed_b.sign(FEEDBACK, other))}]
    }  # fmt: skip
    code, text = _post(api, enrolled.token, path, forged_as_b)
    assert code == 403 and "'pi-1' only, not 'pi-2'" in text
    # an unsigned entry holding another device's event
    code, text = _post(api, enrolled.token, path, {"entries": [{"payload": _b64(other)}]})
    assert code == 403 and "'pi-2'" in text
    # a signed status report of pi-2, posted with pi-1's token (on either path)
    report = EdgeStatus(device_id="pi-2", fleet=FLEET, model="digits", state="serving", ts=1.0)
    data = report.to_wire()
    body = {"payload": _b64(data), "device": "pi-2", "sig": _b64(signed_b.sign(STATUS, data))}
    for device in ("pi-2", "pi-1"):
        code, text = _post(api, enrolled.token, f"/v1/devices/{device}/status/signed", body)
        assert code == 403, (device, code, text)
    # Bad input: a 4xx with a message, never a 500.
    mine = _event("pi-1", 1)
    bad: list[tuple[object, int, str]] = [
        ({"entries": [{"payload": _b64(mine), "device": "pi-1", "sig": _b64(b"x" * 12)}]}, 422, "64 bytes"),
        ({"entries": [{"payload": "not base64!", "device": "pi-1", "sig": _b64(bytes(64))}]}, 422, "base64"),
        ({"entries": [{"payload": _b64(mine), "device": "pi-1"}]}, 422, "go together"),
        ({"entries": [{"payload": _b64(b"\xff" * 20)}]}, 422, "do not parse"),
        ({"entries": []}, 422, "at least 1"),
        ({"schema_version": 9, "entries": [{"payload": _b64(mine)}]}, 422, "schema_version 9"),
        (b"{not json", 422, "JSON"),
    ]  # fmt: skip
    for doc, want, words in bad:
        code, text = _post(api, enrolled.token, path, doc)
        assert code == want and words in text, (code, text[:300])
    code, text = _post(
        api,
        enrolled.token,
        "/v1/devices/pi-1/status/signed",
        {**body, "device": "pi-1", "payload": _b64(b"{}")},
    )
    assert code == 422 and "EdgeStatus" in text, text
    assert client.exists(stream, keys.status, keys.device("pi-2"), keys.device_sig("pi-2")) == 0


def test_a_forged_signature_relayed_is_dead_lettered_by_the_trainer(
    enrolled: Enrolled, api: str
) -> None:
    client, keys = enrolled.client, enrolled.keys
    ingest = make_ingest(client, keys)
    intruder = DeviceSigner(FLEET, "pi-1", generate_keypair()[0])  # pi-1's name, not its key
    genuine = DeviceSigner(FLEET, "pi-1", enrolled.a.private_key)
    forged, good = _event("pi-1", 1), _event("pi-1", 2)
    entries = [
        {"payload": _b64(forged), "device": "pi-1", "sig": _b64(intruder.sign(FEEDBACK, forged))},
        {"payload": _b64(good), "device": "pi-1", "sig": _b64(genuine.sign(FEEDBACK, good))},
    ]
    code, text = _post(
        api, enrolled.token, "/v1/models/digits/feedback/entries", {"entries": entries}
    )
    assert code == 202 and len(json.loads(text)["entries"]) == 2, text
    batch = ingest.poll(block_ms=10)
    assert len(batch.accepted) == 1 and batch.deadlettered == 1
    reasons = [d.reason for d in dead_letters(client, keys)]
    assert reasons == ["device 'pi-1': signature does not verify with the device's key"]

    # A forged status report is written (the API does not judge signatures) and then
    # ignored by the gates.
    report = EdgeStatus(device_id="pi-1", fleet=FLEET, model="digits", state="serving", ts=1.0)
    data = report.to_wire()
    body = {"payload": _b64(data), "device": "pi-1", "sig": _b64(intruder.sign(STATUS, data))}
    code, text = _post(api, enrolled.token, "/v1/devices/pi-1/status/signed", body)
    assert code == 202, text
    statuses, refused = verified_statuses(client, keys, ["pi-1"], DeviceKeyring(client, keys))
    assert statuses["pi-1"] is None and "does not verify" in refused["pi-1"]


def test_entries_the_api_refuses_are_kept_aside_with_the_reason(
    enrolled: Enrolled, api: str, tmp_path: Path
) -> None:
    """A 4xx for the events themselves (here 422: an unsigned event in a schema version the
    API does not read) is not retried forever: those events go to state_dir/refused with the
    reason, the others arrive, nothing is dropped."""
    member = FleetMember(NO_REDIS, enrolled.keys, "pi-1", "digits")  # never connected
    # One event per request (each is over 300 bytes): the refusal is the bad event's alone.
    sink = HttpSink(FleetApi(api, enrolled.token), "digits", None, batch=8, max_request_bytes=300)
    (tmp_path / "edge").mkdir()
    up = FeedbackUplink(member, "e0", tmp_path / "edge", UplinkPolicy(batch=8), sink=sink)
    up.start()
    try:
        for seq, version in ((1, 1), (2, 2), (3, 1)):
            event = FeedbackEvent(
                event_id=f"pi-1:e0:{seq}",
                device_id="pi-1",
                model="digits",
                x_shape=[64],
                x_dtype="float32",
                label=seq,
                schema_version=version,
            )
            up.submit(event, bytes(4 * 64))
        assert up.flush(timeout=10.0)
    finally:
        up.close(timeout=2.0)
    assert (up.sent, up.refused, up.dropped) == (2, 1, 0)
    kept = sorted((tmp_path / "edge" / "refused").iterdir())
    assert [p.suffix for p in kept] == [".frames", ".reason"]
    assert b'"pi-1:e0:2"' in kept[0].read_bytes()
    assert "HTTP 422" in kept[1].read_text() and "schema_version 2" in kept[1].read_text()
    assert enrolled.client.xlen(enrolled.keys.feedback_of("digits")) == 2
