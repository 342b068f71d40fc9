"""The weight decay chosen by cross-validation on the seed data (cloud/learning/selection.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_circles, make_classification

from cloud.learning.contract import DataInfo, build_model
from cloud.learning.selection import WeightDecayChoice, choose_weight_decay
from cloud.learning.training import Hyperparameters
from shared.task import TaskSpec
from shared.tensors import TensorSpec

pytestmark = pytest.mark.cloud

#: The replay's bootstrap recipe (cloud/replay/runner.py).
RECIPE = Hyperparameters(epochs=25, batch_size=64, lr=3e-3, seed=0)


def choose(X: np.ndarray, y: np.ndarray, choices: list[float]) -> WeightDecayChoice:
    X, y = X.astype(np.float32), y.astype(np.int64)
    info = DataInfo(TensorSpec.flat(X.shape[1]), TaskSpec.classification(["a", "b"]), X, y)
    return choose_weight_decay(lambda: build_model("mlp", info, seed=0), X, y, RECIPE, choices)


def test_a_curved_border_keeps_every_unit_free():
    X, y = make_circles(300, noise=0.1, factor=0.5, random_state=0)
    choice = choose(X, y, [0.3, 0.0])
    assert choice.value == 0.0 and choice.scores[0.0] > choice.scores[0.3] + 0.05, choice
    assert choice.metric == "accuracy"


def test_few_rows_of_many_noisy_features_are_held_back():
    # 200 rows, 100 features of which 3 say anything: learnt by heart without decay
    X, y = make_classification(
        200, n_features=100, n_informative=3, n_redundant=0, flip_y=0.05, random_state=2
    )
    choice = choose(X, y, [0.0, 0.1])
    assert choice.value == 0.1 and choice.scores[0.1] > choice.scores[0.0] + 0.03, choice


def test_a_tie_takes_the_larger_decay_and_one_choice_is_not_scored():
    X, y = make_blobs(100, centers=[[-5.0, -5.0], [5.0, 5.0]], random_state=0)
    choice = choose(X, y, [0.01, 0.0, 3.0])
    assert choice.scores[0.0] == choice.scores[0.01] == 1.0 > choice.scores[3.0], choice
    assert choice.value == 0.01
    assert choose(X, y, [0.01]) == WeightDecayChoice(0.01, {}, "accuracy")
    with pytest.raises(ValueError, match="no weight decay"):
        choose(X, y, [])
