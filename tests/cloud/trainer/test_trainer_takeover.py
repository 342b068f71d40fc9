"""Trainer processes share a fleet's models through the per-model lease: two models, two
trainer processes each (four processes, as on four machines), a real redis-server. The
lease holders bootstrap; each holder is then SIGKILLed, and its model is taken over by
the other process within the lease time, which trains and publishes the next round.
``pytest -s`` prints the figures. A whole measurement of its own (four trainers import
torch and two bootstrap): ``make test-benches``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from cloud.demo.fleet import toml_of
from cloud.demo.services import ProcessGroup, python_module
from shared.keys import FleetKeys
from shared.messages import TrainerStatus
from tests.cloud.conftest import EventMaker

pytestmark = [pytest.mark.bench_run, pytest.mark.timeout(600)]

FLEET = "takeover"
MODELS = ("m0", "m1")
LEASE_MS = 3000


def wait_for(what: str, ready, timeout: float, group: ProcessGroup, state=None) -> float:
    started = time.monotonic()
    while not ready():
        dead = [c for c in group.children if not c.alive() and c.proc.returncode != -9]
        assert not dead, f"{dead[0].name} exited waiting for {what}:\n{dead[0].tail()}"
        assert time.monotonic() - started < timeout, (
            f"timed out waiting for {what}: {state() if state else ''}\n"
            + "\n".join(f"{c.name}: {c.tail(5)}" for c in group.children)
        )
        time.sleep(0.1)
    return time.monotonic() - started


def text(raw: bytes | None) -> str | None:
    return raw.decode() if raw is not None else None


def test_a_dead_trainers_models_are_taken_over_within_the_lease(
    redis_url: str, redis_client: redis.Redis, signing_dir: Path, tmp_path: Path, digits
) -> None:
    keys = FleetKeys(FLEET)
    group = ProcessGroup(tmp_path)
    pids: dict[str, int] = {}
    try:
        for model in MODELS:
            for side in "ab":
                consumer = f"{model}-{side}"
                config = tmp_path / f"{consumer}.toml"
                config.write_text(
                    toml_of(
                        {
                            "mode": "development",
                            "fleet": FLEET,
                            "model": "digits",
                            "model_name": model,
                            "redis_url": redis_url,
                            "signing_key": str(signing_dir / "signing.key"),
                            "consumer": consumer,
                            "dataset": "digits",
                            "blob_dir": str(tmp_path / "blobs"),
                            "release": "direct",
                            "lock_ttl_ms": LEASE_MS,
                            "status_interval_s": 0.5,
                            "bootstrap_epochs": 2,
                            "epochs": 1,
                            "round_min_samples": 60,
                            "round_interval_s": 3600.0,
                            "min_gain": -1.0,
                            "forgetting_tolerance": 1.0,
                            "max_device_share": 1.0,
                        }
                    )
                )
                child = group.spawn(
                    consumer, python_module("cloud.cli.main", "trainer", "--config", str(config))
                )
                pids[consumer] = child.proc.pid

        def versions(model: str) -> int:
            return int(redis_client.zcard(keys.versions(model)))

        boot_s = wait_for("the v1s", lambda: all(versions(m) >= 1 for m in MODELS), 400, group)
        holders = {m: text(redis_client.get(keys.trainer_lock(m))) for m in MODELS}
        assert all(holders[m] in (f"{m}-a", f"{m}-b") for m in MODELS), holders
        for m in MODELS:  # the holder bootstrapped: it kept its lease while it did
            raw = redis_client.get(keys.trainer(m))
            assert raw is not None and TrainerStatus.from_wire(raw).consumer == holders[m]

        # each holder dies at once (as a machine would), leases unreleased
        killed_at = time.monotonic()
        for m in MODELS:
            os.kill(pids[holders[m]], signal.SIGKILL)
        others = {m: f"{m}-b" if holders[m] == f"{m}-a" else f"{m}-a" for m in MODELS}
        taken: dict[str, float] = {}

        def taken_over() -> bool:
            for m in MODELS:
                if m not in taken and text(redis_client.get(keys.trainer_lock(m))) == others[m]:
                    taken[m] = time.monotonic() - killed_at
            return len(taken) == len(MODELS)

        wait_for("the takeovers", taken_over, 30, group)
        # lease time plus the standby's next refresh (a third of it) and its poll
        assert max(taken.values()) < (LEASE_MS / 1000) * 4 / 3 + 2.0, taken

        # the new holders train the next round on new labels and publish it
        events = {m: EventMaker(model=m) for m in MODELS}
        rng = np.random.default_rng(0)
        for m in MODELS:
            rows = rng.choice(len(digits.y), 240, replace=False)  # a fifth held out: 48
            events[m].send(
                redis_client,
                keys.feedback_of(m),
                events[m].many(digits.X[rows], digits.y[rows], devices=3),
            )

        def state() -> str:
            return repr(
                {
                    m: (
                        redis_client.get(keys.trainer(m)),
                        redis_client.xinfo_groups(keys.feedback_of(m)),
                        redis_client.xlen(keys.deadletter),
                    )
                    for m in MODELS
                }
            )

        def rounds_by_new_holders() -> bool:
            for m in MODELS:
                raw = redis_client.get(keys.trainer(m))
                status = TrainerStatus.from_wire(raw) if raw is not None else None
                if status is None or status.consumer != others[m] or status.rounds < 1:
                    return False
            return all(versions(m) >= 2 for m in MODELS)

        round_s = wait_for("the new holders' rounds", rounds_by_new_holders, 240, group, state)
        print(
            f"\ntrainer takeover: v1s in {boot_s:.1f}s; holders {holders}; killed; taken over "
            f"in {', '.join(f'{m} {s:.2f}s' for m, s in sorted(taken.items()))} "
            f"(lease {LEASE_MS} ms); v2s by the new holders {round_s:.1f}s later"
        )
    finally:
        group.stop_all()
