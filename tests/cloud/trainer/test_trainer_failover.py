"""A trainer's round (its bootstrap: train, export, publish) while the master of the fleet's
slot is killed between training and publishing, in the trainer's own loop (``run``): the
round's writes either ride through the election, or fail with a log line per failed
attempt and the loop runs the round again; either way the version published is whole and confirmed by a
replica (``publish_wait_replicas = 1``) once the killed node is back as one.

The test starts a cluster of its own (it kills one of its masters). Run with ``-s`` for
the figures (docs/ARCHITECTURE.md, "A publish during a failover").
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from cloud.data.datasets import Dataset
from cloud.trainer.loop import Trainer
from cloud.trainer.settings import TrainerSettings
from shared.codec import decode_full, sha256_hex
from shared.keys import FleetKeys
from shared.messages import SignedManifest
from shared.redis_client import connect_redis
from shared.signing import Verifier
from tests.cloud.conftest import FAST_TRAINER, FLEET
from tests.redis_cluster import RedisClusterNodes
from tests.serving import wait_for

pytestmark = pytest.mark.cloud


def test_a_round_in_flight_during_a_failover_publishes_once_confirmed(
    own_cluster: RedisClusterNodes,
    digits: Dataset,
    signing_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = TrainerSettings(
        fleet=FLEET,
        redis_url=own_cluster.url,
        consumer="trainer-1",
        signing_key=signing_dir / "signing.key",
        blob_dir=tmp_path / "blobs",
        publish_wait_replicas=1,
        publish_wait_ms=10_000,
        **{**FAST_TRAINER, "bootstrap_epochs": 1},
    )
    trainer = Trainer(settings, dataset=digits, background_rounds=False)
    keys = FleetKeys(FLEET)
    client = connect_redis(own_cluster.url)
    master = client.get_node_from_key(keys.versions("digits")).port  # type: ignore[attr-defined]
    publish = trainer.rounds._publish
    times: dict[str, float] = {}

    def back_as_replica() -> None:
        # the promoted master has no replica until the killed node is back: restart it once
        # the slot has moved, as an operator (or a supervisor) would
        wait_for(lambda: _moved(own_cluster, keys.versions("digits"), master), 20, "a new master")
        times["failover"] = time.monotonic()
        own_cluster.restart(master)

    def kill_then_publish(*args: Any, **kwargs: Any) -> None:
        # the round has trained and exported; the kill comes before its first write (the
        # weights), then the publish's transaction and its confirmation
        if "kill" not in times:
            own_cluster.kill(master)
            times["kill"] = time.monotonic()
            threading.Thread(target=back_as_replica, daemon=True).start()
        publish(*args, **kwargs)
        times["published"] = time.monotonic()

    trainer.rounds._publish = kill_then_publish  # type: ignore[method-assign]
    stop = threading.Event()
    t0 = time.monotonic()
    loop = threading.Thread(target=trainer.run, args=(stop,))
    loop.start()
    try:
        wait_for(lambda: "published" in times, 60, "a published round")
    finally:
        stop.set()
        loop.join(30)
    report = trainer.status.last_round
    versions = trainer.publisher.versions("digits")
    lines = [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("cloud.") and r.levelno >= logging.WARNING
    ]
    print(
        f"\nround (bootstrap) {times['kill'] - t0:.1f} s to train and export; master {master} "
        f"killed before its first write; slot moved {times['failover'] - times['kill']:.1f} s "
        f"later; {'the round' if not lines else 'the next round'} published and confirmed "
        f"by a replica "
        f"{times['published'] - times['kill']:.1f} s after the kill; report: "
        f"published={report.get('published')} {report.get('reason')!r}; versions {versions}; "
        f"log: {lines}"
    )
    assert report["published"] is True and len(versions) == 1
    ((number, sha),) = versions
    signed = SignedManifest.from_wire(client.get(keys.manifest(sha)))  # type: ignore[arg-type]
    Verifier.from_file(signing_dir / "signing.pub").verify(
        signed.manifest_json.encode(), signed.signature
    )
    assert signed.manifest().version == number == 1
    assert sha256_hex(decode_full(client.get(keys.artifact(sha)))) == sha  # type: ignore[arg-type]
    assert client.exists(keys.weights(sha)) == 1  # the next round's starting point
    assert not any(r.exc_info for r in caplog.records)  # no traceback
    # Either the round's writes rode through the election (redis-py's cluster retries and
    # a new layout) and it completed, or they failed: a line per attempt, and the loop
    # ran the round again.
    assert all(line.startswith("WARNING could not start: redis unavailable") for line in lines)


def _moved(cluster: RedisClusterNodes, key: str, dead: int) -> bool:
    slot = redis.cluster.key_slot(key.encode())
    live = next(p for p in cluster.procs if p != dead)
    slots: Any = cluster.node(live).execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    return any(s <= slot <= e and int(m[1]) != dead for s, e, m, *_ in slots)
