"""Fixtures for the edge tests: signing keys, settings and daemons that stop at teardown.

Edge tests use the real redis-server (tests/conftest.py) and the real TFLite
runtime; nothing here may import torch or ``cloud``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Signing, make_settings

from edge.daemon import EdgeDaemon
from edge.settings import EdgeSettings
from shared.keys import FleetKeys

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
