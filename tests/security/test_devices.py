"""Per-device identity against a real redis-server: each enrolled device has its own
Redis user that Redis itself confines to the device's keys, and its own key that signs
what it writes."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import redis

from cloud.cli.main import main
from cloud.registry.devices import (
    PLACEHOLDER_HASH,
    Credentials,
    DeviceAlreadyEnrolled,
    DeviceNotEnrolled,
    DeviceRegistry,
)
from shared.keys import FleetKeys
from tests.conftest import free_port

FLEET = "lab"


@pytest.fixture
def registry(redis_client: redis.Redis) -> DeviceRegistry:
    return DeviceRegistry(redis_client, FleetKeys(FLEET))


def as_device(redis_url: str, creds: Credentials) -> redis.Redis:
    return redis.Redis.from_url(redis_url, username=creds.acl_user, password=creds.password)


def test_a_device_writes_only_its_own_keys(registry: DeviceRegistry, redis_url: str) -> None:
    keys = registry.keys
    a, b = registry.enroll("pi-a"), registry.enroll("pi-b")
    dev = as_device(redis_url, a)
    dev.set(keys.device("pi-a"), b"{}")
    dev.xadd(keys.feedback_of("digits"), {"frames": b"x"})
    dev.xadd(keys.status, {"data": b"{}"})
    dev.zadd(keys.devices, {"pi-a": 1.0})
    assert dev.get(keys.target("digits")) is None
    # the trust metadata it verifies: TUF files and director orders
    assert dev.strlen(keys.tuf_metadata("timestamp.json")) == 0
    assert dev.hmget(keys.director("digits"), ["fleet", "device:pi-a"]) == [None, None]
    for write in (
        lambda: dev.set(keys.device("pi-b"), b"{}"),  # another device's status
        lambda: dev.hset(keys.device_registry, "pi-b", "{}"),  # the registry
        lambda: dev.set(keys.target("digits"), "ab" * 32),  # what devices serve
        lambda: dev.set(keys.tuf_metadata("timestamp.json"), b"{}"),  # trust metadata
        lambda: dev.hset(keys.director("digits"), "fleet", b"{}"),
        lambda: dev.xrange(keys.feedback_of("digits")),  # others' feedback
        lambda: dev.xtrim(keys.feedback_of("digits"), maxlen=0),
        lambda: dev.eval("return 1", 0),
        lambda: dev.script_load("return 1"),
        lambda: dev.acl_setuser(b.acl_user, enabled=False),
        lambda: dev.set(FleetKeys("other").device("pi-a"), b"{}"),  # another fleet
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()
    dev.close()


def test_revoke_makes_the_credentials_fail(registry: DeviceRegistry, redis_url: str) -> None:
    creds = registry.enroll("pi-a")
    dev = as_device(redis_url, creds)
    assert dev.ping()
    with pytest.raises(DeviceAlreadyEnrolled):
        registry.enroll("pi-a")
    assert [r.device_id for r in registry.list()] == ["pi-a"]
    registry.revoke("pi-a")
    # Redis closes the deleted user's connections; a new login fails.
    with pytest.raises((redis.exceptions.AuthenticationError, redis.ConnectionError)):
        dev.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        as_device(redis_url, creds).ping()
    assert registry.list() == []
    with pytest.raises(DeviceNotEnrolled):
        registry.verifier("pi-a")


def test_enroll_cli_writes_private_credentials(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pi-a"
    base = ["--fleet", FLEET, "--redis-url", redis_url, "--json"]
    assert main(["device", "enroll", "pi-a", "--out", str(out), *base]) == 0
    for name in ("device.json", "device.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    doc = json.loads((out / "device.json").read_text())
    dev = redis.Redis.from_url(
        redis_url, username=doc["redis_user"], password=doc["redis_password"]
    )
    assert dev.ping()
    capsys.readouterr()
    assert main(["device", "list", *base]) == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["pi-a"]
    assert main(["device", "revoke", "pi-a", *base]) == 0
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(
            redis_url, username=doc["redis_user"], password=doc["redis_password"]
        ).ping()


def test_generated_acl_for_two_fleets_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["acl", "generate", "--fleet", "a", "--fleet", "b"]) == 0
    digest = hashlib.sha256(b"pw").hexdigest()
    acl = tmp_path / "users.acl"
    acl.write_text(capsys.readouterr().out.replace(PLACEHOLDER_HASH, "#" + digest))
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--aclfile", str(acl), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:  # a refused ACL file stops redis-server before it listens
            assert proc.poll() is None, "redis-server refused the generated ACL file"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        admin = redis.Redis(port=port, username="admin", password="pw")
        assert {"admin", "trainer", "api", "edge~a", "edge~b"} <= set(admin.acl_users())
        edge_a = redis.Redis(port=port, username="edge~a", password="pw")
        edge_a.set(FleetKeys("a").device("pi"), b"{}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            edge_a.set(FleetKeys("b").device("pi"), b"{}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            edge_a.eval("return 1", 0)
    finally:
        proc.terminate()
        proc.wait(10)


# -- forged feedback and status, refused by the trainer's ingest and the gates --------


def feedback_batch(device_id: str, seqs: range) -> bytes:
    return b"\n".join(
        json.dumps(
            {
                "event_id": f"{device_id}:e:{i}",
                "device_id": device_id,
                "model": "digits",
                "x": [0.0] * 64,
                "label": i % 10,
            }
        ).encode()
        for i in seqs
    )


def test_forged_feedback_is_dead_lettered(
    registry: DeviceRegistry, redis_client: redis.Redis
) -> None:
    from shared.device_identity import FEEDBACK, DeviceSigner
    from tests.cloud.data.test_ingest import dead_letters, make_ingest

    keys = registry.keys
    a, b = registry.enroll("pi-a"), registry.enroll("pi-b")
    sign_a = DeviceSigner(FLEET, "pi-a", a.private_key)
    sign_b_with_a = DeviceSigner(FLEET, "pi-b", a.private_key)  # claims pi-b, holds a's key
    ingest = make_ingest(redis_client, keys)
    stream = keys.feedback
    good = feedback_batch("pi-a", range(1, 4))
    redis_client.xadd(stream, {"events": good, **sign_a.fields(FEEDBACK, good)})
    other = feedback_batch("pi-b", range(1, 3))
    redis_client.xadd(stream, {"events": other, **sign_b_with_a.fields(FEEDBACK, other)})
    redis_client.xadd(
        stream, {"events": other, **sign_a.fields(FEEDBACK, other)}
    )  # a's entry, b's events
    redis_client.xadd(stream, {"events": other})  # unsigned
    tampered = feedback_batch("pi-a", range(4, 6))
    redis_client.xadd(stream, {"events": tampered, **sign_a.fields(FEEDBACK, good)})
    batch = ingest.poll()
    assert len(batch.accepted) == 3 and batch.entries == 5
    reasons = [d.reason for d in dead_letters(redis_client, keys)]
    assert len(reasons) == 1 + 2 + 1 + 1, reasons
    assert "device 'pi-b': signature does not verify with the device's key" in reasons
    assert sum("in an entry signed by device 'pi-a'" in r for r in reasons) == 2
    assert sum("unsigned" in r for r in reasons) == 1
    assert (
        sum(r == "device 'pi-a': signature does not verify with the device's key" for r in reasons)
        == 1
    )
    assert b.device_id == "pi-b"


def test_forged_status_is_ignored_by_the_gates(
    registry: DeviceRegistry, redis_client: redis.Redis
) -> None:
    from cloud.rollout.controller import RolloutController
    from shared.device_identity import DeviceSigner
    from shared.messages import EdgeStatus
    from shared.status_report import add_status

    keys = registry.keys
    a = registry.enroll("pi-a")
    registry.enroll("pi-b")

    def report(device: str, signer: DeviceSigner | None) -> None:
        status = EdgeStatus(
            device_id=device,
            fleet=FLEET,
            model="digits",
            sha256="ab" * 32,
            state="serving",
            ts=time.time(),
        )
        pipe = redis_client.pipeline()
        add_status(pipe, keys, status, ttl_s=60, maxlen=100, signer=signer)
        pipe.execute()

    report("pi-a", DeviceSigner(FLEET, "pi-a", a.private_key))
    report("pi-b", DeviceSigner(FLEET, "pi-b", a.private_key))  # forged with a's key
    report("pi-c", None)  # unsigned, never enrolled
    controller = RolloutController(redis_client, keys, versions=None)  # type: ignore[arg-type]
    statuses = controller.statuses(["pi-a", "pi-b", "pi-c"])
    assert statuses["pi-a"] is not None and statuses["pi-a"].device_id == "pi-a"
    assert statuses["pi-b"] is None and statuses["pi-c"] is None
    assert sum(controller.refused_statuses.values()) == 2


def test_unsigned_edges_work_while_no_device_is_enrolled(redis_client: redis.Redis) -> None:
    from cloud.rollout.controller import RolloutController
    from shared.messages import EdgeStatus
    from shared.status_report import add_status
    from tests.cloud.data.test_ingest import make_ingest

    keys = FleetKeys(FLEET)
    redis_client.xadd(keys.feedback, {"events": feedback_batch("pi-a", range(1, 3))})
    assert len(make_ingest(redis_client, keys).poll().accepted) == 2
    pipe = redis_client.pipeline()
    status = EdgeStatus(
        device_id="pi-a",
        fleet=FLEET,
        model="digits",
        sha256="ab" * 32,
        state="serving",
        ts=time.time(),
    )
    add_status(pipe, keys, status, ttl_s=60, maxlen=100)
    pipe.execute()
    assert (
        RolloutController(redis_client, keys, versions=None).statuses(["pi-a"])["pi-a"] is not None
    )  # type: ignore[arg-type]


def test_an_enrolled_edge_sends_signed_feedback_and_status(
    registry: DeviceRegistry, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The edge's own writers, logged in as the device's Redis user (no scripting)."""
    from cloud.rollout.controller import RolloutController
    from edge.connections import FleetMember
    from edge.uplink import FeedbackUplink, UplinkPolicy
    from shared.device_identity import DeviceSigner
    from shared.messages import EdgeStatus, FeedbackEvent
    from shared.status_report import add_status
    from tests.cloud.data.test_ingest import make_ingest

    keys = registry.keys
    creds = registry.enroll("pi-1")
    signer = DeviceSigner(FLEET, "pi-1", creds.private_key)
    url = redis_url.replace("redis://", f"redis://{creds.acl_user}:{creds.password}@")
    member = FleetMember(url, keys, "pi-1", "digits", signer=signer)
    ingest = make_ingest(redis_client, keys)
    up = FeedbackUplink(member, "e0", tmp_path, UplinkPolicy(batch=10, flush_ms=10.0))
    up.start()
    try:
        for i in range(25):
            ev = FeedbackEvent(
                event_id=up.new_event_id(),
                device_id="pi-1",
                model="digits",
                x_shape=[64],
                x_dtype="float32",
                label=i % 10,
            )
            up.submit(ev, bytes(4 * 64))
        assert up.flush(timeout=5.0)
    finally:
        up.close(timeout=1.0)
    accepted = sum(len(ingest.poll(block_ms=10).accepted) for _ in range(3))
    assert accepted == 25 and ingest.counters.deadlettered == 0

    status = EdgeStatus(
        device_id="pi-1",
        fleet=FLEET,
        model="digits",
        sha256="ab" * 32,
        state="serving",
        ts=time.time(),
    )
    device = member.connect()
    pipe = device.pipeline()
    add_status(pipe, keys, status, ttl_s=60, maxlen=100, signer=signer)
    pipe.execute()
    controller = RolloutController(redis_client, keys, versions=None)  # type: ignore[arg-type]
    assert controller.statuses(["pi-1"])["pi-1"] is not None


