"""Tokens and servers for the REST API tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from cloud.api.settings import ApiSettings
from cloud.api.tokens import TokenStore
from shared.keys import FleetKeys

#: A pepper that passes the production check (tests only).
PEPPER = "tests-only-pepper-0123456789abcdef"


def issue(
    client: redis.Redis, fleet: str, role: str, name: str | None = None, device: str | None = None
) -> str:
    """A fresh token of ``role`` (named after it unless ``name``)."""
    store = TokenStore(client, FleetKeys(fleet), PEPPER.encode())
    return store.issue(name or role, role, device)[1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """``app`` on a real uvicorn server in a thread; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def seed_versions(
    client: redis.Redis, fleet: str, blob_dir: Any, n: int = 3, model: str = "digits"
) -> list[str]:
    """``n`` published versions of ``model`` (random bytes: enough for rollouts and pins,
    not for serving), the first one the fleet's target; their sha256s."""
    import numpy as np

    from cloud.registry.publisher import Publisher, PublishRequest
    from cloud.registry.versions import DirBlobStore, Registry
    from shared.messages import ProbeSet
    from shared.signing import Signer, generate_keypair

    keys = FleetKeys(fleet)
    registry = Registry(client, keys, DirBlobStore(blob_dir))
    publisher = Publisher(registry, Signer(generate_keypair()[0]), release="manual")
    probe = ProbeSet(inputs=[[0.0]], expected=[[0.5, 0.5]])
    rng = np.random.default_rng(len(model))
    shas = []
    for _ in range(n):
        blob = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
        shas.append(
            publisher.publish(PublishRequest(model, blob, 1, ["a", "b"], probe, runtime="t")).sha256
        )
    client.set(keys.target(model), shas[0])
    return shas


def report(
    client: redis.Redis,
    fleet: str,
    device: str,
    sha: str | None,
    ttl_s: int = 60,
    **fields: Any,
) -> None:
    """Write a device's status as its edge would (``shared.status_report.add_status``:
    the status stream, the device key with a TTL, the device index)."""
    from shared.messages import EdgeStatus
    from shared.status_report import add_status

    keys = FleetKeys(fleet)
    status = EdgeStatus(
        device_id=device, fleet=fleet, model="digits", sha256=sha, state="serving", **fields
    )
    pipe = client.pipeline(transaction=False)
    add_status(pipe, keys, status, ttl_s, 10_000)
    pipe.execute()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in a Prometheus exposition, or None."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def dev_api_settings(fleet: str, redis_url: str, tmp: Path, **overrides: Any) -> ApiSettings:
    """A development API on ``redis_url`` with its blobs under ``tmp`` and no public key
    (manifests served unverified), tokens hashed under the tests' pepper."""
    fields: dict[str, Any] = {
        "fleet": fleet,
        "redis_url": redis_url,
        "blob_dir": tmp / "blobs",
        "public_key": tmp / "none.pub",
        "token_pepper": PEPPER,
        "mode": "development",
        "controller_interval_s": 0,
    }
    return ApiSettings(**{**fields, **overrides})
