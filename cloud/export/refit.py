"""Training on a frozen grid: only some values move, each inside the range the
parent's int8 grid can hold, so the result writes onto that grid without clipping.

``refit`` trains the selected values of the shadow (the parent's float weights)
from where the unconstrained model put them, projecting them into their range
after every step; ``published_model`` is the model the edges actually run (the
parent's int8 weights, dequantized), where a refit starts; ``carry`` is the next
shadow. Which values, and how many, is the budget's business
(``cloud/export/budgeted.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.export.grid import update_tensors
from cloud.export.param_layout import ParamLayout
from cloud.export.tflite_file import TFLiteFile
from cloud.learning.models import TaskModel
from cloud.learning.training import Hyperparameters, fine_tune


@dataclass(frozen=True)
class Selection:
    """The values a refit trains (a mask per parameter) and the float range each must
    stay in (the frozen grid's, per value)."""

    mask: Mapping[str, npt.NDArray[np.bool_]]
    limits: Mapping[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]


def refit(
    shadow: TaskModel,
    unconstrained: TaskModel,
    selection: Selection,
    data: tuple[npt.NDArray[Any], npt.NDArray[Any]],
    hp: Hyperparameters,
) -> TaskModel:
    """The shadow with only the selected values trained (from the unconstrained
    model's values), each held inside its limits; every other value stays put."""
    start = frozen_batch_norms(copy.deepcopy(shadow))
    target = dict(unconstrained.named_parameters())
    mask, lo, hi, base = {}, {}, {}, {}
    with torch.no_grad():
        for name, p in start.named_parameters():
            if name not in selection.mask:  # held: no tensor of its own (a folded norm's scale)
                mask[name] = torch.zeros(p.shape, dtype=torch.bool)
                lo[name] = hi[name] = p.detach().clone()
                base[name] = p.detach().clone()
                continue
            mask[name] = torch.as_tensor(np.asarray(selection.mask[name], bool))
            lo[name] = torch.as_tensor(np.asarray(selection.limits[name][0], np.float32))
            hi[name] = torch.as_tensor(np.asarray(selection.limits[name][1], np.float32))
            moved = torch.clamp(target[name].detach(), lo[name], hi[name])
            p.copy_(torch.where(mask[name], moved, p))
            base[name] = p.detach().clone()

    def hold(model: nn.Module) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                inside = torch.clamp(p, lo[name], hi[name])
                p.copy_(torch.where(mask[name], inside, base[name]))

    X, y = data
    return fine_tune(start, X, y, hp, after_step=hold).model


class _FrozenNorm(nn.Module):
    """Mixed into a batch norm's class: the norm stays in eval mode whatever ``train()``
    asks, so it keeps normalizing with the statistics folded into the file."""

    def train(self, mode: bool = True) -> _FrozenNorm:
        return super().train(False)


_FROZEN: dict[type, type] = {}


def frozen_batch_norms(model: TaskModel) -> TaskModel:
    """``model`` (in place) with every batch norm held in eval mode: a refit trains the
    layer weights on the frozen grid, where each norm is folded with the statistics the
    layout was matched on; training-mode norms would re-normalize by batch statistics
    and move their running ones."""
    for m in model.modules():
        cls = type(m)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _FrozenNorm):
            if cls not in _FROZEN:
                _FROZEN[cls] = type(f"Frozen{cls.__name__}", (_FrozenNorm, cls), {})
            m.__class__ = _FROZEN[cls]
            m.eval()
    return model


def published_model(template: TaskModel, layout: ParamLayout, parent: TFLiteFile) -> TaskModel:
    """``template`` holding exactly the parent's int8 weights (dequantized): what the
    edges run, the start of a refit. ``template`` is the model the layout was matched
    on, so that a folded batch norm's statistics are the ones its map assumes."""
    values = layout.to_torch({t.name: t.dequantize(parent.content) for t in update_tensors(parent)})
    model = copy.deepcopy(template)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in values:
                continue
            p.copy_(torch.as_tensor(np.asarray(values[name], np.float32)).reshape(p.shape))
    return model


def carry(unconstrained: TaskModel, refitted: TaskModel, selection: Selection) -> TaskModel:
    """The next shadow: the refit values where this round wrote, the unconstrained
    model's (inside the grid's range) everywhere else, so the progress the budget left
    out is sent by later rounds instead of being trained again."""
    out = copy.deepcopy(unconstrained)
    fitted = dict(refitted.named_parameters())
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name not in selection.mask:
                continue
            lo = torch.as_tensor(np.asarray(selection.limits[name][0], np.float32))
            hi = torch.as_tensor(np.asarray(selection.limits[name][1], np.float32))
            mask = torch.as_tensor(np.asarray(selection.mask[name], bool))
            p.copy_(torch.where(mask, fitted[name], torch.clamp(p, lo, hi)))
    return out
