"""Fixtures for the cloud tests: trained and exported models made once per session
(training and conversion take seconds), signing keys, settings and event helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from cloud.data.datasets import Dataset, Split, load_dataset, split
from cloud.export.exporter import ExportResult, export_int8
from cloud.learning.training import Hyperparameters, TrainResult, bootstrap
from cloud.trainer.settings import TrainerSettings
from shared.keys import FleetKeys
from shared.messages import FeedbackEvent, SignedManifest, TrainerStatus
from shared.signing import write_keypair

FLEET = "test"

# --doctest-modules would import this file as a module named "conftest", which
# collides with the other test folders' conftest.py; it has no examples anyway.
collect_ignore = ["conftest.py"]


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def parts(digits: Dataset) -> Split:
    return split(digits, seed=0)


@pytest.fixture(scope="session")
def trained(parts: Split) -> TrainResult:
    """The digits CNN trained on the seed split (what a bootstrap makes)."""
    return bootstrap(parts.seed_train, Hyperparameters(epochs=20, batch_size=64, lr=1e-3, seed=0))


@pytest.fixture(scope="session")
def exported(trained: TrainResult, parts: Split) -> ExportResult:
    return export_int8(trained.model, parts.seed_train.X[:200], parts.seed_holdout.X[:32])


@pytest.fixture(scope="session")
def signing_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    write_keypair(d)
    return d


@pytest.fixture
def keys() -> FleetKeys:
    return FleetKeys(FLEET)


@pytest.fixture
def make_settings(
    redis_url: str, signing_dir: Path, tmp_path: Path
) -> Callable[..., TrainerSettings]:
    def make(**overrides: Any) -> TrainerSettings:
        base: dict[str, Any] = {
            "fleet": FLEET,
            "redis_url": redis_url,
            "signing_key": signing_dir / "signing.key",
            "consumer": "trainer-1",
            "blob_dir": tmp_path / "blobs",
            # these tests read the fleet's target after a publish (production's default
            # is manual: targets are the rollouts')
            "release": "direct",
        }
        return TrainerSettings(**{**base, **overrides})

    return make


@dataclass
class EventMaker:
    """Builds wire feedback events with idempotency ids ``<device>:<epoch>:<seq>``."""

    model: str = "digits"
    epoch: str = "e0"

    def wire(
        self, device: str, seq: int, x: Iterable[float], label: int, predicted: int | None = None
    ) -> bytes:
        return FeedbackEvent(
            event_id=f"{device}:{self.epoch}:{seq}",
            device_id=device,
            model=self.model,
            x=[float(v) for v in x],
            label=int(label),
            predicted=predicted,
        ).to_wire()

    def many(
        self,
        X: np.ndarray,
        y: np.ndarray,
        devices: int = 3,
        start: int = 0,
        predicted: np.ndarray | None = None,
    ) -> list[bytes]:
        out = []
        for i in range(len(y)):
            p = None if predicted is None else int(predicted[i])
            out.append(self.wire(f"pi-{i % devices}", start + i // devices, X[i], int(y[i]), p))
        return out

    @staticmethod
    def send(client: redis.Redis, stream: str, payloads: Iterable[bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        for p in payloads:
            pipe.xadd(stream, {"data": p})
        pipe.execute()


@pytest.fixture
def events() -> EventMaker:
    return EventMaker()


# -- a fleet with published versions, made once ---------------------------------

#: Trainer settings that make a bootstrap and one drift round in a few seconds.
# (the long lease: a round on a busy machine must not lose it before it publishes)
FAST_TRAINER = {
    "bootstrap_epochs": 20,
    "epochs": 8,
    "round_min_samples": 10_000,
    "round_interval_s": 3600,
    "drift_window": 40,
    "drift_drop": 0.25,
    "gate_min_recent": 20,
    "status_interval_s": 0.2,
    "block_ms": 10,
    "replay_capacity": 1000,
    "recent_train": 400,
    "lock_ttl_ms": 300_000,
    "release": "direct",  # a published version is the fleet's target at once
}


@dataclass(frozen=True)
class DriftRun:
    """What the trainer said while ``published_fleet`` was made, as it said it:
    ``tests/cloud/trainer/test_trainer.py`` checks the drift round by these."""

    quiet: tuple[int, Any]  # (rounds, trigger due) after the 300 truths before the drift
    rounds: int  # rounds after the 600 rotated ones
    last_round: dict[str, Any]
    status: TrainerStatus  # the status key in Redis at that moment
    latest: tuple[int, str, SignedManifest]
    contents: list[bytes]  # the model files, by version


@dataclass(frozen=True)
class PublishedFleet:
    """The Redis keys of a fleet after a bootstrap (v1) and a drift round (v2, rotated digits)."""

    dump: dict[bytes, bytes]
    shas: list[str]  # by version, v1 first
    blob_dir: Path  # the registry's files
    run: DriftRun

    def restore(self, client: redis.Redis) -> None:
        pipe = client.pipeline(transaction=False)
        for key, value in self.dump.items():
            pipe.restore(key, 0, value, replace=True)
        pipe.execute()


@pytest.fixture(scope="session")
def published_fleet(
    redis_server: Any,
    digits: Dataset,
    parts: Split,
    signing_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> PublishedFleet:
    """Run a real trainer once per session: v1 by bootstrap, v2 by a drift round.

    Tests get the keys restored into their flushed database (``fleet_client``); what the
    trainer said on the way is in ``run`` (the trainer tests' drift round is this one).
    """
    from cloud.data.datasets import drift
    from cloud.trainer.loop import Trainer
    from shared.runtime import TFLiteModel

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    blob_dir = tmp_path_factory.mktemp("fleet-blobs")
    settings = TrainerSettings(
        fleet=FLEET,
        redis_url=redis_server.url,
        consumer="trainer-1",
        signing_key=signing_dir / "signing.key",
        blob_dir=blob_dir,
        **FAST_TRAINER,
    )
    trainer = Trainer(settings, dataset=digits, background_rounds=False)
    trainer.start()
    v1 = TFLiteModel(trainer.publisher.content(trainer.publisher.latest("digits")[1]))
    X, y = parts.stream.X, parts.stream.y
    Xd = np.concatenate([X[:300], drift("digits")(X[300:900])])
    sender = EventMaker()
    quiet: tuple[int, Any] = (-1, None)
    for lo, hi, start in ((0, 300, 0), (300, 900, 100)):
        sender.send(
            client,
            trainer.keys.feedback,
            sender.many(
                Xd[lo:hi],
                y[lo:hi],
                start=start,
                predicted=v1.predict_proba_batch(Xd[lo:hi]).argmax(1),
            ),
        )
        # every truth is taken (a round runs inside a step): the drift round's test
        # counts them all and asserts that exactly one round ran
        for _ in range(50):
            if trainer.step(block_ms=10).entries == 0:
                break
        if lo == 0:
            quiet = (trainer.status.rounds, trainer.trigger.due())
    latest = trainer.publisher.latest("digits")
    assert latest is not None
    run = DriftRun(
        quiet=quiet,
        rounds=trainer.status.rounds,
        last_round=trainer.status.last_round,
        status=TrainerStatus.from_wire(client.get(trainer.keys.trainer("digits"))),
        latest=latest,
        contents=[
            trainer.publisher.content(sha) for _, sha in trainer.publisher.versions("digits")
        ],
    )
    trainer.close()
    shas = [sha for _, sha in trainer.publisher.versions("digits")]
    assert len(shas) == 2, trainer.status.last_round
    dump = {key: client.dump(key) for key in client.keys("*")}
    client.flushall()
    client.close()
    return PublishedFleet(dump, shas, blob_dir, run)


@pytest.fixture
def fleet_client(redis_client: redis.Redis, published_fleet: PublishedFleet) -> redis.Redis:
    """A flushed database holding the published fleet's keys."""
    published_fleet.restore(redis_client)
    return redis_client
