"""The cloud a simulated fleet runs against, the run's phases and its figures
(``edgeloop simulate``; ``cloud.simulate.cli`` says what is measured)."""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import statistics
import time
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np

from cloud.demo.fleet import toml_of
from cloud.demo.services import ProcessGroup, free_port, python_module, start_redis
from cloud.simulate.devices import WorkerSpec, run_worker
from shared import replies
from shared.errors import EdgeloopError
from shared.keys import FleetKeys
from shared.messages import DeltaAnnouncement, EdgeStatus, TrainerStatus
from shared.redis_client import connect_redis
from shared.signing import write_keypair

logger = logging.getLogger(__name__)


#: The soak's warm-up, left out of its memory slope (at most half the soak): the replay
#: buffer fills, the capped streams reach their caps, the first versions' payloads pile
#: up to the number kept.
SOAK_WARMUP_MIN = 5.0


class SimulationError(EdgeloopError):
    """A part of the cloud did not come up, or the fleet did not converge in time."""


def _slope(samples: list[tuple[float, int]]) -> float:
    """Bytes a minute: the least-squares line through (monotonic s, bytes) samples."""
    if len(samples) < 2:
        return 0.0
    t = np.array([s[0] for s in samples]) / 60.0
    y = np.array([s[1] for s in samples], dtype=np.float64)
    return float(np.polyfit(t, y, 1)[0])


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def _worker(
    spec: WorkerSpec, go: Any, ready: Any, out: Any, stop: Any, soak: Any, final: Any
) -> None:
    try:
        final.put(run_worker(spec, go, ready, out, stop, soak))
    except BaseException as e:  # the coordinator must hear of it, not wait forever
        out.put({"error": f"{type(e).__name__}: {e}"})
        raise


