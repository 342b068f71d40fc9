"""``edgeloop demo --scenario chaos``: the drift demo while a seeded fault schedule runs.

The fleet is the demo's (redis-server with AOF, the trainer, three edges and their
sensor apps) plus the cloud REST API (``edgeloop api``) and the rollout controller
(``edgeloop controller``), so that every long-running process can be killed. The
last edge reaches Redis through a proxy the scenario can cut (``StallProxy``), its
state directory is a small tmpfs the scenario can fill, and the edge before it runs
on a wall clock the scenario can step (``clock.py``). The schedule
(``schedule.draw``) comes from ``--seed``; ``faults.py`` causes each fault.

The scenario's process group is the supervisor: a process that dies, killed or
exiting on its own, is started again as it was started (same config, port and
state) and counted in ``restarts``.

The result (``--json``'s last line) adds to the demo's figures: ``faults`` (kind,
target, time, what happened), ``restarts``, and the accounting by event id:
``feedback_sent`` (truths an edge accepted, 202, each with its event id),
``feedback_trained`` (the trainer's accepted count, kept in Redis across its
restarts), ``feedback_lost`` (ids the apps were given that never reached the feedback
stream, plus ids in the stream the trainer neither trained nor dead-lettered; the
scenario's trainer keeps its stream untrimmed so that every id can be read back),
``duplicates_trained`` (trained beyond the distinct ids in the stream: an event
trained twice), ``failed_requests`` (requests and truths an edge took and did not
answer well; ``requests_refused`` are those whose connection no edge accepted, its
process being down, and ``requests_cut_by_kill`` those an edge's death cut: at most
two per edge kill, the app's request in flight and one it sends on the dead
keep-alive connection before it notices), ``unverified_served`` (answers from a version not in the
signed registry), ``edges_converged`` (every edge on the fleet's target at the end).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, cast

import httpx
import redis
from rich.table import Table

from cloud.demo.apps import failed_requests
from cloud.demo.chaos import clock
from cloud.demo.chaos.disks import mount_tmpfs, unmount
from cloud.demo.chaos.faults import Targets, inject
from cloud.demo.chaos.schedule import Fault, draw
from cloud.demo.fleet import FLEET, DemoError
from cloud.demo.runner import DEMO_GUARD, Demo, run_to_end
from cloud.demo.services import Child, free_port, python_module, start_redis
from cloud.demo.stall_proxy import StallProxy
from shared import replies
from shared.feedback_stream import events_of, frames_field, frames_of
from shared.signing import write_keypair

logger = logging.getLogger(__name__)

#: A process restarted more often than this is crash-looping: the run stops.
MAX_RESTARTS = 12
#: The size of the tmpfs the disk-full edge keeps its state in.
DISK_BYTES = 24 * 1024 * 1024
#: The size of the tmpfs the cloud's blob directory lives on (a version is ~50 KB).
BLOB_DISK_BYTES = 16 * 1024 * 1024
#: How long the view calls a restarted process "restarting" (a trainer takes ~10 s).
RESTARTING_S = 10.0
#: How long the end of the run waits for every edge to serve the fleet's target.
CONVERGE_S = 90.0

PROCESSES = ("redis", "trainer", "api", "controller")


class ChaosDemo(Demo):
    #: ``kept``: an edge answers a truth once it is in Redis or its spool, so that a
    #: kill -9 loses none it answered; the sender then waits 5 ms for a batch, not 50.
    edge_overrides: ClassVar[dict[str, Any]] = {
        **DEMO_GUARD,
        "desired_poll_s": 2.0,
        "feedback_ack": "kept",
        "feedback_flush_ms": 5.0,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = draw(self.options.seed, self.options.quick, self.options.edges)
        self.restarts: Counter[str] = Counter()
        self._restarted_at: dict[str, float] = {}
        self._active: set[str] = set()
        self.fault_log: list[dict[str, Any]] = []
        self.crash_loop: str | None = None
        self.proxy: StallProxy | None = None
        self.disks: dict[str, Path] = {}
        self.clock_file: Path | None = None
        self.api_url = ""
        self.api_probes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._faults_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0

    # -- bring-up ---------------------------------------------------------------

    def start(self) -> None:
        redis_url = start_redis(self.group)
        self.connect_redis(redis_url)
        private_key, public_key = write_keypair(self.workdir / "keys")
        blobs = self._mount_tmpfs(self.workdir / "blobs", BLOB_DISK_BYTES)
        if blobs:
            self.disks["blobs"] = blobs
        # The books count every event id in the feedback stream: the trainer keeps the
        # stream whole (no trim of accepted entries) for this run's accounting.
        self._start_trainer(redis_url, private_key, release="direct", feedback_trim_interval_s=-1.0)
        self._start_api_and_controller(redis_url, public_key)
        self._wait("trainer bootstrap: first version", self._first_version, timeout=600)
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        cut_edge = next(f.target for f in self.plan if f.kind == "cut")
        clock_edge = next(f.target for f in self.plan if f.kind == "clock-step")
        self.proxy = StallProxy(port)
        disk = self._mount_tmpfs(self.workdir / cut_edge, DISK_BYTES)
        if disk:
            self.disks[cut_edge] = disk
        shim = clock.build(self.workdir)
        self.clock_file = self.workdir / "clock-offset" if shim else None
        for i in range(1, self.edges + 1):
            device = f"edge-{i}"
            url = redis_url.replace(f":{port}/", f":{self.proxy.port}/")
            env = None
            if device == clock_edge and shim and self.clock_file:
                env = clock.env_for(shim, self.clock_file)
            self._start_edge(
                device,
                url if device == cut_edge else redis_url,
                public_key,
                env=env,
                **self.edge_overrides,
            )
        self._wait("edges serving", self._edges_serving, timeout=120)
        self._spawn_thread("supervisor", self._supervise)

    def _start_api_and_controller(self, redis_url: str, public_key: Path) -> None:
        api_port = free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        base = {
            "mode": "development",
            "fleet": FLEET,
            "redis_url": redis_url,
            "blob_dir": str(self.workdir / "blobs"),
            "public_key": str(public_key),
            "port": api_port,
        }
        api = self._config("api.toml", {**base, "controller_interval_s": 0})
        controller = self._config("controller.toml", {**base, "controller_interval_s": 1.0})
        self.group.spawn("api", python_module("cloud.cli.main", "api", "--config", str(api)))
        self.group.spawn(
            "controller",
            python_module("cloud.cli.main", "controller", "--config", str(controller)),
        )

    def _mount_tmpfs(self, path: Path, size: int) -> Path | None:
        refused = mount_tmpfs(path, size)
        if refused is not None:
            logger.warning("no tmpfs for %s (%s): disk-full is skipped", path, refused)
            return None
        return path

    # -- the supervisor -------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stop.is_set():
            for child in list(self.group.children):
                if child.alive() or self._stop.is_set():
                    continue
                code = child.proc.returncode
                if self.restarts[child.name] >= MAX_RESTARTS:
                    self.crash_loop = f"{child.name} exited {MAX_RESTARTS + 1} times"
                    continue
                logger.warning("%s exited with code %s: restarting it", child.name, code)
                self.restarts[child.name] += 1
                self._restarted_at[child.name] = time.monotonic()
                self.group.respawn(child)
            self._stop.wait(0.25)

    def _check_children(self) -> None:
        if self.crash_loop:
            raise DemoError(f"{self.crash_loop}; logs in {self.workdir}")

    def _child(self, name: str) -> Child:
        return next(c for c in self.group.children if c.name == name)

    # -- the faults ---------------------------------------------------------------

    def start_apps(self, rate_hz: float) -> None:
        super().start_apps(rate_hz)
        self._t0 = time.monotonic()
        self._spawn_thread("faults", self._run_schedule)

    def _run_schedule(self) -> None:
        targets = Targets(
            child=self._child,
            blob_dir=self.workdir / "blobs",
            target_sha=self._target_sha,
            proxy=self.proxy,
            clock_file=self.clock_file,
            disks=self.disks,
        )
        running = []
        for fault in self.plan:
            wait = self._t0 + fault.at - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            t = threading.Thread(target=self._one, args=(fault, targets), daemon=True)
            t.start()
            running.append(t)
        for t in running:
            t.join()
        self._faults_done.set()

    def _one(self, fault: Fault, targets: Targets) -> None:
        started = time.monotonic() - self._t0
        name = f"{fault.kind} {fault.target}"
        self._active.add(name)
        try:
            what = inject(fault, targets, self._stop.is_set)
        except Exception as e:  # a fault that could not be caused is reported, not hidden
            what = f"not caused: {type(e).__name__}: {e}"
        finally:
            self._active.discard(name)
        logger.info("fault %s on %s at %.1f s: %s", fault.kind, fault.target, started, what)
        self.fault_log.append({**fault.as_dict(), "started": round(started, 1), "what": what})

    def _target_sha(self) -> str | None:
        raw = self.watch.read(lambda r: r.get(self.keys.target(self.model)), None)
        return None if raw is None else replies.text(raw)

    def _spawn_thread(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # -- the run ----------------------------------------------------------------------

    def _settled(self) -> bool:
        return self._faults_done.is_set() and super()._settled()

    def _render(self) -> Any:
        self._probe_api()
        active = list(self._active)  # the faults under way, for the headline
        now = time.monotonic()
        restarts = ", ".join(
            f"{k} {'restarting' if now - self._restarted_at[k] < RESTARTING_S else 'restarted'}"
            f" ×{n}"
            for k, n in sorted(self.restarts.items())
        )
        headline = self.headline
        self.headline = " | ".join(
            x
            for x in (headline, "under way: " + "; ".join(active) if active else "", restarts)
            if x
        )
        try:
            return super()._render()
        finally:
            self.headline = headline

    def _probe_api(self) -> None:
        try:
            r = self._http.get(f"{self.api_url}/healthz")
            self.api_probes["ok" if r.status_code == 200 else f"http {r.status_code}"] += 1
        except httpx.HTTPError:
            self.api_probes["unreachable"] += 1

    def run_chaos(self) -> dict[str, Any]:
        self.serve_and_drift()
        self._faults_done.wait(timeout=120)
        self.headline = "waiting for every edge to serve the fleet's target"
        converged = self._wait_converged()
        return self.chaos_result(converged)

    def _wait_converged(self) -> bool:
        deadline = time.monotonic() + CONVERGE_S
        while time.monotonic() < deadline:
            if self._converged():
                return True
            self._check_children()
            time.sleep(1.0)
        return self._converged()

    def _converged(self) -> bool:
        target = self._target_sha()
        return target is not None and all(
            s is not None and s.sha256 == target for s in self.edge_health().values()
        )

    # -- the accounting -------------------------------------------------------------

    def stream_ids(self) -> Counter[str]:
        """Every event id in the model's feedback streams (a resent batch twice)."""
        ids: Counter[str] = Counter()
        for stream in (self.keys.feedback_of(self.model), self.keys.feedback):
            entries = self.watch.must(partial(_all_entries, stream=stream), "the feedback")
            for entry in entries:
                for event in _events(entry):
                    with contextlib.suppress(ValueError, AttributeError):
                        ids[str(json.loads(event)["event_id"])] += 1
        return ids

    def chaos_result(self, converged: bool) -> dict[str, Any]:
        base = self.result()
        apps = [a.stats for a in self.apps.values()]
        app_ids = [i for a in apps for i in a.event_ids]
        in_stream = self.stream_ids()
        stats = self.watch.must(
            lambda r: r.hmget(self.keys.replay(self.model), ["stat:accepted", "stat:deadlettered"]),
            "the trainer's counters",
        )
        trained, deadlettered = (int(v or 0) for v in stats)
        never_sent = set(app_ids) - set(in_stream)
        untrained = max(0, len(in_stream) - deadlettered - trained)
        published = self.published_versions()
        unverified = sum(
            n
            for a in apps
            for version, n in a.versions.items()
            if version is not None and version not in published
        )
        refused = sum(a.refused for a in apps)
        cut = sum(a.cut for a in apps)
        edge_kills = sum(
            1 for f in self.fault_log if f["kind"] == "kill" and f["target"] in self.edge_urls
        )
        edge_failed = base["failed_requests"] - failed_requests(apps)
        failed = edge_failed + failed_requests(apps) - refused - cut
        return {
            "scenario": "chaos",
            "seed": self.options.seed,
            **{k: base[k] for k in ("edges", "versions_published", "drift_phase_s", "predictions")},
            "metric_pre_drift": base.get("metric_pre_drift"),
            "metric_after_update": base.get("metric_after_update"),
            "faults": sorted(self.fault_log, key=lambda f: f["started"]),
            "feedback_sent": len(app_ids),
            "feedback_trained": trained,
            "feedback_deadlettered": deadlettered,
            "feedback_resent": sum(n - 1 for n in in_stream.values()),
            "feedback_lost": len(never_sent) + untrained,
            "feedback_never_in_stream": len(never_sent),
            "duplicates_trained": max(0, trained + deadlettered - len(in_stream)),
            "ids_reused": len(app_ids) - len(set(app_ids)),
            "failed_requests": failed,
            "requests_refused": refused,
            "requests_cut_by_kill": cut,
            "edges_converged": converged,
            "edge_versions": base["edge_versions"],
            "unverified_served": unverified,
            "restarts": {
                name: self.restarts[name] for name in (*PROCESSES, *sorted(self.edge_urls))
            },
            "api_probes": dict(self.api_probes),
            "request_errors": dict(sum((Counter(a.errors) for a in apps), Counter())),
            "done": bool(
                converged
                and not never_sent
                and not untrained
                and trained + deadlettered <= len(in_stream)
                and failed == 0
                # an app's request in flight, and one sent on its dead keep-alive
                # connection before the client notices the edge is gone
                and cut <= 2 * edge_kills
                and unverified == 0
            ),
        }

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        if self.proxy is not None:
            self.proxy.heal()
            self.proxy.close()
        try:
            self.group.stop_all()  # before the tmpfs goes: the edge on it drains first
        finally:
            for disk in self.disks.values():
                unmount(disk)
            super().close()


