"""Fixtures every test may use: a real redis-server per session, flushed per test (and a
real Redis Cluster for the tests marked ``redis_cluster``, see ``redis_url``);
and a real edge: signing keys, settings, daemons that stop at teardown, and their
HTTP API on a real socket (built on tests/serving.py).

This file must import nothing from ``cloud`` or torch: the edge-only test run
(``make test-edge-only``) loads it in an environment without them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from shared.keys import FleetKeys
from shared.redis_client import connect_redis
from tests.demo_runs import DemoRuns, demo_runs_of
from tests.redis_cluster import RedisClusterNodes
from tests.redis_sentinel import RedisSentinelPair
from tests.serving import Call, ServedApi, Signing, make_settings

if TYPE_CHECKING:
    from edge.daemon import EdgeDaemon
    from edge.settings import EdgeSettings

# --doctest-modules would also import this file as a test module named "conftest",
# which clashes with a sub-folder's conftest.py loaded before it (tests/cloud sorts
# before conftest.py). It has no examples to run.
collect_ignore = ["conftest.py"]

os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One OpenMP thread for torch, here and in every process a test starts (the demos'
# trainers inherit it). The suite's models are small: two threads train them no faster
# on an idle machine, and beside the session's demos, which run their own trainers,
# each process's second OpenMP thread spins for a core it does not get, so torch work
# ran up to 40 times slower than alone (docs/ARCHITECTURE.md, "The test suite's time").
# Set before torch is first imported: OpenMP reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answering(
    client: redis.Redis,
    proc: subprocess.Popen[bytes] | None = None,
    what: str = "redis-server",
    timeout: float = 10.0,
) -> None:
    """Ping ``client`` until its redis-server answers; fail when ``proc`` (the server we
    started) exits first or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            assert proc is None or proc.poll() is None, f"{what} exited before it answered"
            assert time.monotonic() < deadline, f"{what} did not answer in {timeout:.0f} s"
            time.sleep(0.02)


class RedisServer:
    """A redis-server we start, stop and restart for real, with AOF on."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: run `make test`, which installs it")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_answering(client, self.proc)
        client.close()

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM): redis fsyncs the AOF before it exits."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, downtime: float = 0.0) -> None:
        self.stop()
        time.sleep(downtime)
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A real Redis Cluster (3 masters, 3 replicas; tests/redis_cluster.py), started once
    per session by the first test that asks for it."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelPair]:
    """A real Sentinel-managed pair (a primary, a replica, 3 sentinels;
    tests/redis_sentinel.py), started once per session by the first test that asks for
    it. A test that kills one of its nodes takes ``own_sentinel_pair``."""
    pair = RedisSentinelPair(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """A Redis Cluster of this test's own, to kill masters of."""
    cluster = RedisClusterNodes(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_sentinel_pair(tmp_path: Path) -> Iterator[RedisSentinelPair]:
    """A Sentinel-managed pair of this test's own, to kill nodes of."""
    pair = RedisSentinelPair(tmp_path / "sentinel")
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


#: What a test marked ``redis_cluster`` runs against: each of its tests runs twice.
REDIS_KINDS = ("server", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``@pytest.mark.redis_cluster`` that uses ``redis_url`` (itself or
    through a fixture) runs against the single redis-server and against the cluster."""
    if metafunc.definition.get_closest_marker("redis_cluster") is None:
        return
    if "redis_url" in metafunc.fixturenames:
        metafunc.parametrize("redis_url", REDIS_KINDS, indirect=True)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[str]:
    """A flushed database on the session's redis-server, or on the session's Redis Cluster
    (its ``redis+cluster://`` URL) for the ``cluster`` run of a test marked
    ``redis_cluster``, and for every test with ``EDGELOOP_TEST_REDIS=cluster``."""
    if getattr(request, "param", os.environ.get("EDGELOOP_TEST_REDIS", "server")) == "cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        yield cluster.url
        return
    if redis_server.proc is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of ``redis_url``: one server's or the cluster's."""
    client = connect_redis(redis_url)
    yield client
    client.close()


# -- a real edge ------------------------------------------------------------------


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
    from edge.daemon import EdgeDaemon

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
def serve(daemon_factory: Callable[..., EdgeDaemon]) -> Iterator[Callable[[EdgeDaemon], Call]]:
    """Serve a daemon's API; returns call(method, path, body=None) -> (status, json)."""
    running: list[ServedApi] = []

    def start(daemon: EdgeDaemon) -> Call:
        api = ServedApi(daemon)
        running.append(api)
        return api.call

    yield start
    for api in running:
        api.stop()


#: ``--part one`` runs the tests that check whole quick demos (their demos started with
#: the session, the tests themselves last) and the tests under these paths; ``--part
#: two`` every other test. ``make test`` runs the two parts side by side: a test that
#: waits on its processes and sockets leaves a core idle, the other part fills it.
#: Every module of a costly session fixture is in one part (``published_fleet``:
#: tests/cloud/{api,cli,evaluation,trainer}, all in part two).
PART_ONE = (
    "tests/cloud/export/",
    "tests/conformance/",
    "tests/e2e/",
    "tests/edge/",
    "tests/security/",
    "tests/shared/",
    "shared/",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--part",
        choices=("one", "two"),
        default=None,
        help="run one part of the suite (tests/conftest.py, PART_ONE); make test runs both",
    )


def _in_part_one(item: pytest.Item) -> bool:
    return item.get_closest_marker("demo_run") is not None or item.nodeid.startswith(PART_ONE)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    part = config.getoption("--part")
    if part is None:
        return
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        (kept if _in_part_one(item) == (part == "one") else deselected).append(item)
    config.hook.pytest_deselected(items=deselected)
    # the demos run beside part one's other tests; the tests that wait for them, last
    kept.sort(key=lambda item: item.get_closest_marker("demo_run") is not None)
    items[:] = kept


@pytest.fixture(scope="session", autouse=True)
def demos_from_the_start(request: pytest.FixtureRequest) -> None:
    """With ``--part one``, the session's demos start with its first test."""
    if request.config.getoption("--part") == "one" and demo_runs_of(request.session.items):
        request.getfixturevalue("demo_runs")


@pytest.fixture(scope="session")
def demo_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoRuns]:
    """Every quick demo the session's selected tests mark, started together (see
    tests/demo_runs.py)."""
    runs = DemoRuns(tmp_path_factory.mktemp("demos"), demo_runs_of(request.session.items))
    yield runs
    runs.close()


@pytest.fixture
def demo_result(request: pytest.FixtureRequest, demo_runs: DemoRuns) -> dict[str, Any]:
    """The figures of the demo this test's ``demo_run`` mark names."""
    mark = request.node.get_closest_marker("demo_run")
    assert mark is not None, "demo_result needs @pytest.mark.demo_run(NAME, prepare)"
    return demo_runs.result(mark.args[0])
