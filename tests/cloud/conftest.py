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

from cloud.datasets import Dataset, Split, load_dataset, split
from cloud.exporter import ExportResult, export_int8
from cloud.settings import TrainerSettings
from cloud.training import Hyperparameters, TrainResult, bootstrap
from shared.keys import FleetKeys
from shared.messages import FeedbackEvent
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
            "fleet": FLEET, "redis_url": redis_url, "signing_key": signing_dir / "signing.key",
            "consumer": "trainer-1", "blob_dir": tmp_path / "blobs",
        }  # fmt: skip
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
            event_id=f"{device}:{self.epoch}:{seq}", device_id=device, model=self.model,
            x=[float(v) for v in x], label=int(label), predicted=predicted,
        ).to_wire()  # fmt: skip

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
