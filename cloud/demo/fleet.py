"""A private fleet on this machine, for the demo and the replay: a redis-server, one
``edgeloop trainer`` and ``edgeloop-edge`` daemons as separate processes, and the
probes that watch them (status keys in Redis, the edges' health endpoints).

``LocalFleet`` owns the work dir and every process it starts; ``close()`` stops
them and removes the work dir unless asked to keep it. Its Redis reads go through
one ``RedisWatch`` (``cloud.demo.redis_watch``): a hung or restarted redis-server
is a state the view shows, not the end of the run. A subclass says how its
trainer rounds (``trainer_settings``) and what it does with the fleet.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import redis
from rich.console import Console

from cloud.demo.redis_watch import RedisWatch
from cloud.demo.services import Child, ProcessGroup, free_port, python_module, start_redis
from cloud.demo.workload import Workload
from shared.errors import EdgeloopError, InputError, MessageError
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, TrainerStatus
from shared.redis_client import connect_redis
from shared.signing import write_keypair

logger = logging.getLogger(__name__)

FLEET = "demo"


class DemoError(EdgeloopError):
    """A part of the demo did not come up or died; the message names its log."""


def check_empty(url: str, model: str) -> None:
    """An existing Redis (the drift demo's ``--redis-url``) must not hold the demo's fleet
    already: a run on top of another's versions and feedback would measure neither."""
    keys = FleetKeys(FLEET)
    client = connect_redis(url)
    try:
        if client.exists(keys.models, keys.versions(model), keys.feedback):
            raise InputError(
                f"the Redis at --redis-url already holds fleet {FLEET!r} (versions or feedback "
                "of an earlier run): give an empty database, or delete the fleet's keys"
            )
    finally:
        client.close()


def toml_of(values: dict[str, Any]) -> str:
    """A flat TOML document of ``values`` (None values left out).

    >>> print(toml_of({"a": 1, "b": [0.0, 0.1], "c": "x", "d": None, "e": True}), end="")
    a = 1
    b = [0.0, 0.1]
    c = "x"
    e = true
    """
    lines = []
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v}")
        elif isinstance(v, (list, tuple)):  # numbers or strings: JSON's array is TOML's
            lines.append(f"{k} = {json.dumps(list(v))}")
        else:
            lines.append(f'{k} = "{v}"')
    return "\n".join(lines) + "\n"


