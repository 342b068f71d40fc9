"""One suite over every model family, as River runs one check suite over every
estimator: each zoo family on data of its kind, and a model a user writes in a
file of their own (``path/to/file.py:build``), goes through build -> train ->
export -> static int8 -> numeric check in the edge runtime -> budgeted update ->
patch applied with the edge's code -> a complete explanation.

Serving over HTTP (JSON and npy, single and batch) and the feedback round trip
join the suite once the edge takes tensor inputs (issue 10, part 3).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cloud.benchmarks.families import FAMILIES, TINY, FamilyResult, Parent, run_family, train_parent
from cloud.evaluation.explain import RoundRecord, Side, explain_version
from cloud.evaluation.gate import HeldOut
from cloud.export.artifact import Artifact
from cloud.export.exporter import agreement
from cloud.export.int8_check import check_all_int8
from cloud.learning.models import predict
from shared.codec import sha256_hex
from shared.delta import apply_patch, make_patch

#: A user's model file: uint8 camera frames, a conv with a batch norm (folded into the
#: conv by the converter), a depthwise conv, a dense head. Nothing of edgeloop's.
CUSTOM_MODEL = """
import torch
from torch import nn


class Frames(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.conv = nn.Conv2d(channels, 12, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(12)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        x = (x * (1.0 / 255.0)).permute(0, 3, 1, 2)
        x = torch.relu(self.norm(self.conv(x)))
        x = nn.functional.max_pool2d(torch.relu(self.depthwise(x)), 2)
        return self.head(x.mean(dim=(2, 3)))


def build(info):
    return Frames(info.input_shape[-1], info.width)
"""

#: name -> (the data's family, the model spec; None: the family's zoo model)
CASES: dict[str, tuple[str, str | None]] = {f: (f, None) for f in FAMILIES}
CASES["custom"] = ("dwcnn", "custom")

#: A minute or more each on a small machine (see tests/cloud/export/test_family_deltas.py).
SLOW = {"digits", "cnn1d", "dwcnn", "custom"}


@pytest.fixture(scope="session")
def custom_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("user") / "frames_model.py"
    path.write_text(CUSTOM_MODEL)
    return f"{path}:build"


@pytest.fixture(scope="session")
def runs(custom_spec: str) -> Callable[[str], tuple[Parent, FamilyResult]]:
    """Each case's parent and one budgeted round, made once per session."""
    made: dict[str, tuple[Parent, FamilyResult]] = {}

    def get(case: str) -> tuple[Parent, FamilyResult]:
        if case not in made:
            family, spec = CASES[case]
            parent = train_parent(family, TINY, model=custom_spec if spec == "custom" else spec)
            made[case] = (parent, run_family(parent))
        return made[case]

    return get


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_a_model_family_goes_through_the_whole_loop(case: str, runs, tmp_path: Path):
    parent, result = runs(case)
    content = parent.exported.content
    # export: an all-int8 file (every conv and dense op on int8 activations)
    check_all_int8(content)
    artifact = Artifact(content)
    assert artifact.input == parent.model.input_spec
    # numeric check in the edge runtime: the file answers as the torch model does
    X = parent.data.holdout.X[:64]
    assert agreement(parent.model.task, artifact.answers(X), predict(parent.model, X)) >= 0.95
    # budgeted update: every parameter maps onto the file (never a layout fall-back); a
    # zoo model's child is written on the parent's frozen grid, and the patch is small
    # (a user's batch norm may move its statistics so far on the drift that the folded
    # weights leave the frozen range: that round re-calibrates, as the trainer's would)
    figures = result.figures()
    assert "layout" not in figures["recalibrated_for"] and result.model is not None
    if case != "custom":
        assert result.child is not None, figures["recalibrated_for"]
    patch = make_patch(result.base, result.content)
    rebuilt = apply_patch(result.base, patch, max_size=len(result.content))
    assert sha256_hex(rebuilt) == sha256_hex(result.content)
    if result.child is not None:
        assert len(patch) < 0.1 * len(rebuilt)
    # a complete explanation of the child against its parent
    task = parent.model.task
    data = HeldOut(
        earlier=(parent.data.holdout.X[:48], parent.data.holdout.y[:48]),
        recent=(parent.data.X_drift[:48], parent.data.y_drift[:48]),
        task=task,
    )
    details = result.child.details if result.child is not None else {}
    record = RoundRecord("count", {"new_samples": 96}, {}, {"delta": details})
    e = explain_version(
        record,
        Side(result.model, Artifact(rebuilt), rebuilt),
        Side(parent.model, artifact, content),
        data,
    )
    assert e.summary and e.evaluation.parent is not None
    assert e.evaluation.child.recent.samples == 48
    assert e.weights.source != "none" and e.weights.layers
    assert e.attribution is not None
    assert np.isfinite(result.metric_budgeted)
