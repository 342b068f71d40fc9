"""The model contract: a user's model from a file through build -> bootstrap -> export ->
all-int8 check, the zoo's families on the data they are for, every contract error in
one line, and a model that can never be all-int8 refused with the op's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.data.datasets import Dataset
from cloud.export.artifact import Artifact
from cloud.export.exporter import export_int8, preflight
from cloud.export.int8_check import NotInt8
from cloud.learning.contract import DataInfo, ModelError, build_model, fleet_name
from cloud.learning.training import Hyperparameters, bootstrap
from cloud.learning.zoo import default_model
from shared.task import TaskSpec
from shared.tensors import TensorSpec

USER_MODEL = '''
import torch
from torch import nn


class Windows(nn.Module):
    """A user's own 1-D CNN over [T, C] windows, standardizing inside."""

    def __init__(self, info):
        super().__init__()
        T, C = info.input_shape
        X = torch.as_tensor(info.X, dtype=torch.float32)
        self.register_buffer("mean", X.mean(dim=(0, 1)))
        self.register_buffer("inv_std", 1.0 / X.std(dim=(0, 1)).clamp_min(1e-6))
        self.conv = nn.Conv1d(C, 8, 5, padding=2)
        self.head = nn.Linear(8, info.width)

    def forward(self, x):
        x = ((x - self.mean) * self.inv_std).permute(0, 2, 1)
        return self.head(torch.relu(self.conv(x)).mean(dim=2))


def build(info):
    return Windows(info)


def not_a_module(info):
    return "a string"


def wrong_width(info):
    return nn.Sequential(nn.Flatten(), nn.Linear(info.input.size, info.width + 1))


def raises(info):
    raise RuntimeError("no GPU found")


class Gaussian(nn.Module):
    """Radial basis features: exp has no int8 kernel."""

    def __init__(self, info):
        super().__init__()
        self.proj = nn.Linear(info.input.size, 16)
        self.head = nn.Linear(16, info.width)

    def forward(self, x):
        return self.head(torch.exp(-self.proj(x.flatten(1)) ** 2))


def gaussian(info):
    return Gaussian(info)


class Masked(nn.Module):
    """Keeps only positive activations: a shape computed from the data."""

    def __init__(self, info):
        super().__init__()
        self.proj = nn.Linear(info.input.size, info.width)

    def forward(self, x):
        h = self.proj(x.flatten(1))
        return h + h[h > 0].sum()


def masked(info):
    return Masked(info)
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("user") / "my_model.py"
    path.write_text(USER_MODEL)
    return path


