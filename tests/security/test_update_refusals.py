"""An edge's updater against hostile announcements, on a real TLS redis-server with the
shipped ACL, the edge connected as the ``edge`` user.

Each bad entry is refused on its own (logged, counted in ``updates_refused`` and the
device's status, the stream position moved past it) and never treated as an
outage: a good version announced after them is served. Nothing outside the model
store is ever named as a file, no oversized value is read, a stalled download is
abandoned at its deadline.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cloud.demo.stall_proxy import StallProxy
from edge.daemon import EdgeDaemon
from edge.settings import EdgeSettings
from shared.codec import encode_full, sha256_hex
from shared.config import load_settings
from shared.keys import FleetKeys
from shared.messages import DeltaAnnouncement, Payload
from tests.edge.helpers import make_manifest, publish_version, sign, variant
from tests.security.conftest import FLEET, TlsRedis
from tests.serving import Signing, wait_for

KEYS = FleetKeys(FLEET)


def _settings(tls: TlsRedis, tmp_path: Path, signing: Signing, **overrides: Any) -> EdgeSettings:
    values: dict[str, Any] = {
        "mode": "production",
        "device_id": "pi-1",
        "fleet": FLEET,
        "redis_url": tls.url("edge"),
        "redis_ca_file": tls.pki.ca,
        "public_key": signing.public_key,
        "state_dir": tmp_path / "edge",
        "status_interval_s": 0.2,
        "feedback_flush_ms": 10,
        "warmup_invokes": 1,
        "guard_enabled": False,
    }
    return load_settings(EdgeSettings, None, **{**values, **overrides})


@pytest.fixture
def admin(tls_redis: TlsRedis) -> Iterator[redis.Redis]:
    client = tls_redis.client("admin")
    yield client
    client.close()


@pytest.fixture
def signing(tmp_path: Path) -> Signing:
    signing = Signing.create(tmp_path)
    signing.public_key.chmod(0o644)
    return signing


def _serving(daemon: EdgeDaemon) -> int | None:
    current = daemon.chain.current
    return current.version if current else None


def _announce(admin: redis.Redis, ann: DeltaAnnouncement | dict[str, Any]) -> str:
    data = ann.to_wire() if isinstance(ann, DeltaAnnouncement) else json.dumps(ann)
    return str(admin.xadd(KEYS.deltas, {"data": data}).decode())


def test_unreadable_mistyped_missing_malformed_and_oversized_entries_are_refused(
    tls_redis: TlsRedis, admin: redis.Redis, tmp_path: Path, signing: Signing
) -> None:
    publish_version(admin, KEYS, signing.signer, variant(1), 1)
    with EdgeDaemon(_settings(tls_redis, tmp_path, signing)) as daemon:
        wait_for(lambda: _serving(daemon) == 1, what="v1 served over TLS as the edge user")
        updater = daemon.models["digits"].updater

        def refused_after(entry_id: str, count: int, why: str) -> None:
            wait_for(
                lambda: (
                    updater.updates_refused >= count and daemon.store.deltas_last_id == entry_id
                ),
                what=f"{why} refused and passed",
            )
            assert why in (updater.last_error or ""), updater.last_error

        def signed(version: int) -> tuple[str, Payload]:
            """Version ``version``'s signed manifest written as the publisher does."""
            data = variant(version)
            manifest = make_manifest(data, version)
            admin.set(KEYS.manifest(manifest.sha256), sign(signing.signer, manifest).to_wire())
            blob = encode_full(data, level=3)
            admin.set(KEYS.artifact(manifest.sha256), blob)
            return manifest.sha256, Payload(
                encoding="full", key=KEYS.artifact(manifest.sha256), size=len(blob)
            )

        # A manifest key the edge may not read (the trainer's replay buffer): NOPERM.
        sha, full = signed(2)
        admin.set(f"el:{{{FLEET}}}:replay:x", b"{}")
        entry = _announce(
            admin,
            DeltaAnnouncement(
                model="digits",
                version=2,
                sha256=sha,
                manifest_key=f"el:{{{FLEET}}}:replay:x",
                payloads=[full],
            ),
        )
        refused_after(entry, 1, "NoPermissionError")

        # A manifest key holding a hash: WRONGTYPE.
        sha, full = signed(3)
        admin.delete(KEYS.manifest(sha))
        admin.hset(KEYS.manifest(sha), "a", "b")
        entry = _announce(
            admin,
            DeltaAnnouncement(
                model="digits",
                version=3,
                sha256=sha,
                manifest_key=KEYS.manifest(sha),
                payloads=[full],
            ),
        )
        refused_after(entry, 2, "WRONGTYPE")

        # A payload that is not there.
        sha, full = signed(4)
        admin.delete(full.key)
        entry = _announce(
            admin,
            DeltaAnnouncement(
                model="digits",
                version=4,
                sha256=sha,
                manifest_key=KEYS.manifest(sha),
                payloads=[full],
            ),
        )
        refused_after(entry, 3, "is not in Redis")

        # A sha256 that is a path.
        entry = _announce(
            admin,
            {
                "schema_version": 1,
                "model": "digits",
                "version": 5,
                "sha256": "../../../../tmp/evil",
                "manifest_key": KEYS.manifest("0" * 64),
                "payloads": [{"encoding": "full", "key": KEYS.artifact("0" * 64), "size": 1}],
            },
        )
        refused_after(entry, 4, "sha256")

        # A payload of far more bytes than the signed size can compress to: never read.
        sha, full = signed(6)
        huge = os.urandom(4 * len(variant(6)))
        admin.set(full.key, huge)
        downloaded = updater.bytes_downloaded
        entry = _announce(
            admin,
            DeltaAnnouncement(
                model="digits",
                version=6,
                sha256=sha,
                manifest_key=KEYS.manifest(sha),
                payloads=[full.model_copy(update={"size": len(huge)})],
            ),
        )
        refused_after(entry, 5, "over its bound")
        assert updater.bytes_downloaded == downloaded

        # A target that is a path: refused, never a file name.
        admin.set(KEYS.target("digits"), "../../../../tmp/evil")
        admin.xadd(KEYS.deltas, {"assign": json.dumps({"schema_version": 1, "model": "digits"})})
        wait_for(lambda: updater.updates_refused >= 6, what="the bad target refused")
        assert "not a version name" in (updater.last_error or "")
        admin.delete(KEYS.target("digits"))

        # Nothing of that was an outage: the next good version is served.
        publish_version(admin, KEYS, signing.signer, variant(7), 7)
        wait_for(lambda: _serving(daemon) == 7, what="v7 served after the refusals")
        assert sorted(p.name for p in (tmp_path / "edge" / "models").iterdir()) == sorted(
            f"{sha256_hex(variant(v))}{ext}"
            for v in (1, 7)
            for ext in (".tflite", ".manifest.json")
        )

        def reported() -> bool:
            raw = admin.get(KEYS.device("pi-1"))
            return raw is not None and json.loads(raw)["counters"]["updates_refused"] >= 6

        wait_for(reported, what="the refusals in the device's status")
    assert not Path("/tmp/evil").exists()


