"""The trainer may publish versions; it may not decide what devices run.

A real redis-server loaded with the generated ACL file: a trainer, connected as the
``trainer`` user, bootstraps and publishes a version into the fleet's registry and TUF
targets and ingests feedback; the same credentials are NOPERM on every key that says
what a device serves (target, assignments, pins, director orders, rollouts) and on
the root of trust."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from tuf.api.metadata import Metadata, Targets

from cloud.data.datasets import load_dataset
from cloud.registry.devices import PLACEHOLDER_HASH, service_lines, trainer_rules
from cloud.registry.publisher import PublishError
from cloud.registry.tuf_keys import KeyDir, init_fleet
from cloud.trainer.loop import Trainer
from cloud.trainer.settings import TrainerSettings
from shared.keys import FleetKeys
from shared.signing import write_keypair
from shared.tuf_paths import artifact_path
from tests.acl_redis import acl_server, noperm
from tests.cloud.conftest import FAST_TRAINER, EventMaker

FLEET = "lab"
SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "cloud" / "users.acl"


@pytest.fixture
def acl_urls(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A redis-server with ``edgeloop acl generate --fleet lab``'s file (password ``pw``)."""
    digest = hashlib.sha256(b"pw").hexdigest()
    text = "\n".join(service_lines([FLEET])) + "\n"
    text = text.replace(PLACEHOLDER_HASH, "#" + digest)
    with acl_server(text, tmp_path, lambda port: f"redis://admin:pw@127.0.0.1:{port}/0") as port:
        yield {u: f"redis://{u}:pw@127.0.0.1:{port}/0" for u in ("admin", "trainer")}


def test_the_shipped_trainer_line_is_the_generated_one() -> None:
    line = next(x for x in SHIPPED.read_text().splitlines() if x.startswith("user trainer "))
    assert line.split(maxsplit=4)[4] == " ".join(trainer_rules(["default"]))


def test_a_trainer_publishes_but_cannot_say_what_devices_serve(acl_urls, tmp_path):
    keys = FleetKeys(FLEET)
    admin = redis.Redis.from_url(acl_urls["admin"])
    keydir = KeyDir(tmp_path / "tuf")
    init_fleet(admin, keys, keydir, root_keys=1, threshold=1)
    write_keypair(tmp_path / "keys")
    fast = {k: v for k, v in FAST_TRAINER.items() if k != "release"}
    settings = TrainerSettings(
        **{**fast, "bootstrap_epochs": 4},
        fleet=FLEET,
        redis_url=acl_urls["trainer"],
        signing_key=tmp_path / "keys" / "signing.key",
        consumer="trainer-1",
        blob_dir=tmp_path / "blobs",
        release="manual",
        tuf_targets_key=keydir.file("targets"),
        tuf_online_key=keydir.file("online"),
    )
    trainer = Trainer(settings, dataset=load_dataset("digits"), background_rounds=False)
    try:
        # A round (the bootstrap) publishes under the trainer user: registry, announcement,
        # TUF targets, snapshot and timestamp.
        trainer.start()
        version, sha, _ = trainer.publisher.latest("digits")
        assert version == 1
        targets = Metadata[Targets].from_bytes(admin.get(keys.tuf_metadata("targets.json")))
        assert artifact_path(sha) in targets.signed.targets
        assert admin.xlen(keys.deltas) == 1 and admin.get(keys.target("digits")) is None
        # ... and it ingests feedback (group reads, acks, watermarks).
        parts = trainer.parts
        events = EventMaker()
        wire = events.many(parts.stream.X[:30], parts.stream.y[:30])
        events.send(admin, keys.feedback_of("digits"), wire)
        accepted = 0
        for _ in range(20):
            batch = trainer.step(block_ms=10)
            accepted += len(batch.accepted)
            if batch.entries == 0:
                break
        assert accepted == 30 and trainer.write_status().feedback_accepted == 30
        assert admin.xlen(keys.deadletter) == 0
    finally:
        trainer.close()

    as_trainer = redis.Redis.from_url(acl_urls["trainer"])
    order = b'{"order": "v1"}'
    denied = {
        "set the target": lambda: as_trainer.set(keys.target("digits"), sha),
        "assign a device": lambda: as_trainer.hset(keys.assignments("digits"), "pi-1", sha),
        "pin a device": lambda: as_trainer.hset(keys.pins("digits"), "pi-1", sha),
        "write a director order": lambda: as_trainer.hset(keys.director("digits"), "fleet", order),
        "read director orders": lambda: as_trainer.hgetall(keys.director("digits")),
        "bump the director counter": lambda: as_trainer.hset(keys.director_counter, "digits", 9),
        "read the director counter": lambda: as_trainer.hgetall(keys.director_counter),
        "write a rollout": lambda: as_trainer.set(keys.rollout("r1"), b"{}"),
        "list a rollout": lambda: as_trainer.zadd(keys.rollouts, {"r1": 1.0}),
        "claim the active rollout": lambda: as_trainer.set(keys.active_rollout("digits"), "r1"),
        "write the TUF root": lambda: as_trainer.set(keys.tuf_metadata("root.json"), b"{}"),
        "write a numbered root": lambda: as_trainer.set(keys.tuf_metadata("2.root.json"), b"{}"),
        "enrol a device": lambda: as_trainer.hset(keys.device_registry, "pi-9", b"{}"),
        "forge a device's status": lambda: as_trainer.set(keys.device("pi-1"), b"{}"),
        "read tokens": lambda: as_trainer.hgetall(keys.tokens),
        "set the target in a script": lambda: as_trainer.eval(
            "return redis.call('SET', KEYS[1], ARGV[1])", 1, keys.target("digits"), sha
        ),
        "another fleet's target": lambda: as_trainer.get(FleetKeys("other").target("digits")),
    }
    refused = {what for what, call in denied.items() if noperm(call)}
    assert refused == set(denied)
    # A direct release (the trainer setting the target) fails whole: nothing half-published.
    pipe = as_trainer.pipeline(transaction=True)
    pipe.set(keys.target("digits"), sha)
    pipe.xadd(keys.deltas, {"data": b"{}"})
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    assert admin.get(keys.target("digits")) is None and admin.xlen(keys.deltas) == 1
    as_trainer.close()
    admin.close()


def test_a_direct_release_under_the_trainer_acl_is_one_clear_error(acl_urls, tmp_path):
    """``release = "direct"`` needs a Redis user that may set the target: under the
    trainer's ACL the publish is refused whole, with an error that says what to change."""
    keys = FleetKeys(FLEET)
    admin = redis.Redis.from_url(acl_urls["admin"])
    write_keypair(tmp_path / "keys")
    settings = TrainerSettings(
        **{**FAST_TRAINER, "bootstrap_epochs": 2, "release": "direct"},
        fleet=FLEET,
        redis_url=acl_urls["trainer"],
        signing_key=tmp_path / "keys" / "signing.key",
        consumer="trainer-1",
        blob_dir=tmp_path / "blobs",
    )
    trainer = Trainer(settings, dataset=load_dataset("digits"), background_rounds=False)
    try:
        with pytest.raises(PublishError, match=r'NOPERM.*release = "manual"'):
            trainer.start()
    finally:
        trainer.close()
    # nothing of the version was written
    assert admin.xlen(keys.deltas) == 0 and admin.get(keys.target("digits")) is None
    assert admin.zcard(keys.versions("digits")) == 0
    admin.close()