def windows(n: int = 240, seed: int = 0) -> Dataset:
    """3-axis windows: the class is which axis carries a 4-sample oscillation."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(0, 0.3, size=(n, 32, 3)).astype(np.float32)
    X[np.arange(n), :, y] += np.sin(np.arange(32) * np.pi / 2)[None, :] * 2
    task = TaskSpec.classification(["x", "y", "z"])
    return Dataset("windows", "tensor", X, y.astype(np.int64), TensorSpec(shape=[32, 3]), task)


def test_a_users_model_from_a_file_trains_exports_and_is_all_int8(user_file):
    ds = windows()
    spec = f"{user_file}:build"
    assert fleet_name(spec) == "build"
    result = bootstrap(ds, Hyperparameters(epochs=15, batch_size=32, lr=1e-2, seed=0), spec)
    assert type(result.model.net).__name__ == "Windows"
    exported = export_int8(result.model, ds.X[:100], ds.X[100:116], min_agreement=0.9)
    artifact = Artifact(exported.content)
    assert artifact.input.describe() == "[32, 3] float32" and artifact.width == 3
    assert (artifact.answers(ds.X).argmax(1) == ds.y).mean() > 0.9
    assert exported.probe.min_agreement == 0.95 and len(exported.probe.inputs[0]) == 96


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("not_a_module", "not_a_module\\(info\\) returned a str, not a torch.nn.Module"),
        ("wrong_width", "returned \\[2, 4\\]; expected \\[2, 3\\] \\(logits for the 3 classes\\)"),
        ("raises", "raises\\(info\\) raised RuntimeError: no GPU found"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_contract_errors_are_one_line_naming_the_spec(user_file, name, message):
    spec = f"{user_file}:{name}"
    with pytest.raises(ModelError, match=message) as e:
        build_model(spec, DataInfo.of(windows(12)), seed=0)
    assert repr(spec) in str(e.value) and "\n" not in str(e.value)


def test_specs_that_do_not_import(tmp_path):
    info = DataInfo.of(windows(12))
    with pytest.raises(ModelError, match="no file"):
        build_model(f"{tmp_path / 'nope.py'}:build", info, seed=0)
    with pytest.raises(
        ModelError, match=r"cannot import module 'not_a_pkg_x\.models': No module named"
    ):
        build_model("not_a_pkg_x.models:build", info, seed=0)
    bad = tmp_path / "syntax.py"
    bad.write_text("def build(info):\n    return (\n")
    with pytest.raises(ModelError, match=r"running .* failed: SyntaxError"):
        build_model(f"{bad}:build", info, seed=0)
    with pytest.raises(ModelError, match="not a zoo model"):
        build_model("resnet", info, seed=0)
    with pytest.raises(ModelError, match="takes images \\[H, W, C\\]"):
        build_model("dwcnn", info, seed=0)


def images(n: int = 120) -> Dataset:
    """uint8 frames: the class is whether the top half is brighter."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    X = rng.integers(0, 120, size=(n, 12, 12, 3)).astype(np.uint8)
    X[y == 1, :6] += 120
    task = TaskSpec.classification(["dark", "bright"])
    return Dataset(
        "frames",
        "tensor",
        X,
        y.astype(np.int64),
        TensorSpec(shape=[12, 12, 3], dtype="uint8"),
        task,
    )


def readings(n: int = 300) -> Dataset:
    """A regression: a machine's temperature from four sensors."""
    rng = np.random.default_rng(0)
    X = rng.normal([50, 1, 0, 3], [10, 0.2, 1, 1], size=(n, 4)).astype(np.float32)
    y = (20 + 0.5 * X[:, 0] + 4 * X[:, 2])[:, None].astype(np.float32)
    return Dataset("temps", "tabular", X, y, TensorSpec.flat(4), TaskSpec.regression(["temp_c"]))


@pytest.mark.parametrize(
    "make", [images, readings, windows], ids=["dwcnn", "regression_mlp", "cnn1d"]
)
def test_zoo_families_train_and_export_all_int8(make):
    ds = make()
    spec = default_model(ds)
    result = bootstrap(ds, Hyperparameters(epochs=20, batch_size=32, lr=5e-3, seed=0))
    exported = export_int8(result.model, ds.X[:100], ds.X[100:116], min_agreement=0.8)
    artifact = Artifact(exported.content)
    assert artifact.input == ds.input, spec
    answers = artifact.answers(ds.X)
    if ds.task.is_classification:
        assert (answers.argmax(1) == ds.y).mean() > 0.85, spec
    else:  # outputs in the targets' units, far better than predicting the mean
        assert np.abs(answers - ds.y).mean() < 0.3 * np.abs(ds.y - ds.y.mean()).mean()
        assert exported.probe.min_agreement == 0.0


def test_a_model_with_an_op_that_has_no_int8_kernel_is_refused_naming_it(user_file):
    model = build_model(f"{user_file}:gaussian", DataInfo.of(windows(40)), seed=0)
    with pytest.raises(NotInt8, match=r"EXP has no int8 kernel: .*would run in float") as e:
        preflight(model, windows(40).X)
    assert "not all-int8" in str(e.value)


def test_a_shape_computed_from_the_data_is_refused(user_file):
    model = build_model(f"{user_file}:masked", DataInfo.of(windows(40)), seed=0)
    with pytest.raises(Exception, match="static shapes"):
        preflight(model, windows(40).X)
