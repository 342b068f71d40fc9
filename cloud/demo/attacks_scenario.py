"""``edgeloop demo --scenario attacks``: the attacks of issue 11 against a live fleet.

The fleet runs with the whole trust chain: a TUF repository made by the key
ceremony (``init_fleet``: offline root keys, the trainer's targets key, the online
key, the director key in the root), a trainer that publishes into TUF with
``release = manual``, the rollout controller (``edgeloop controller``) holding the
director key, and three edges, each enrolled (its own Redis user and device key)
and trusting the fleet's root; the third reaches Redis through a proxy that the
slow-retrieval attack stalls. The operator signs one director order: that version
is the only one any edge may serve. Sensor apps keep predicting and labeling
through every attack (the trainer ingests their feedback), and then each attack of
``cloud.demo.attacks`` runs in turn.

The result (``--json``'s last line): ``attacks`` (name, stopped, detail),
``stopped`` (how many were), ``all_stopped``, ``served_unauthorized`` (answers the
apps got from a version other than the ordered one, plus any edge seen serving
one: must be 0) and ``feedback_lost`` (the apps' labels the trainer neither took
nor dead-lettered: must be 0).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cloud.demo.attacks import ATTACKS, AttackFleet, AttackResult, run_attack
from cloud.demo.runner import FLEET, Demo, run_to_end
from cloud.demo.services import python_module, start_redis
from cloud.demo.stall_proxy import StallProxy
from cloud.demo.view import edges_table
from cloud.registry.blobs import DirBlobStore
from cloud.registry.devices import Credentials, DeviceRegistry
from cloud.registry.tuf_keys import KeyDir, init_fleet
from cloud.registry.versions import Registry
from cloud.rollout.director import Director
from shared.messages import TrainerStatus
from shared.signing import Signer, write_keypair

logger = logging.getLogger(__name__)

#: Seconds an edge waits for one download before abandoning it (slow retrieval).
DOWNLOAD_DEADLINE_S = 3.0


class AttacksDemo(Demo):
    def start(self) -> None:
        redis_url = start_redis(self.group)
        self.redis_url = redis_url
        self.connect_redis(redis_url)
        assert self.redis is not None
        self.keydir = KeyDir(self.workdir / "tuf")
        init_fleet(self.redis, self.keys, self.keydir)
        self.private_key, self.public_key = write_keypair(self.workdir / "keys")
        # The trainer publishes into TUF with its targets key and decides nothing of what
        # devices serve; its own rounds are off so that CPU goes to the fleet and attacks.
        self._start_trainer(
            redis_url,
            self.private_key,
            tuf_targets_key=str(self.keydir.file("targets")),
            release="manual",
            round_min_samples=10**9,
            round_interval_s=10**6,
        )
        self._start_controller(redis_url)
        self._wait("trainer bootstrap: first version", self._first_version, timeout=300)
        self.fleet = self._operator_orders()
        self.proxy = StallProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
        devices = DeviceRegistry(self.redis, self.keys)
        for i in range(1, self.options.edges + 1):
            device = f"edge-{i}"
            creds = devices.enroll(device)
            self.fleet.devices[device] = creds
            port = self.proxy.port if i == self.options.edges else None
            self._start_trusting_edge(device, creds, port)
        self.fleet.proxied_device = f"edge-{self.options.edges}"
        self.fleet.proxy = self.proxy
        self._wait("edges serving the ordered version", self._edges_on_order, timeout=180)

    def _start_controller(self, redis_url: str) -> None:
        config = self._config(
            "api.toml",
            {
                "mode": "development",
                "fleet": FLEET,
                "redis_url": redis_url,
                "blob_dir": str(self.workdir / "blobs"),
                "public_key": str(self.public_key),
                "director_key": str(self.keydir.file("director")),
                "director_state": str(self.workdir / "director.state"),
                "controller_interval_s": 1.0,
            },
        )
        self.group.spawn(
            "controller",
            python_module("cloud.cli.main", "controller", "--config", str(config)),
        )

    def _operator_orders(self) -> AttackFleet:
        """Make the trainer's version visible (the online key re-signs), publish a second
        one with the trainer's keys, and order the first, then the second: the edges
        serve the second, and the first order is what a replay would put back."""
        assert self.redis is not None
        registry = Registry(self.redis, self.keys, DirBlobStore(self.workdir / "blobs"))
        first = registry.latest(self.model)
        assert first is not None  # the caller waited for the trainer's first version
        fleet = AttackFleet(
            client=self.redis,
            keys=self.keys,
            model=self.model,
            keydir=self.keydir,
            manifest_signer=Signer.from_file(self.private_key),
            registry=registry,
            redis_url=self.redis_url,
            authorized=first.sha256,
            health=self.edge_health,
            devices={},
            workdir=self.workdir,
        )
        fleet.online().refresh()
        request, _ = fleet.next_variant()
        second = fleet.trainer_publisher().publish(request)
        director = Director(self.redis, self.keys, Signer.from_file(self.keydir.file("director")))
        director.order(self.model, first.sha256)
        fleet.old_order = self.redis.hget(self.keys.director(self.model), "fleet")  # type: ignore[assignment]
        fleet.old_sha = first.sha256
        director.order(self.model, second.sha256)
        fleet.authorized = second.sha256
        self.authorized_version = second.version
        return fleet

    def _start_trusting_edge(self, device: str, creds: Credentials, port: int | None) -> None:
        key = self.workdir / f"{device}.key"
        key.write_bytes(creds.private_key)
        key.chmod(0o600)
        host = f"127.0.0.1:{port}" if port else self.redis_url.split("//", 1)[1].split("/")[0]
        url = f"redis://{creds.acl_user}:{creds.password}@{host}/0"
        self._start_edge(
            device,
            url,
            self.public_key,
            tuf_root=str(self.keydir.trusted_root),
            device_key=str(key),
            download_deadline_s=DOWNLOAD_DEADLINE_S,
            desired_poll_s=1.0,
            guard_enabled=False,
        )

    def _edges_on_order(self) -> bool:
        return all(
            s is not None and s.sha256 == self.fleet.authorized for s in self.edge_health().values()
        )

    # -- the scenario -------------------------------------------------------------

    def run_scenario(self) -> dict[str, Any]:
        self.start_apps(rate_hz=10.0)
        results: list[AttackResult] = []
        with Live(self._render(results), console=self.console, refresh_per_second=2) as live:
            self._serve_for(4.0, live, results, "serving the ordered version")
            for attack in ATTACKS:
                self._check_children()
                self.headline = f"attack: {(attack.__doc__ or attack.__name__).splitlines()[0]}"
                live.update(self._render(results))
                result = run_attack(self.fleet, attack)
                results.append(result)
                logger.info("%s: %s (%s)", result.name, result.stopped, result.detail)
                live.update(self._render(results))
            self._serve_for(3.0, live, results, "serving after the attacks")
            self.stop_apps()
            self.headline = "draining feedback"
            live.update(self._render(results))
            self._drain()
        return self.scenario_result(results)

    def _serve_for(
        self, seconds: float, live: Live, results: list[AttackResult], headline: str
    ) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._check_children()
            self.headline = f"{headline} ({end - time.monotonic():.0f}s)"
            live.update(self._render(results))
            time.sleep(1.0)

    def _render(self, results: list[AttackResult] | None = None) -> Any:
        table = Table(title="attacks")
        table.add_column("attack")
        table.add_column("stopped")
        for r in results or []:
            table.add_row(r.name, "[green]yes[/]" if r.stopped else "[red]NO[/]")
        return Group(
            Panel(Text(self.headline, style="bold")),
            edges_table(self.edge_health(), self.apps),
            table,
        )

    def _drain(self, timeout: float = 60.0) -> None:
        """Wait until the trainer has settled every label the apps sent and every
        forged event the attacks wrote."""
        sent = sum(a.stats.feedback_sent for a in self.apps.values()) + self.fleet.forged_events
        self.wait_drained(sent, timeout)

    def scenario_result(self, results: list[AttackResult]) -> dict[str, Any]:
        apps = [a.stats for a in self.apps.values()]
        unauthorized = sum(
            n
            for s in apps
            for version, n in s.versions.items()
            if version is not None and version != self.authorized_version
        )
        trainer = self.trainer_status(fresh=True) or TrainerStatus(model=self.model, consumer="")
        sent = sum(s.feedback_sent for s in apps)
        # Every forged event was dead-lettered (an attack says so); the rest of the
        # settled events are the apps'.
        settled = (
            trainer.feedback_accepted + trainer.feedback_deadlettered - self.fleet.forged_events
        )
        stopped = sum(r.stopped for r in results)
        return {
            "scenario": "attacks",
            "edges": len(self.edge_urls),
            "authorized_version": self.authorized_version,
            "fleet_versions": {
                d: (s.version if s else None) for d, s in sorted(self.edge_health().items())
            },
            "predictions": sum(s.requests for s in apps),
            "failed_requests": sum(s.failed + s.feedback_failed for s in apps),
            "feedback_sent": sent,
            "feedback_trained": trainer.feedback_accepted,
            "feedback_deadlettered": trainer.feedback_deadlettered,
            "attacks": [r.as_dict() for r in results],
            "stopped": stopped,
            "all_stopped": stopped == len(results),
            "served_unauthorized": unauthorized + len(self.fleet.violations),
            "violations": self.fleet.violations[:10],
            "feedback_lost": max(0, sent - settled),
        }

    def close(self) -> None:
        if getattr(self, "proxy", None) is not None:
            self.proxy.close()
        super().close()


def summary(result: dict[str, Any]) -> Table:
    t = Table(title="edgeloop demo: attacks")
    t.add_column("attack")
    t.add_column("stopped")
    t.add_column("detail")
    for a in result["attacks"]:
        t.add_row(a["name"], "[green]yes[/]" if a["stopped"] else "[red]NO[/]", a["detail"])
    for k in ("stopped", "all_stopped", "served_unauthorized", "feedback_lost"):
        t.add_row(k, str(result[k]), "")
    return t


def run_attacks(demo: AttacksDemo) -> dict[str, Any]:
    return run_to_end(demo, demo.run_scenario, summary)


__all__ = ["AttacksDemo", "run_attacks"]
