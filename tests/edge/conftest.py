"""Fixtures for the edge tests: signing keys, settings and daemons that stop at teardown.

Edge tests use the real redis-server (tests/conftest.py) and the real TFLite
runtime; nothing here may import torch or ``cloud`` at import time. The tensor
models (``tensor_models``) are made by the cloud's exporter once per session, and
the tests that use them skip where torch is not installed (the edge-only run).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from helpers import Signing, make_settings, wait_for
from tensor_models import TensorModel

from edge.api import create_app
from edge.daemon import EdgeDaemon
from edge.settings import EdgeSettings
from shared.keys import FleetKeys

Factory = Callable[..., EdgeDaemon]
#: call(method, path, body=None, raw=None, content_type=JSON) -> (status, JSON answer)
Call = Callable[..., tuple[int, Any]]

# --doctest-modules would import this file as a module named "conftest", which
# collides with the other test folders' conftest.py; it has no examples anyway.
collect_ignore = ["conftest.py"]


@pytest.fixture
def signing(tmp_path: Path) -> Signing:
    return Signing.create(tmp_path)


@pytest.fixture
def keys() -> FleetKeys:
    return FleetKeys("lab")


@pytest.fixture
def settings_factory(
    tmp_path: Path, redis_url: str, signing: Signing
) -> Callable[..., EdgeSettings]:
    def make(**overrides: Any) -> EdgeSettings:
        url = overrides.pop("redis_url", redis_url)
        return make_settings(tmp_path, url, signing.public_key, **overrides)

    return make


@pytest.fixture
def daemon_factory(
    settings_factory: Callable[..., EdgeSettings],
) -> Iterator[Callable[..., EdgeDaemon]]:
    """Build (and start, unless start=False) daemons; all are stopped at teardown."""
    made: list[EdgeDaemon] = []

    def make(start: bool = True, **overrides: Any) -> EdgeDaemon:
        daemon = EdgeDaemon(settings_factory(**overrides))
        made.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in made:
        daemon.stop(timeout=2.0)


@pytest.fixture
def serve(daemon_factory: Factory) -> Iterator[Callable[[EdgeDaemon], Call]]:
    """Serve a daemon's API; returns call(method, path, body=None) -> (status, json)."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(daemon: EdgeDaemon) -> Call:
        config = uvicorn.Config(
            create_app(daemon),
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started, what="uvicorn started")
        port = server.servers[0].sockets[0].getsockname()[1]
        running.append((server, thread))

        def call(
            method: str,
            path: str,
            body: Any = None,
            raw: bytes | None = None,
            content_type: str = "application/json",
        ) -> tuple[int, Any]:
            data = (
                raw
                if raw is not None
                else (json.dumps(body).encode() if body is not None else None)
            )
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}",
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

        return call

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(5)


@pytest.fixture(scope="session")
def image_model() -> TensorModel:
    """The depthwise CNN over 32x32x3 uint8 frames, exported once per session."""
    pytest.importorskip("torch", reason="exporting a model needs torch (not in an edge install)")
    from tensor_models import image_model

    return image_model()


@pytest.fixture(scope="session")
def regression_model() -> TensorModel:
    """The regression MLP over [32, 4] float32 windows, exported once per session."""
    pytest.importorskip("torch", reason="exporting a model needs torch (not in an edge install)")
    from tensor_models import regression_model

    return regression_model()


@pytest.fixture(scope="session")
def tabular_model() -> TensorModel:
    """The MLP over 12 float32 columns (a file that can be resized to a batch)."""
    pytest.importorskip("torch", reason="exporting a model needs torch (not in an edge install)")
    from tensor_models import tabular_model

    return tabular_model()