def test_a_devices_script_is_refused_and_its_oversized_event_dead_lettered(
    registry: DeviceRegistry, redis_client: redis.Redis, redis_url: str
) -> None:
    """What a device's ACL user refuses (a Lua script that would block Redis, large
    writes outside its own streams) and what the trainer refuses for it (an event over
    the ingest's size bound, appended to the stream the device may write)."""
    from cloud.demo.attacks import dead_letters, feedback_fields
    from tests.cloud.data.test_ingest import make_ingest

    keys = registry.keys
    creds = registry.enroll("pi-a")
    dev = as_device(redis_url, creds)
    big = b"x" * (1024 * 1024)
    for attempt in (
        lambda: dev.eval("while true do end", 0),  # would hold Redis BUSY for everyone
        lambda: dev.evalsha("0" * 40, 0),
        lambda: dev.execute_command("FUNCTION", "FLUSH"),
        lambda: dev.append(keys.device("pi-a"), big),
        lambda: dev.set(keys.artifact("ab" * 32), big),
        lambda: dev.xadd(keys.deltas, {"data": big}),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert redis_client.ping()  # never BUSY
    event = {
        "event_id": "pi-a:e:1",
        "device_id": "pi-a",
        "model": "digits",
        "x": [0.0] * 64,
        "label": 1,
        "note": "y" * 10_000,
    }
    dev.xadd(
        keys.feedback_of("digits"),
        feedback_fields(FLEET, "pi-a", creds.private_key, [event]),
    )
    dev.close()
    batch = make_ingest(redis_client, keys).poll()  # max_event_bytes 4096
    assert not batch.accepted
    reasons = [d.reason for d in dead_letters(redis_client, keys)]
    assert len(reasons) == 1 and reasons[0].startswith("oversize"), reasons