def _all_entries(client: redis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    out: list[dict[bytes, bytes]] = []
    start = "-"
    while True:
        batch = client.xrange(stream, start, "+", count=1000)
        if not batch:
            return out
        out.extend(cast(dict[bytes, bytes], fields) for _, fields in batch)
        start = "(" + replies.text(batch[-1][0])


def _events(fields: dict[bytes, bytes]) -> list[bytes]:
    blob = frames_field(fields)
    if blob is not None:
        return [event for event, _ in frames_of(blob)]
    return events_of(fields) or []


def summary(result: dict[str, Any]) -> Table:
    t = Table(title="edgeloop demo: chaos")
    t.add_column("fault / figure")
    t.add_column("value")
    for f in result["faults"]:
        t.add_row(f"{f['started']:>6.1f} s  {f['kind']} {f['target']}", f["what"])
    for k in (
        "feedback_sent",
        "feedback_trained",
        "feedback_lost",
        "duplicates_trained",
        "failed_requests",
        "requests_refused",
        "unverified_served",
        "edges_converged",
        "restarts",
        "done",
    ):
        t.add_row(k, str(result[k]))
    return t


def run_chaos(demo: ChaosDemo) -> dict[str, Any]:
    return run_to_end(demo, demo.run_chaos, summary)


__all__ = ["ChaosDemo", "run_chaos"]