class LocalFleet:
    """Redis, a trainer and ``edges`` edge daemons for ``workload``, in ``workdir``."""

    #: Settings every edge of the fleet gets on top of its own (the demo's guard).
    edge_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, workdir: Path, workload: Workload, console: Console, *, edges: int, seed: int
    ) -> None:
        self.workdir = workdir
        self.workload = workload
        self.console = console
        self.edges = edges
        self.seed = seed
        self.keep = False
        self.group = ProcessGroup(workdir)
        self.model = workload.name
        self.keys = FleetKeys(FLEET)
        self.edge_urls: dict[str, str] = {}
        self.edge_children: dict[str, Child] = {}
        self.trainer_child: Child | None = None
        self.redis: redis.Redis | None = None
        self.redis_watch: RedisWatch | None = None
        #: An existing Redis to run on (the drift demo's ``--redis-url``); None: a
        #: private redis-server in the work dir.
        self.given_redis_url: str | None = None
        self._trainer_raw: bytes | str | None = None  # the trainer's last report read
        self.headline = "starting"
        # one client for the health polls: a client made per request loads the CA
        # bundle each time (a quick demo: 266 CPU-seconds with it, 252 without)
        self._http = httpx.Client(timeout=2.0)

    # -- bring-up ---------------------------------------------------------------

    def trainer_settings(self) -> dict[str, Any]:
        """When and how the trainer rounds; the subclass's choice."""
        return {}

    def _config(self, name: str, values: dict[str, Any]) -> Path:
        """Write a process's TOML config into the work dir."""
        path = self.workdir / name
        path.write_text(toml_of(values))
        return path

    def connect_redis(self, url: str) -> None:
        """The fleet's client (set-up writes) and its watch (every read while it runs)."""
        self.redis = connect_redis(url)
        self.redis_watch = RedisWatch.connect(url)

    @property
    def watch(self) -> RedisWatch:
        assert self.redis_watch is not None, "connect_redis() first"
        return self.redis_watch

    def start(self) -> None:
        redis_url = self.given_redis_url or start_redis(self.group)
        self.connect_redis(redis_url)
        private_key, public_key = write_keypair(self.workdir / "keys")
        self._start_trainer(redis_url, private_key)
        self._wait("trainer bootstrap: first version", self._first_version, timeout=600)
        for i in range(1, self.edges + 1):
            self._start_edge(f"edge-{i}", redis_url, public_key, **self.edge_overrides)
        self._wait("edges serving", self._edges_serving, timeout=120)

    def _start_trainer(self, redis_url: str, private_key: Path, **overrides: Any) -> None:
        config = self._config(
            "cloud.toml",
            {
                "mode": "development",
                "fleet": FLEET,
                "model": self.workload.model,
                "model_name": self.model,
                "redis_url": redis_url,
                "signing_key": str(private_key),
                "consumer": "trainer-1",
                "seed": self.seed,
                "dataset": self.workload.dataset_spec,
                "label_column": self.workload.label_column,
                "task": self.workload.task,
                "status_interval_s": 1.0,
                "claim_idle_ms": 5000,
                "blob_dir": str(self.workdir / "blobs"),
                **self.trainer_settings(),
                **overrides,
            },
        )
        self.trainer_child = self.group.spawn(
            "trainer",
            python_module(
                "cloud.cli.main", "--log-level", "INFO", "trainer", "--config", str(config)
            ),
        )

    def _start_edge(
        self,
        device: str,
        redis_url: str,
        public_key: Path,
        *,
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> None:
        port = free_port()
        config = self._config(
            f"{device}.toml",
            {
                "mode": "development",
                "device_id": device,
                "fleet": FLEET,
                "model": self.model,
                "redis_url": redis_url,
                "public_key": str(public_key),
                "state_dir": str(self.workdir / device),
                "http_port": port,
                "status_interval_s": 1.0,
                **overrides,
            },
        )
        self.edge_children[device] = self.group.spawn(
            device, python_module("edge.cli", "--config", str(config)), env
        )
        self.edge_urls[device] = f"http://127.0.0.1:{port}"

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        self.headline = f"waiting for {what}"
        deadline = time.monotonic() + timeout
        with self.console.status(f"waiting for {what}…") as status:
            while not ready():
                self._check_children()
                if time.monotonic() > deadline:
                    raise DemoError(f"timed out waiting for {what}; logs in {self.workdir}")
                self.watch.check(f"waiting for {what}")
                down = self.watch.state
                status.update(f"waiting for {what}…" + (f" {down}" if down else ""))
                time.sleep(0.5)

    def _check_children(self) -> None:
        for child in self.group.children:
            if not child.alive():
                raise DemoError(
                    f"{child.name} exited with code {child.proc.returncode}; last lines of "
                    f"{child.log_path}:\n{child.tail()}"
                )

    def _first_version(self) -> bool:
        key = self.keys.versions(self.model)
        return bool(self.watch.read(lambda r: r.zcard(key), 0))

    def _edges_serving(self) -> bool:
        statuses = self.edge_health()
        return all(s is not None and s.version is not None for s in statuses.values())

    # -- watching ---------------------------------------------------------------

    def edge_health(self) -> dict[str, EdgeStatus | None]:
        out: dict[str, EdgeStatus | None] = {}
        for device, url in self.edge_urls.items():
            try:
                r = self._http.get(f"{url}/v1/health")
                out[device] = (
                    EdgeStatus.model_validate_json(r.content)
                    if r.status_code in (200, 503)
                    else None
                )
            except (httpx.HTTPError, ValueError):
                out[device] = None
        return out

    def trainer_status(self, fresh: bool = False) -> TrainerStatus | None:
        """The trainer's report; while Redis does not answer, the last one read.
        ``fresh``: the current one, waiting for Redis up to the watch's patience."""
        key = self.keys.trainer(self.model)
        if fresh:
            raw = self.watch.must(lambda r: r.get(key), "the trainer's status")
        else:
            raw = self.watch.read(lambda r: r.get(key), self._trainer_raw)
        self._trainer_raw = raw
        if raw is None:
            return None
        try:
            return TrainerStatus.from_wire(raw)
        except MessageError:
            return None

    def published_versions(self) -> set[int]:
        """Every version published so far, waiting for Redis up to the watch's patience."""
        return self.watch.must(self._versions, "the published versions")

    def _versions(self, client: redis.Redis) -> set[int]:
        versions = set()
        # the index's members are sha256s, its scores the version numbers
        for pair in client.zrange(self.keys.versions(self.model), 0, -1, withscores=True):
            if not isinstance(pair, (tuple, list)):
                raise TypeError(f"expected (sha256, version) pairs, got {pair!r}")
            versions.add(int(pair[1]))
        return versions

    def wait_drained(self, sent: int, timeout: float = 60.0) -> None:
        """Wait until the trainer has taken every one of the ``sent`` feedback events.
        While Redis does not answer the trainer takes nothing and the edges spool their
        feedback, so that time does not count against ``timeout``; an outage longer
        than the watch's patience ends the wait (``RedisUnreachable``)."""
        deadline = last = time.monotonic()
        deadline += timeout
        while True:
            status = self.trainer_status()
            if status and status.feedback_accepted + status.feedback_deadlettered >= sent:
                return
            now = time.monotonic()
            down = self.watch.down_for
            if down is not None:
                self.watch.check("the feedback drained")
                deadline += now - last
            last = now
            if now >= deadline:
                logger.warning("feedback did not drain in %.0fs", timeout)
                return
            time.sleep(0.5)

    def close(self) -> None:
        self.group.stop_all()
        self._http.close()
        if self.redis is not None:
            self.redis.close()
        if self.redis_watch is not None:
            self.redis_watch.close()
        if self.keep:
            self.console.print(f"[dim]logs and state kept in {self.workdir}[/]")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
