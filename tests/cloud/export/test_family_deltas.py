"""Budgeted deltas for every zoo family (cloud/benchmarks/families.py): a budgeted
child on the parent's frozen grid (never a fall-back to a fresh export), its patch
rebuilt byte for byte by the edge's ``apply_patch``, its answers in the edge
runtime within the int8 numeric check."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cloud.benchmarks.families import (
    FAMILIES,
    TINY,
    FamilyResult,
    Parent,
    run_family,
    train_parent,
)
from cloud.export.artifact import Artifact
from cloud.export.exporter import agreement
from shared.codec import sha256_hex
from shared.delta import HEADER_SIZE, apply_patch, make_patch

#: A patch against the zstd'd file in one round of the smallest runs: the budget is
#: 2.33% of the weight bytes, and a small file pays the patch's 78-byte header on few
#: bytes (regression_mlp: 705 of 13,480 B). The digits goal (5%) is the benchmark's.
FAMILY_RATIO = 0.08

#: The families whose runs take a minute or more on a small machine (the digits data
#: set is not cut down; windows of 256 samples; images); test_budgeted.py covers the
#: digits CNN's budgeted path in the fast tests.
SLOW = {"digits", "cnn1d", "dwcnn"}


@pytest.fixture(scope="session")
def family_run() -> Callable[[str], tuple[Parent, FamilyResult]]:
    """Each family's parent and one budgeted round, made once per session."""
    made: dict[str, tuple[Parent, FamilyResult]] = {}

    def get(family: str) -> tuple[Parent, FamilyResult]:
        if family not in made:
            parent = train_parent(family, TINY)
            made[family] = (parent, run_family(parent))
        return made[family]

    return get


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FAMILIES]
)
def test_every_family_gets_a_small_exact_patch_with_int8_numerics(family, family_run):
    parent, result = family_run(family)
    figures = result.figures()
    assert figures["scales"] != ["recalibrated"], figures["recalibrated_for"]
    child = result.child
    assert child is not None
    # within the family's budget: the changed weight bytes, and the patch against the file
    budget = child.details["budget_bytes"]
    assert 0 < child.details["weight_bytes_changed"] <= 2 * budget
    assert figures["delta_ratio"] <= FAMILY_RATIO, figures
    # the patch carries the changed bytes only: a few bytes each, and a zstd frame
    assert figures["patch_bytes"] <= HEADER_SIZE + 64 + 3 * child.details["bytes_changed"]
    # the edge's patch code rebuilds the child byte for byte
    patch = make_patch(result.base, child.exported.content)
    rebuilt = apply_patch(result.base, patch, max_size=len(child.exported.content))
    assert sha256_hex(rebuilt) == child.exported.sha256 and figures["patch_exact"]
    # the rebuilt file in the edge runtime: its own probe set, and the numeric check's
    # agreement with the float model of its weights
    artifact = Artifact(rebuilt)
    probe = child.exported.probe
    X = np.asarray(probe.inputs, np.float32).reshape(len(probe.inputs), *artifact.input.shape)
    got = artifact.answers(X.astype(artifact.input.np_dtype))
    want = np.asarray(probe.expected, np.float32)
    assert float(np.mean(np.abs(got - want))) <= probe.max_abs_error
    assert agreement(parent.model.task, got, want) >= max(probe.min_agreement, 0.95)
    assert child.exported.agreement >= 0.95
    assert np.isfinite(result.metric_budgeted) and np.isfinite(result.metric_unconstrained)
