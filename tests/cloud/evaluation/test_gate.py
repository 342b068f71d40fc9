"""The gate judges int8 artifacts in the edge runtime: worse children are refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cloud.evaluation.gate import GateRule, HeldOut, Metrics, evaluate, gate
from cloud.export.artifact import Artifact
from cloud.export.exporter import export_int8
from cloud.learning.training import Hyperparameters, bootstrap, fine_tune
from shared.task import TaskSpec


@pytest.fixture(scope="session")
def weak(parts):
    """A barely trained model: the parent a better child should replace."""
    model = bootstrap(
        parts.seed_train, Hyperparameters(epochs=1, batch_size=64, lr=5e-4, seed=1)
    ).model
    return Artifact(
        export_int8(
            model, parts.seed_train.X[:200], parts.seed_train.X[:16], min_agreement=0.8
        ).content
    )


@pytest.fixture(scope="session")
def scrambled(trained, parts):
    """A child fine-tuned on permuted labels: it must never ship."""
    y = (parts.seed_train.y + 1) % 10  # a permutation with no fixed point
    model = fine_tune(trained.model, parts.seed_train.X, y, Hyperparameters(10, 64, 1e-3, 0)).model
    return Artifact(
        export_int8(
            model, parts.seed_train.X[:200], parts.seed_train.X[:16], min_agreement=0.8
        ).content
    )


def halves(parts) -> HeldOut:
    X, y = parts.stream.X, parts.stream.y
    return HeldOut(earlier=(X[:400], y[:400]), recent=(X[400:], y[400:]), task=parts.stream.task)


def test_better_child_is_published(weak, exported, parts):
    d = gate(weak, Artifact(exported.content), halves(parts), GateRule(0.01, 0.02))
    assert d.publish, d.reason
    assert d.child_recent.accuracy > d.parent_recent.accuracy + 0.01
    m = d.metrics()
    assert (
        m["recent_accuracy"] == d.child_recent.accuracy
        and m["parent_recent_accuracy"] < m["recent_accuracy"]
    )
    assert set(d.child_recent.recall) == set(parts.stream.labels)


def test_scrambled_child_is_rejected(exported, scrambled, parts):
    d = gate(Artifact(exported.content), scrambled, halves(parts), GateRule(0.0, 0.05))
    assert not d.publish and "does not beat" in d.reason
    assert d.child_recent.accuracy < 0.3


def test_forgetting_is_rejected_even_with_a_recent_gain(weak, exported, parts):
    # The child wins on "recent" but loses on "earlier" (here: the same model pair, sets swapped).
    data = halves(parts)
    parent, child = Artifact(exported.content), weak
    d = gate(child, parent, data, GateRule(0.0, 0.0))
    assert d.publish
    # Now make "earlier" a set only the parent gets right.
    X, y = data.earlier
    hits = parent.answers(X).argmax(1) == y
    misses = weak.answers(X).argmax(1) != y
    hard = (X[hits & misses], y[hits & misses])
    no_recent = replace(data, earlier=hard, recent=(hard[0][:0], hard[1][:0]))
    d = gate(parent, weak, no_recent, GateRule(-1.0, 0.05))
    assert not d.publish and "no recent" in d.reason
    d = gate(parent, weak, replace(data, earlier=hard), GateRule(-1.0, 0.05))
    assert not d.publish and "forgets earlier data" in d.reason


def test_metrics_on_empty_data(exported):
    m = evaluate(
        Artifact(exported.content),
        (np.zeros((0, 64), np.float32), np.zeros(0, np.int64)),
        TaskSpec.classification(["a", "b"]),
    )
    assert m == Metrics(None, 0)
