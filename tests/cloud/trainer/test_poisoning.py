"""Limits against poisoning, through the real trainer: a flooding device's excess waits for a
later round, a label-flipping device is quarantined (honest and honest-but-noisy ones are
not), the fleet view shows it, and a release queues its feedback for training."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.trainer.loop import Trainer
from tests.cloud.api_helpers import bearer, dev_api_settings, issue
from tests.cloud.conftest import FAST_TRAINER, FLEET

FAST = {k: v for k, v in FAST_TRAINER.items() if k != "lock_ttl_ms"}


def feed(trainer: Trainer, events, device: str, X, y, start: int = 0) -> None:
    payloads = [events.wire(device, start + i, X[i], int(y[i])) for i in range(len(y))]
    events.send(trainer.client, trainer.keys.feedback_of("digits"), payloads)
    for _ in range(100):
        if trainer.step(block_ms=10).entries == 0:
            break


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 30 s alone; a loaded shared machine takes several times that
def test_share_cap_quarantine_and_release_through_the_trainer(
    make_settings, digits, parts, events, redis_url, tmp_path
):
    trainer = Trainer(
        # rounds here are about the data they admit: short, and exported in full (no
        # budgeted refits)
        make_settings(
            **{**FAST, "epochs": 2},
            lock_ttl_ms=120_000,
            quarantine_min_samples=60,
            update_mode="full",
            device_share_floor=100,  # the cap, not the floor, decides what pi-0 adds
        ),
        dataset=digits,
        background_rounds=False,
    )
    trainer.start()  # v1
    X, y = parts.stream.X, parts.stream.y
    rng = np.random.default_rng(1)
    noisy = np.where(rng.random(len(y)) < 0.2, rng.integers(0, 10, len(y)), y)
    feed(trainer, events, "pi-0", X[:600], y[:600])  # honest, and floods
    feed(trainer, events, "pi-1", X[600:720], y[600:720])
    feed(trainer, events, "pi-2", X[720:840], y[720:840])
    feed(trainer, events, "pi-noisy", X[:200], noisy[:200])  # honest, a sloppy labeler
    feed(trainer, events, "pi-flip", X[200:400], (y[200:400] + 1) % 10)  # label flipping

    members = trainer.quarantine.members()
    assert list(members) == ["pi-flip"], trainer.quarantine.checks()
    record = members["pi-flip"]
    assert record.rate > 0.8 and record.fleet_rate < 0.2 and record.p_value < 1e-6
    # Its waiting training samples were set aside with the verdict (its held-out ones stay
    # in the gate's data, at weight 0); all it sends afterwards is kept aside at once.
    before = trainer.quarantine.kept("pi-flip")
    assert 140 <= before < 200 and "pi-flip" not in trainer.data.pending_counts()
    feed(trainer, events, "pi-flip", X[400:450], (y[400:450] + 1) % 10, start=200)
    kept = trainer.quarantine.kept("pi-flip")
    assert kept == before + 50
    held_out = trainer.rounds._held_out()
    _, recent_devices = trainer.data.tagged_recent_set()
    flipped = [i for i, d in enumerate(recent_devices) if d == "pi-flip"]
    assert flipped and (held_out.recent_weights[flipped] == 0).all()

    # Round 1: pi-0's share is capped, the quarantined device's data is not there at all.
    replay_before = sum(trainer.data.read_counters(trainer.client).replay)
    first = trainer.rounds.run(1, "count", {}, lambda: True)
    admission = first.data_window["admission"]
    per_device = admission["admitted_per_device"]
    assert "pi-flip" not in per_device and set(per_device) == {"pi-0", "pi-1", "pi-2", "pi-noisy"}
    assert per_device["pi-0"] <= 0.5 * admission["admitted"] + 1e-9
    held = admission["held_back_per_device"]
    assert set(held) == {"pi-0"} and trainer.data.pending_counts() == held

    # The fleet view shows the quarantine; an admin releases it (the CLI's side:
    # tests/cloud/cli/test_quarantine_cli.py).
    settings = dev_api_settings(FLEET, redis_url, tmp_path)
    client = trainer.client
    with TestClient(create_app(settings)) as api:
        viewer = bearer(issue(client, FLEET, "viewer"))
        admin = bearer(issue(client, FLEET, "admin"))
        fleet = api.get("/v1/fleet", headers=viewer).json()
        assert [(q["device_id"], q["model"], q["kept"]) for q in fleet["quarantined"]] == [
            ("pi-flip", "digits", kept)
        ]
        assert api.post("/v1/quarantine/pi-flip/release", headers=viewer).status_code == 403
        assert api.post("/v1/quarantine/pi-0/release", headers=admin).status_code == 404
        released = api.post("/v1/quarantine/pi-flip/release", headers=admin).json()
    assert released == {"device_id": "pi-flip", "models": ["digits"], "requeued": kept}
    assert trainer.quarantine.members() == {}
    assert trainer.data.pending_counts()["pi-flip"] == kept

    # Round 2: the others contributed; the backlog is admitted, each sample once.
    feed(trainer, events, "pi-1", X[840:1040], y[840:1040], start=120)
    feed(trainer, events, "pi-2", X[1040:1240], y[1040:1240], start=120)
    second = trainer.rounds.run(2, "count", {}, lambda: True)
    admitted = second.data_window["admission"]["admitted_per_device"]
    assert admitted["pi-0"] == held["pi-0"]
    replay_after = sum(trainer.data.read_counters(trainer.client).replay)
    total = admission["admitted"] + second.data_window["admission"]["admitted"]
    assert replay_after - replay_before == total  # the reservoir saw each admitted sample once
    trainer.close()


def test_a_lone_device_is_admitted_as_fast_as_it_starts_rounds(make_settings):
    """The floor defaults to one round's worth: with a single device (one edge; the cap
    alone admits nothing) its backlog does not grow round after round."""
    assert make_settings(round_min_samples=150).device_share_floor == 150
    assert make_settings(round_min_samples=150, device_share_floor=40).device_share_floor == 40
