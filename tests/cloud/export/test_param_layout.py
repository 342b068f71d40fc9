"""Every layer the exporter supports maps onto its converted tensors
(cloud/export/param_layout.py): conv1d run as a conv2d, depthwise convs, dense
layers, a constant input scaling and batch norms folded into the layer before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cloud.export.budgeted import BudgetedUpdate, BudgetOptions, FineTuned
from cloud.export.exporter import export_int8, to_float_tflite
from cloud.export.grid import update_tensors
from cloud.export.param_layout import LayoutMismatch, ParamLayout, params_of
from cloud.export.refit import frozen_batch_norms
from cloud.export.tflite_file import TFLiteFile
from cloud.learning.models import TaskModel
from cloud.learning.training import Hyperparameters, fine_tune, train
from shared.codec import sha256_hex
from shared.delta import apply_patch, make_patch
from shared.task import TaskSpec
from shared.tensors import TensorSpec

FRAME = TensorSpec(shape=[8, 8, 3], dtype="uint8")
WINDOW = TensorSpec(shape=[16, 3], dtype="float32")


class NormedCNN(nn.Module):
    """uint8 frames: a bias-free conv + norm, a depthwise conv + norm, a dense + norm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.bn3 = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * (1.0 / 255.0)).permute(0, 3, 1, 2)
        x = torch.relu(self.bn1(self.stem(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.bn3(self.fc(x.mean(dim=(2, 3)))))
        out: torch.Tensor = self.head(x)
        return out


class NormedConv1d(nn.Module):
    """A batch norm after a conv1d: the converter keeps it as a float multiply-add."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.c(x.permute(0, 2, 1))))
        out: torch.Tensor = self.head(x.mean(dim=2))
        return out


def _randomize_norms(model: nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.weight[0] = -m.weight[0]  # a negative scale swaps a range's ends
                m.bias.uniform_(-0.5, 0.5)


@pytest.fixture(scope="module")
def normed() -> TaskModel:
    torch.manual_seed(0)
    model = TaskModel(NormedCNN(), FRAME, TaskSpec.classification(["a", "b", "c"])).eval()
    _randomize_norms(model)
    return model


def test_folded_norms_conv_layouts_and_input_scaling_map_onto_the_layers(normed):
    f = TFLiteFile.read(to_float_tflite(normed, FRAME))
    layout = ParamLayout.match(normed, f)
    assert {t.name for layer in f.layers for t in layer.tensors} == layout.tensor_names()
    # each norm's scale is folded; the bias-free stem's bias is the norm's shift
    folded = {"net.bn1.weight", "net.bn2.weight", "net.bn2.bias", "net.bn3.weight", "net.bn3.bias"}
    assert layout.folded == folded
    assert layout.folded | set(layout.placements) == set(params_of(normed))
    assert layout.placements["net.bn1.bias"].tensor == f.layers[0].bias.name
    # the stem holds w/255 (the input scaling) times the norm's factor
    stem = layout.placements["net.stem.weight"]
    bn = normed.net.bn1
    k = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    assert np.allclose(stem.factor, k / 255.0, rtol=1e-4)
    # values round-trip, masks only move, and the map reproduces the converted file
    params = params_of(normed)
    tflite = layout.weights(params)
    for t in f.layers:
        for tensor in t.tensors:
            assert np.allclose(tflite[tensor.name], f.values(tensor.name), rtol=1e-4, atol=1e-6)
    back = layout.to_torch(tflite)
    assert all(np.allclose(back[n], params[n], rtol=1e-4, atol=1e-6) for n in back)
    mask = {n: np.ones(v.shape, bool) for n, v in tflite.items()}
    assert all(m.dtype == bool and m.all() for m in layout.masks_to_torch(mask).values())
    lo, hi = layout.limits_to_torch({n: (v - 1.0, v + 1.0) for n, v in tflite.items()}).popitem()[1]
    assert np.all(lo < hi)


def test_a_norm_the_converter_does_not_fold_is_a_layout_mismatch():
    model = TaskModel(NormedConv1d(), WINDOW, TaskSpec.classification(["a", "b"])).eval()
    _randomize_norms(model)
    f = TFLiteFile.read(to_float_tflite(model, WINDOW))
    with pytest.raises(LayoutMismatch, match="not folded"):
        ParamLayout.match(model, f)


def test_a_refit_keeps_its_norms_in_eval_mode(normed):
    model = frozen_batch_norms(TaskModel(NormedCNN(), FRAME, normed.task))
    before = model.net.bn1.running_mean.clone()
    model.train()
    model(torch.randint(0, 255, (4, 8, 8, 3), dtype=torch.uint8))
    assert not model.net.bn1.training and torch.equal(model.net.bn1.running_mean, before)


def test_a_model_with_folded_norms_gets_a_budgeted_child_and_an_exact_patch(normed):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (240, 8, 8, 3)).astype(np.uint8)
    X[np.arange(240), :, :, np.arange(240) % 3] //= 3  # the class: the channel dimmed
    y = np.arange(240) % 3
    hp = Hyperparameters(epochs=6, batch_size=32, lr=3e-3, seed=0)
    parent = train(TaskModel(NormedCNN(), FRAME, normed.task), X, y, hp).model.eval()
    # a toy's near-tied classes flip in int8; the deltas, not the export, are tested here
    exported = export_int8(parent, X[:100], X[100:116], min_agreement=0.8)
    drifted = np.ascontiguousarray(255 - X)  # an inverted camera
    child = fine_tune(parent, drifted, y, hp).model
    opts = BudgetOptions(
        budget_bytes=None,
        budget_fraction=0.05,
        clip_tolerance=0.2,
        activation_tolerance=0.1,
        refit_epochs=2,
        refit_lr=2e-3,
        min_agreement=0.8,
        levels=(8, 16, 32, 64),
        select_factor=2,
    )
    update = BudgetedUpdate(
        exported.content,
        FineTuned(parent, child, drifted, y, hp),
        (drifted[:100], drifted[100:116]),
        opts,
    )
    made = update.child()
    assert made.details["scales"] in ("frozen", "activations")
    weights = sum(t.nbytes for t in update_tensors(TFLiteFile.read(exported.content)))
    # the budget, plus biases requantized where an activation range was re-calibrated
    assert 0 < made.details["weight_bytes_changed"] <= 2 * update.budget
    assert update.budget == int(0.05 * weights)
    patch = make_patch(exported.content, made.exported.content)
    assert len(patch) < 0.1 * len(made.exported.content)
    rebuilt = apply_patch(exported.content, patch, max_size=len(made.exported.content))
    assert sha256_hex(rebuilt) == made.exported.sha256
    assert made.exported.agreement >= 0.8
    # the new shadow keeps the user's norms, trainable again in the next round
    shadow_norm = made.model.net.bn1
    assert type(shadow_norm) is nn.BatchNorm2d
