"""Tokens and servers for the REST API tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import uvicorn

from cloud.tokens import TokenStore
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