class SimulatedFleet:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.group = ProcessGroup(workdir)
        self.fleets = [f"{args.fleet_prefix}{i}" for i in range(args.fleets)]
        self.models = [f"digits{j}" for j in range(args.models)]
        self.redis_url = ""
        self.api_url = ""
        self.token = ""

    # -- bring-up --------------------------------------------------------------

    def _start_cloud(self) -> None:
        from cloud.data.datasets import load_dataset
        from cloud.learning.zoo import default_model

        self.redis_url = self.args.redis_url or start_redis(self.group)
        self.client = connect_redis(self.redis_url)
        private, public = write_keypair(self.workdir / "keys")
        self.public_pem = public.read_bytes()
        # the demo's default workload: the digits and the zoo's model for them
        self.dataset = load_dataset("digits")
        self.model_spec = default_model(self.dataset)
        events = self.args.devices * self.args.events // (len(self.fleets) * len(self.models))
        for fleet in self.fleets:
            for model in self.models:
                self._start_trainer(fleet, model, private, events)
        port = free_port()
        # one API (and one controller) for the first fleet: the figures read it
        api = self.workdir / "api.toml"
        api.write_text(
            toml_of(
                {
                    "mode": "development",
                    "fleet": self.fleets[0],
                    "redis_url": self.redis_url,
                    "public_key": str(public),
                    "blob_dir": str(self.workdir / "blobs"),
                    "port": port,
                    "controller_interval_s": 0,
                }
            )
        )
        self.api_config = api
        self.group.spawn("api", python_module("cloud.cli.main", "api", "--config", str(api)))
        self.group.spawn(
            "controller",
            python_module("cloud.cli.main", "controller", "--config", str(api), "--interval", "1"),
        )
        self.api_url = f"http://127.0.0.1:{port}"
        self._issue_token()
        self._wait("trainers' first versions", self._first_versions, 900)
        self._wait("the API", self._api_up, 60)

    def _start_trainer(self, fleet: str, model: str, private: Path, events: int) -> None:
        config = self.workdir / f"trainer-{fleet}-{model}.toml"
        config.write_text(
            toml_of(
                {
                    "mode": "development",
                    "fleet": fleet,
                    "model": self.model_spec,
                    "model_name": model,
                    "redis_url": self.redis_url,
                    "signing_key": str(private),
                    "consumer": f"trainer-{fleet}-{model}",
                    "dataset": "digits",
                    "status_interval_s": 0.5,
                    "blob_dir": str(self.workdir / "blobs"),
                    "release": "direct",
                    # one round for the fleet's feedback, and its version published
                    # whatever it scores: the fan-out is measured, not the learning
                    "round_min_samples": max(20, min(events // 4, 20_000)),
                    "round_interval_s": 3600.0,
                    "min_gain": -1.0,
                    "forgetting_tolerance": 1.0,
                    "bootstrap_epochs": 3,
                    "epochs": 1,
                    "refit_epochs": 1,
                    "max_device_share": 1.0,
                }
            )
        )
        self.group.spawn(
            f"trainer-{fleet}-{model}",
            python_module("cloud.cli.main", "trainer", "--config", str(config)),
        )

    def _issue_token(self) -> None:
        from cloud.api.settings import ApiSettings
        from cloud.api.tokens import TokenStore
        from shared.config import load_settings

        settings = load_settings(ApiSettings, self.api_config)
        store = TokenStore(self.client, FleetKeys(self.fleets[0]), settings.pepper)
        _, self.token = store.issue(f"simulate-{time.time_ns()}", "admin", never_expires=True)

    def _wait(self, what: str, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for child in self.group.children:
                if not child.alive():
                    raise SimulationError(
                        f"{child.name} exited ({child.proc.returncode}) waiting for {what}:\n"
                        f"{child.tail()}"
                    )
            if time.monotonic() > deadline:
                raise SimulationError(f"timed out waiting for {what}; logs in {self.workdir}")
            time.sleep(0.2)

    def _versions(self, fleet: str, model: str) -> int:
        return int(self.client.zcard(FleetKeys(fleet).versions(model)))

    def _first_versions(self) -> bool:
        return all(self._versions(f, m) >= 1 for f in self.fleets for m in self.models)

    def _api_up(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _trainer(self, fleet: str, model: str) -> TrainerStatus | None:
        raw = self.client.get(FleetKeys(fleet).trainer(model))
        return TrainerStatus.from_wire(raw) if raw is not None else None

    def _used_memory(self) -> int:
        if hasattr(self.client, "get_nodes"):  # a cluster: the sum over its masters
            info = self.client.info("memory", target_nodes="primaries")
            return sum(int(v["used_memory"]) for v in info.values())
        return int(self.client.info("memory")["used_memory"])

    # -- the run ---------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        t0 = time.monotonic()
        self._start_cloud()
        cloud_up_s = time.monotonic() - t0
        mem0 = self._used_memory()
        versions0 = {(f, m): self._versions(f, m) for f in self.fleets for m in self.models}
        dataset = self._dataset()
        devices = [
            (
                f"dev-{i:07d}",
                self.fleets[i % len(self.fleets)],
                self.models[(i // len(self.fleets)) % len(self.models)],
            )
            for i in range(a.devices)
        ]
        procs = min(a.processes, a.devices)
        ctx = mp.get_context("spawn")
        go, stop, soak = ctx.Event(), ctx.Event(), ctx.Event()
        ready, out, final = ctx.Queue(), ctx.Queue(), ctx.Queue()
        workers = []
        for w in range(procs):
            spec = WorkerSpec(
                redis_url=self.redis_url,
                public_key=self.public_pem,
                devices=devices[w::procs],
                events_per_device=a.events,
                batch=64,
                samples=dataset[0],
                labels=dataset[1],
                status_interval_s=10.0,
                deadline_s=a.timeout,
                want_versions=1,
            )
            p = ctx.Process(
                target=_worker, args=(spec, go, ready, out, stop, soak, final), daemon=True
            )
            p.start()
            workers.append(p)
        up = 0
        deadline = time.monotonic() + a.timeout
        while up < a.devices:
            try:
                up += ready.get(timeout=5)
            except Exception:
                if time.monotonic() > deadline or not all(p.is_alive() for p in workers):
                    raise SimulationError(f"{up} of {a.devices} devices came up") from None
        time.sleep(2.0)  # the controller (every 1 s) has folded the reports into the counts
        mem1 = self._used_memory()
        reported = int(self.client.zcard(FleetKeys(self.fleets[0]).devices))
        # feedback: every device sends; the trainers' accepted counts are sampled
        go.set()
        sent_total = a.devices * a.events
        samples: list[tuple[float, int]] = []
        results: list[dict[str, Any]] = []
        while len(results) < procs:
            accepted = self._accepted()
            samples.append((time.monotonic(), accepted))
            try:
                results.append(out.get(timeout=0.5))
            except Exception:
                if time.monotonic() > deadline + 30:
                    raise SimulationError("the devices did not finish in time") from None
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise SimulationError(f"a device process failed: {errors[0]}")
        self._wait_drained(sent_total, samples, deadline)
        mem2 = self._used_memory()
        figures = self._figures(
            results, samples, sent_total, reported, (mem0, mem1, mem2), versions0, cloud_up_s
        )
        ring = [d for d, f, m in devices if (f, m) == (self.fleets[0], self.models[0])]
        rollout = (
            self._rollout(versions0[(self.fleets[0], self.models[0])], ring) if a.rollout else {}
        )
        memory: list[tuple[float, int]] = []
        families: dict[str, tuple[int, int]] = {}
        if a.minutes > 0:
            families = self._families()
            soak.set()
            end = time.monotonic() + a.minutes * 60
            while time.monotonic() < end:
                memory.append((time.monotonic(), self._used_memory()))
                time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            memory.append((time.monotonic(), self._used_memory()))
        stop.set()
        finals: dict[str, int | None] = {}
        soak_sent = 0
        for _ in workers:
            got = final.get(timeout=120)
            if "error" in got:
                raise SimulationError(f"a device process failed: {got['error']}")
            finals.update(got.get("final_versions", {}))
            soak_sent += got["sent"]
        for p in workers:
            p.join(10)
        if a.minutes > 0:
            figures.update(self._soak(memory, soak_sent, families))
        if rollout:
            figures["rollout_whole_fleet"] = ok = rollout[
                "rollout_state"
            ] == "completed" and rollout["rollout_devices_on_target"] == rollout.pop("rollout_ring")
            figures["books_balance"] = figures["books_balance"] and ok
            figures.update(rollout)
        return figures

    def _soak(
        self, memory: list[tuple[float, int]], sent: int, before: dict[str, tuple[int, int]]
    ) -> dict[str, Any]:
        """The soak's memory: every sample, and the slope of a least-squares line through
        the samples after warm-up (the first ``SOAK_WARMUP_MIN`` minutes, at most half the
        soak), in MB (10^6 bytes) a minute, and of the same line through each minute's
        least sample (the floor, between the devices' bursts of feedback); what grew, by
        key family; and its books: every event sent, the first phase's and the soak's,
        accepted once."""
        self._wait_drained(sent, [], time.monotonic() + 60)
        accepted = self._accepted()
        warmup_min = min(SOAK_WARMUP_MIN, self.args.minutes / 2)
        t0 = memory[0][0] if memory else 0.0
        warm = [(t, m) for t, m in memory if t - t0 >= warmup_min * 60]
        slope = _slope(warm)
        # the least memory of each minute: between the devices' bursts of feedback (each
        # sends its events once a minute), what stays when what is in flight is accepted
        floors: dict[int, tuple[float, int]] = {}
        for t, m in warm:
            minute = int((t - t0) // 60)
            if minute not in floors or m < floors[minute][1]:
                floors[minute] = (t, m)
        floor_slope = _slope(sorted(floors.values()))
        after = self._families()
        grew = {
            name: {
                "keys": after.get(name, (0, 0))[0],
                "bytes": after.get(name, (0, 0))[1],
                "bytes_change": after.get(name, (0, 0))[1] - before.get(name, (0, 0))[1],
            }
            for name in sorted(set(before) | set(after))
        }
        return {
            "soak_minutes": self.args.minutes,
            "soak_warmup_minutes": warmup_min,
            "soak_memory_samples": [[round(t - t0, 1), m] for t, m in memory],
            "soak_memory_start": memory[0][1] if memory else 0,
            "soak_memory_after_warmup": warm[0][1] if warm else 0,
            "soak_memory_end": memory[-1][1] if memory else 0,
            "soak_memory_slope_bytes_per_min": round(slope),
            "soak_memory_slope_mb_per_min": round(slope / 1e6, 3),
            "soak_memory_peak": max((m for _, m in warm), default=0),
            "soak_memory_floor_first": min(floors.items())[1][1] if floors else 0,
            "soak_memory_floor_last": max(floors.items())[1][1] if floors else 0,
            "soak_memory_floor_slope_mb_per_min": round(floor_slope / 1e6, 3),
            "soak_key_families": grew,
            "soak_feedback_sent": sent,
            "soak_feedback_accepted": accepted,
            "soak_nothing_lost": accepted == sent,
        }

    def _families(self) -> dict[str, tuple[int, int]]:
        """Keys and bytes (MEMORY USAGE) by key family (``feedback``, ``device``, ``artifact``,
        ...: the part of the name after the fleet), over every key; empty on a cluster."""
        if hasattr(self.client, "get_nodes"):
            return {}
        out: dict[str, list[int]] = {}
        names = [replies.text(k) for k in self.client.scan_iter(count=1000)]
        for i in range(0, len(names), 1000):
            chunk = names[i : i + 1000]
            pipe = self.client.pipeline(transaction=False)
            for name in chunk:
                pipe.memory_usage(name, samples=0)
            for name, size in zip(chunk, pipe.execute(), strict=True):
                parts = name.split(":")
                family = parts[2] if len(parts) > 2 else name
                if family == "feedback" and len(parts) > 3:
                    family = "feedback:<model>"
                row = out.setdefault(family, [0, 0])
                row[0] += 1
                row[1] += int(size or 0)
        return {k: (v[0], v[1]) for k, v in out.items()}

    def _rollout(self, version: int, ring: list[str]) -> dict[str, Any]:
        """A staged rollout (canary 10%, half, all) of ``version`` (the one the fleet
        started on) over the first fleet's devices of its first model, through the
        API; the controller promotes each stage as its gate passes."""
        spec = {
            "model": self.models[0],
            "target": str(version),
            "gate": {"min_labeled": 0, "min_requests": 0, "min_dwell_s": 1, "min_devices": 1},
        }
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=60) as http:
            t0 = time.monotonic()
            r = http.post("/v1/rollouts", json=spec)
            if r.status_code != 201:
                raise SimulationError(f"POST /v1/rollouts: {r.status_code} {r.text[:300]}")
            rid = r.json()["id"]
            deadline = t0 + self.args.timeout
            while True:
                body = http.get(f"/v1/rollouts/{rid}").json()
                if body["state"] not in ("running", "paused", "waiting"):
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.25)
        rollout_s = time.monotonic() - t0
        # then every device's own report (its health key) says it serves the target
        on_target, until = 0, time.monotonic() + 60
        while on_target < len(ring) and time.monotonic() < until:
            on_target = self._serving(ring, body["to_version"])
            time.sleep(0.5)
        return {
            "rollout_state": body["state"],
            "rollout_s": round(rollout_s, 1),
            "rollout_stages": len(body.get("stages", [])),
            "rollout_devices_on_target": on_target,
            "rollout_ring": len(ring),
        }

    def _serving(self, devices: list[str], version: int) -> int:
        keys = FleetKeys(self.fleets[0])
        n = 0
        for i in range(0, len(devices), 1000):
            raws = self.client.mget([keys.device(d) for d in devices[i : i + 1000]])
            n += sum(1 for raw in raws if raw and EdgeStatus.from_wire(raw).version == version)
        return n

    def _dataset(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.dataset
        return np.asarray(d.X[:500], dtype=np.float32), np.asarray(d.y[:500])

    def _accepted(self) -> int:
        total = 0
        for f in self.fleets:
            for m in self.models:
                s = self._trainer(f, m)
                total += (s.feedback_accepted + s.feedback_deadlettered) if s else 0
        return total

    def _wait_drained(self, sent: int, samples: list[tuple[float, int]], deadline: float) -> None:
        while (n := self._accepted()) < sent and time.monotonic() < deadline + 60:
            samples.append((time.monotonic(), n))
            time.sleep(0.25)
        samples.append((time.monotonic(), self._accepted()))

    # -- figures ---------------------------------------------------------------

    def _fanout(self, results: list[dict[str, Any]]) -> tuple[float, float, int]:
        """Seconds from the first new version's announcement until 50% and 99% of the
        devices served it (or a newer one), and how many did."""
        published: dict[tuple[str, int], float] = {}
        for fleet in self.fleets:
            for entry_id, fields in self._deltas(fleet):
                ann = DeltaAnnouncement.from_wire(fields[b"data"])
                ms = int(entry_id.split(b"-")[0])
                published.setdefault((fleet, ann.version), ms / 1000)
                published.setdefault((fleet, -1), ms / 1000)
        delays = []
        fleet_of = {}
        for r in results:
            for device, start in r["start_versions"].items():
                fleet_of[device] = (start, r)
        firsts: dict[str, float] = {}
        for r in results:
            for device, _v, t in r["served_at"]:
                firsts[device] = min(firsts.get(device, t), t)
        for device, t in firsts.items():
            fleet = self.fleets[int(device.split("-")[1]) % len(self.fleets)]
            start = fleet_of[device][0]
            pub = published.get((fleet, start + 1))
            if pub is not None:
                delays.append(max(0.0, t - pub))
        return _p(delays, 0.5), _p(delays, 0.99), len(delays)

    def _deltas(self, fleet: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        return cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(FleetKeys(fleet).deltas)
        )

    def _http_p99(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=60) as http:
            http.get("/v1/fleet").raise_for_status()  # the connection, not a read, is timed first
            fleet_ms = []
            for _ in range(50):
                t = time.perf_counter()
                r = http.get("/v1/fleet")
                fleet_ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
            page_ms, listed, cursor = [], 0, ""
            while True:
                t = time.perf_counter()
                r = http.get("/v1/devices", params={"cursor": cursor, "limit": 500})
                page_ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                body = r.json()
                listed += len(body["devices"])
                cursor = body.get("next_cursor") or ""
                if not cursor:
                    break
            fleet_body = http.get("/v1/fleet").json()
        return {
            "fleet_p99_ms": round(_p(fleet_ms, 0.99), 1),
            "fleet_p50_ms": round(_p(fleet_ms, 0.5), 1),
            "devices_page_p99_ms": round(_p(page_ms, 0.99), 1),
            "devices_pages": len(page_ms),
            "devices_listed": listed,
            "fleet_view": fleet_body,
        }

    def _controller_step_ms(self) -> float:
        """The controller's step (every rollout, then the counts' catch-up), timed on the
        same Redis as the running controller steps it."""
        from cloud.registry.blobs import DirBlobStore
        from cloud.registry.fleet_counts import FleetCounts
        from cloud.registry.versions import Registry
        from cloud.rollout.controller import RolloutController

        keys = FleetKeys(self.fleets[0])
        controller = RolloutController(
            self.client, keys, Registry(self.client, keys, DirBlobStore(self.workdir / "blobs"))
        )
        counts = FleetCounts(self.client, keys)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            controller.step()
            counts.catch_up()
            times.append((time.perf_counter() - t) * 1000)
        return round(_p(times, 0.99), 1)

    def _version_bytes(self) -> float:
        """Redis bytes of one published version: its manifest, full file and patches
        (MEMORY USAGE of each key its announcement names), averaged over the versions."""
        sizes = []
        for fleet in self.fleets:
            for _, fields in self._deltas(fleet):
                ann = DeltaAnnouncement.from_wire(fields[b"data"])
                named = [ann.manifest_key, *(p.key for p in ann.payloads)]
                if not self.client.exists(ann.full_payload().key):
                    continue  # a version collected since (cloud/registry/collect.py)
                sizes.append(sum(int(self.client.memory_usage(k) or 0) for k in named))
        return round(statistics.mean(sizes)) if sizes else 0.0

    def _figures(
        self,
        results: list[dict[str, Any]],
        samples: list[tuple[float, int]],
        sent: int,
        reported: int,
        mem: tuple[int, int, int],
        versions0: dict[tuple[str, str], int],
        cloud_up_s: float,
    ) -> dict[str, Any]:
        a = self.args
        p50, p99, served = self._fanout(results)
        # from the last time nothing was accepted yet (a lower bound on the rate)
        first = max((t for t, n in samples if n == 0), default=None)
        last = next((t for t, n in samples if n >= sent), samples[-1][0])
        accepted = self._accepted()
        rate = accepted / (last - first) if first is not None and last > first else 0.0
        http = self._http_p99()
        per_fleet = a.devices // len(self.fleets) + (1 if a.devices % len(self.fleets) else 0)
        on_new = sum(
            1
            for r in results
            for d, v in r["final_versions"].items()
            if v is not None and v > r["start_versions"][d]
        )
        new_versions = sum(
            self._versions(f, m) - versions0[(f, m)] for f in self.fleets for m in self.models
        )
        counted = http["fleet_view"].get("devices", http["devices_listed"])
        books = {
            "every_device_reported": reported >= per_fleet - 1 and http["devices_listed"] >= 1,
            "every_event_accepted_once": accepted == sent,
            "every_device_on_new_version": on_new == a.devices,
        }
        return {
            "devices": a.devices,
            "fleets": len(self.fleets),
            "models": len(self.models),
            "processes": min(a.processes, a.devices),
            "cloud_up_s": round(cloud_up_s, 1),
            "fanout_p50_s": round(p50, 2),
            "fanout_p99_s": round(p99, 2),
            "devices_on_new_version": on_new,
            "new_versions_published": new_versions,
            "patch_downloads": sum(r["patches"] for r in results),
            "full_downloads": sum(r["full"] for r in results),
            "refused_downloads": sum(r["refused"] for r in results),
            "redis_bytes_per_device": round((mem[1] - mem[0]) / a.devices),
            "redis_bytes_per_version": self._version_bytes(),
            "redis_used_memory_end": mem[2],
            "feedback_sent": sent,
            "feedback_accepted": accepted,
            "feedback_events_per_s": round(rate),
            "controller_step_p99_ms": self._controller_step_ms(),
            "get_fleet_p99_ms": http["fleet_p99_ms"],
            "get_fleet_p50_ms": http["fleet_p50_ms"],
            "get_devices_page_p99_ms": http["devices_page_p99_ms"],
            "devices_pages": http["devices_pages"],
            "devices_listed_fleet0": http["devices_listed"],
            "devices_reported_fleet0": reported,
            "devices_counted_fleet0": counted,
            "fanout_served": served,
            **books,
            "books_balance": all(books.values()),
        }

    def close(self) -> None:
        self.group.stop_all()
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
