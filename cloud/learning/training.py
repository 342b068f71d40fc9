"""A training round: continual fine-tuning of the parent on replayed plus recent data.

Each round starts from the parent's weights (the published version the edges
run), never from scratch, and trains on the replay buffer together with the
most recent training samples: the recent samples teach the new distribution,
the class-balanced replay keeps rehearsing the old one so that the child does
not forget it. The loss is the task's: cross-entropy on a classifier's logits,
mean squared error on a regressor's outputs. Everything random (shuffling) comes
from one seed, so the same data and seed give the same child.

>>> from cloud.data.datasets import load_dataset, split
>>> seed = split(load_dataset("digits"), seed=0).seed_train
>>> hp = Hyperparameters(epochs=1, batch_size=64, lr=1e-3, seed=0)
>>> a = bootstrap(seed, hp)
>>> b = bootstrap(seed, hp)
>>> bool(torch.equal(a.model.net.f2.weight, b.model.net.f2.weight))
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
from cloud.learning.contract import DataInfo, build_model
from cloud.learning.models import TaskModel
from shared.errors import EdgeloopError
from shared.task import TaskSpec

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
    model: TaskModel
    hyperparameters: dict[str, Any]
    samples: int
    final_loss: float
    seconds: float


def loss_of(task: TaskSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of ``task``: cross-entropy on logits, or MSE on outputs."""
    return nn.CrossEntropyLoss() if task.is_classification else nn.MSELoss()


def truths_tensor(y: npt.ArrayLike, task: TaskSpec) -> torch.Tensor:
    """Class indices (int64) or targets (float32 ``[N, k]``) as the loss takes them."""
    if task.is_classification:
        return torch.as_tensor(np.asarray(y, np.int64))
    targets = np.asarray(y, np.float32)
    return torch.as_tensor(targets.reshape(len(targets), -1))


def bootstrap(dataset: Dataset, hp: Hyperparameters, spec: str | None = None) -> TrainResult:
    """The first version: a fresh model of ``spec`` (default: the dataset's zoo model),
    seeded by ``hp.seed``, trained on ``dataset``."""
    from cloud.learning.zoo import default_model

    model = build_model(spec or default_model(dataset), DataInfo.of(dataset), seed=hp.seed)
    return _fit(model, dataset.X, dataset.y, hp)


def train(model: TaskModel, X: npt.ArrayLike, y: npt.ArrayLike, hp: Hyperparameters) -> TrainResult:
    """``model`` itself trained on (X, y) (a fresh model's first training)."""
    return _fit(model, X, y, hp)


def fine_tune(
    parent: TaskModel,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    hp: Hyperparameters,
    *,
    after_step: Callable[[TaskModel], None] | None = None,
) -> TrainResult:
    """A child: a copy of ``parent`` trained on (X, y); the parent is left untouched.

    ``after_step(model)`` runs after every optimizer step, e.g. to hold some
    parameters fixed or inside a range (cloud/export/budgeted.py).
    """
    return _fit(copy.deepcopy(parent), X, y, hp, after_step)


def _fit(
    model: TaskModel,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    hp: Hyperparameters,
    after_step: Callable[[TaskModel], None] | None = None,
) -> TrainResult:
    yt = truths_tensor(y, model.task)
    if len(yt) == 0:
        raise TrainingError("no samples to train on")
    start = time.perf_counter()
    Xt = torch.as_tensor(np.ascontiguousarray(X, np.float32))
    gen = torch.Generator().manual_seed(hp.seed)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    loss_fn = loss_of(model.task)
    model.train()
    last = float("nan")
    for _ in range(hp.epochs):
        total, count = 0.0, 0
        for idx in torch.split(torch.randperm(len(yt), generator=gen), hp.batch_size):
            opt.zero_grad()
            loss = loss_fn(model.logits(Xt[idx]), yt[idx])
            torch.autograd.backward(loss)
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