def test_a_stalled_download_is_abandoned_at_its_deadline(
    tls_redis: TlsRedis, admin: redis.Redis, tmp_path: Path, signing: Signing
) -> None:
    publish_version(admin, KEYS, signing.signer, variant(1), 1)
    proxy = StallProxy(tls_redis.port)
    url = tls_redis.url("edge").replace(f":{tls_redis.port}/", f":{proxy.port}/")
    settings = _settings(tls_redis, tmp_path, signing, redis_url=url, download_deadline_s=0.5)
    try:
        with EdgeDaemon(settings) as daemon:
            wait_for(lambda: _serving(daemon) == 1, what="v1 served through the proxy")
            updater = daemon.models["digits"].updater
            proxy.stall_large.set()
            started = time.monotonic()
            publish_version(admin, KEYS, signing.signer, variant(2), 2)
            wait_for(lambda: updater.updates_refused >= 1, what="the stalled download abandoned")
            assert proxy.stalled.is_set()
            assert "download deadline" in (updater.last_error or "")
            assert time.monotonic() - started < 3  # the deadline, not a socket timeout
            assert _serving(daemon) == 1

            # The server answers again: the next version is served (no outage was assumed).
            proxy.stall_large.clear()
            publish_version(admin, KEYS, signing.signer, variant(3), 3)
            wait_for(lambda: _serving(daemon) == 3, what="v3 served after the stall")
    finally:
        proxy.close()
