"""Torch models, weight serialization and training rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud.data.datasets import Dataset
from cloud.learning.contract import DataInfo
from cloud.learning.contract import build_model as build
from cloud.learning.models import TaskModel, predict
from cloud.learning.training import Hyperparameters, TrainingError, bootstrap, fine_tune
from cloud.learning.weights import WeightsError, load_weights, weights_to_bytes
from cloud.learning.zoo import TabularMLP, default_model
from shared.task import TaskSpec
from shared.tensors import TensorSpec


def tabular(n: int = 300, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal([5, -3, 100], [1, 1, 20], size=(n, 3)).astype(np.float32)
    y = (X[:, 0] + (X[:, 2] - 100) / 20 > 5).astype(np.int64)
    task = TaskSpec.classification(["no", "yes"])
    return Dataset("toy", "tabular", X, y, TensorSpec.flat(3), task)


def build_model(ds: Dataset, seed: int) -> TaskModel:
    """The dataset's default zoo model, as a trainer builds it."""
    return build(default_model(ds), DataInfo.of(ds), seed)


def test_models_output_probabilities(digits):
    for ds in (digits, tabular()):
        p = predict(build_model(ds, seed=0), ds.X[:5])
        assert p.shape == (5, ds.num_classes)
        assert np.allclose(p.sum(1), 1.0, atol=1e-5) and (p >= 0).all()


def test_build_model_is_deterministic_and_leaves_global_rng_alone(digits):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_model(digits, seed=7), build_model(digits, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_mlp_standardizes_with_seed_statistics():
    ds = tabular()
    m = build_model(ds, seed=0).net
    assert isinstance(m, TabularMLP)
    z = (torch.as_tensor(ds.X) - m.mean) * m.inv_std
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(3), atol=1e-3)


def test_weights_round_trip_and_refuse_the_wrong_model(digits):
    a, b = build_model(digits, seed=1), build_model(digits, seed=2)
    load_weights(b.net, weights_to_bytes(a.net))
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    with pytest.raises(WeightsError):
        load_weights(build_model(tabular(), seed=0).net, weights_to_bytes(a.net))
    with pytest.raises(WeightsError):
        load_weights(a.net, b"not weights")
    with pytest.raises(WeightsError):
        load_weights(a.net, weights_to_bytes(a.net)[:-4])


def test_training_is_deterministic_and_fine_tune_leaves_parent(parts):
    hp = Hyperparameters(epochs=2, batch_size=32, lr=1e-3, seed=5)
    a, b = bootstrap(parts.seed_train, hp), bootstrap(parts.seed_train, hp)
    assert torch.equal(a.model.net.f2.weight, b.model.net.f2.weight)
    before = a.model.net.f2.weight.clone()
    child = fine_tune(a.model, parts.stream.X[:200], parts.stream.y[:200], hp)
    assert torch.equal(a.model.net.f2.weight, before)
    assert not torch.equal(child.model.net.f2.weight, before)
    assert child.samples == 200 and child.hyperparameters["seed"] == 5


def test_tabular_training_learns():
    ds = tabular(600)
    r = bootstrap(ds, Hyperparameters(epochs=30, batch_size=32, lr=3e-3, seed=0))
    assert (predict(r.model, ds.X).argmax(1) == ds.y).mean() > 0.9


def test_nothing_to_train_on_is_a_named_error(trained):
    with pytest.raises(TrainingError):
        fine_tune(
            trained.model,
            np.zeros((0, 64), np.float32),
            np.zeros(0, np.int64),
            Hyperparameters(1, 8, 1e-3, 0),
        )
