"""Delivery end to end: the publisher's patches reach real edge daemons, which apply them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from cloud.registry.publisher import Published, Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry
from edge.daemon import EdgeDaemon
from edge.settings import BUNDLED_BASELINE, EdgeSettings
from shared.codec import sha256_hex
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, ProbeSet
from shared.runtime import TFLiteModel
from shared.signing import Signer

LABELS = [str(i) for i in range(10)]


def model_file(n: int) -> bytes:
    """The bundled int8 baseline with 256 padding bytes (ignored by TFLite) that
    differ per ``n``: same length, same answers, another sha256."""
    padding = bytearray(256)
    padding[::37] = bytes([n % 256]) * len(padding[::37])
    return BUNDLED_BASELINE.read_bytes() + bytes(padding)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return value


@pytest.fixture
def publisher(redis_client: redis.Redis, keys: FleetKeys, signing_dir: Path, tmp_path: Path):
    registry = Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
    signer = Signer.from_file(signing_dir / "signing.key")
    return Publisher(registry, signer)


def publish(publisher: Publisher, content: bytes) -> Published:
    inputs = np.random.default_rng(0).integers(0, 17, (8, 64)).astype(np.float32)
    model = TFLiteModel(content)
    probe = ProbeSet(inputs=inputs.tolist(), expected=model.predict_proba_batch(inputs).tolist())
    return publisher.publish(
        PublishRequest("digits", content, 64, LABELS, probe=probe, runtime=model.runtime)
    )


@pytest.fixture
def edge(redis_url: str, keys: FleetKeys, signing_dir: Path, tmp_path: Path):
    made: list[EdgeDaemon] = []

    def make(device: str) -> EdgeDaemon:
        daemon = EdgeDaemon(
            EdgeSettings(
                device_id=device,
                fleet=keys.fleet,
                redis_url=redis_url,
                public_key=signing_dir / "signing.pub",
                state_dir=tmp_path / device,
                status_interval_s=0.2,
                status_ttl_s=60,
                warmup_invokes=1,
                http_port=0,
            )
        )
        made.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in made:
        daemon.stop(timeout=2.0)


def serving(daemon: EdgeDaemon) -> int | None:
    return daemon.chain.current.version if daemon.chain.current else None


def reports(client: redis.Redis, keys: FleetKeys, device: str, sha: str) -> bool:
    raw = client.get(keys.device(device))
    return raw is not None and EdgeStatus.from_wire(raw).sha256 == sha


def test_edges_receive_patches_from_the_parent_and_from_the_version_they_report(
    publisher: Publisher, edge, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    v1 = publish(publisher, model_file(1))
    a, b = edge("pi-a"), edge("pi-b")
    for d in (a, b):
        wait_for(lambda d=d: serving(d) == 1, what="v1 served")
    wait_for(lambda: reports(redis_client, keys, "pi-b", v1.sha256), what="pi-b reports v1")
    b.stop(timeout=2.0)  # pi-b goes offline on v1; its last report stays until it expires

    v2 = publish(publisher, model_file(2))
    assert [p.base_sha256 for p in v2.payloads] == [None, v1.sha256]
    wait_for(lambda: serving(a) == 2, what="v2 served by pi-a")
    wait_for(lambda: reports(redis_client, keys, "pi-a", v2.sha256), what="pi-a reports v2")

    v3 = publish(publisher, model_file(3))
    assert [p.base_sha256 for p in v3.payloads] == [None, v2.sha256, v1.sha256]
    wait_for(lambda: serving(a) == 3, what="v3 served by pi-a")
    assert (a.updater.full_downloads, a.updater.patches_applied) == (1, 2)

    back = edge("pi-b")  # same state directory: still on v1, reads on from its stream position
    wait_for(lambda: serving(back) == 3, what="v3 served by pi-b")
    assert (back.updater.full_downloads, back.updater.patches_applied) == (0, 1)
    assert back.store.current == sha256_hex(model_file(3))
