"""A real edge for any test: signing keys, settings, a daemon's HTTP API on a real
socket, what the edge put on a feedback stream, and the trainer's ingest of it.

The edge tests and the conformance suite share these (the fixtures built on them
are in tests/conftest.py). Nothing here imports ``cloud`` or torch at import time:
the edge-only test run loads it; ``ingest_once`` imports the cloud when called.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from shared.config import load_settings
from shared.feedback_stream import frames_of
from shared.keys import FEEDBACK_FRAMES_FIELD, FleetKeys
from shared.signing import Signer, generate_keypair
from shared.task import TaskSpec
from shared.tensors import TensorSpec

if TYPE_CHECKING:
    import uvicorn

    from edge.daemon import EdgeDaemon
    from edge.settings import EdgeSettings

#: call(method, path, body=None, raw=None, content_type=JSON) -> (status, JSON answer)
Call = Callable[..., tuple[int, Any]]
NPY = "application/x-npy"


@dataclass
class Signing:
    """A key pair with the public half written where an edge's settings can name it."""

    signer: Signer
    public_pem: bytes
    public_key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "signing") -> Signing:
        private_pem, public_pem = generate_keypair()
        path = directory / f"{name}.pub"
        path.write_bytes(public_pem)
        return cls(Signer(private_pem), public_pem, path)


def make_settings(
    tmp_path: Path, redis_url: str, public_key: Path, **overrides: Any
) -> EdgeSettings:
    """An edge's settings for a test: quick timers, state under ``tmp_path``."""
    from edge.settings import EdgeSettings

    values: dict[str, Any] = {
        "device_id": "pi-1",
        "fleet": "lab",
        "redis_url": redis_url,
        "public_key": public_key,
        "state_dir": tmp_path / "state",
        "status_interval_s": 0.2,
        "status_ttl_s": 5,
        "feedback_flush_ms": 10,
        "warmup_invokes": 1,
    }
    values.update(overrides)
    return load_settings(EdgeSettings, None, **values)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class ServedApi:
    """A daemon's FastAPI app (edge/api.py) under uvicorn on a free port of 127.0.0.1,
    called through a real socket."""

    def __init__(self, daemon: EdgeDaemon) -> None:
        import uvicorn

        from edge.api import create_app

        config = uvicorn.Config(
            create_app(daemon),
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self._server: uvicorn.Server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, what="uvicorn started")
        self.port: int = self._server.servers[0].sockets[0].getsockname()[1]

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """(status, JSON answer) of one request; ``raw`` is sent as it is (an npy body)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)


def stream_frames(client: redis.Redis, stream: str) -> list[tuple[dict[str, Any], bytes]]:
    """(FeedbackEvent JSON, sample bytes) of every event of ``stream``, in stream order
    (an edge's entry holds a batch of frames)."""
    entries = client.xrange(stream)
    return [
        (json.loads(event), sample)
        for _, fields in entries
        for event, sample in frames_of(fields[FEEDBACK_FRAMES_FIELD.encode()])
    ]


def ingest_once(
    client: redis.Redis, keys: FleetKeys, model: str, input: TensorSpec, task: TaskSpec
) -> Any:
    """One poll of the trainer's own ingest (cloud/data/ingest.py) of ``model``'s feedback:
    its ``Batch`` (accepted samples and truths, dead letters). Needs the cloud."""
    from cloud.data.ingest import FeedbackIngest, IngestOptions
    from cloud.data.replay import DataOptions, TrainerData

    data = TrainerData(client, keys, DataOptions(model, input, task))
    ingest = FeedbackIngest(client, keys, data, IngestOptions(model=model, consumer=f"t-{model}"))
    ingest.ensure_group()
    return ingest.poll(block_ms=100)
