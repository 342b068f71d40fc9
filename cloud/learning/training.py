"""A training round: continual fine-tuning of the parent on replayed plus recent data.

Each round starts from the parent's weights (the published version the edges
run), never from scratch, and trains on the replay buffer together with the
most recent training samples: the recent samples teach the new distribution,
the class-balanced replay keeps rehearsing the old one so that the child does
not forget it. Everything random (shuffling) comes from one seed, so the same
data and seed give the same child.

>>> from cloud.data.datasets import load_dataset, split
>>> seed = split(load_dataset("digits"), seed=0).seed_train
>>> hp = Hyperparameters(epochs=1, batch_size=64, lr=1e-3, seed=0)
>>> a = bootstrap(seed, hp)
>>> b = bootstrap(seed, hp)
>>> bool(torch.equal(a.model.f2.weight, b.model.f2.weight))
True
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.data.datasets import Dataset
from cloud.learning.models import Classifier, build_model
from shared.errors import EdgeloopError

logger = logging.getLogger(__name__)


class TrainingError(EdgeloopError):
    """There is nothing (or not enough) to train on."""


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    weight_decay: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: Classifier
    hyperparameters: dict[str, Any]
    samples: int
    final_loss: float
    seconds: float


def bootstrap(dataset: Dataset, hp: Hyperparameters) -> TrainResult:
    """The first version: a fresh model (seeded) trained on ``dataset``."""
    model = build_model(dataset, seed=hp.seed)
    return _fit(model, dataset.X, dataset.y, hp)


def fine_tune(
    parent: Classifier,
    X: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    hp: Hyperparameters,
    *,
    after_step: Callable[[Classifier], None] | None = None,
) -> TrainResult:
    """A child: a copy of ``parent`` trained on (X, y); the parent is left untouched.

    ``after_step(model)`` runs after every optimizer step, e.g. to hold some
    parameters fixed or inside a range (cloud/export/budgeted.py).
    """
    return _fit(copy.deepcopy(parent), X, y, hp, after_step)


def _fit(
    model: Classifier,
    X: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    hp: Hyperparameters,
    after_step: Callable[[Classifier], None] | None = None,
) -> TrainResult:
    if len(y) == 0:
        raise TrainingError("no samples to train on")
    start = time.perf_counter()
    Xt = torch.as_tensor(np.ascontiguousarray(X, np.float32))
    yt = torch.as_tensor(np.asarray(y, np.int64))
    gen = torch.Generator().manual_seed(hp.seed)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = float("nan")
    for _ in range(hp.epochs):
        total, count = 0.0, 0
        for idx in torch.split(torch.randperm(len(yt), generator=gen), hp.batch_size):
            opt.zero_grad()
            loss = loss_fn(model.logits(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / count
    model.eval()
    seconds = time.perf_counter() - start
    logger.info(
        "trained on %d samples, %d epochs, loss %.4f, in %.1fs", len(yt), hp.epochs, last, seconds
    )
    return TrainResult(model, hp.as_dict(), len(yt), last, seconds)
