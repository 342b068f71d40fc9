"""The trainer's half of a budgeted update: choose the weights a round may change,
train only those on the parent's grid, and hand back a checked int8 file.

A ``budgeted`` round (cloud/trainer/rounds.py) goes:

1. **unconstrained**: the round's normal fine-tune of the shadow, exactly what a
   ``full`` round exports. It says where the model wants to go.
2. **select**: its weights on the parent's frozen grid, ranked by Fisher-weighted
   benefit per byte (cloud/export/grid.py); the top ones under the budget are
   the weights this round may change.
3. **refit**: from the published weights (the parent's int8 values), with the
   selected weights set to the unconstrained values, train only the selected
   weights, held inside the grid's range, so that they make up for the ones
   left out. The selection is narrowed down to the budget in steps
   (``select_factor``, default 4): the first refit trains four times the
   budget's values, the better half of its result (by the same benefit, now
   of the refit values) is refit again, and so on down to the budget, so the
   weights that end up written are the ones that matter once the others have
   been allowed to move, not the unconstrained model's guess. On three
   streams of ``edgeloop bench deltas --quick`` (torch on one thread) this
   ended at 0.968, 0.968, 0.965 with 900 values a round (patches 4.5% of the
   full files on average), where one refit of the budget's values ended at
   0.962, 0.963, 0.958 with 1100 a round (4.7%); narrowing from 2x: 0.965,
   0.962, 0.968; from 8x: 0.955, 0.972, 0.963. Each step is one more refit
   (a round takes ~1.7 s longer).
4. **write**: the refit model on the parent's grid under the same budget. When
   a fresh calibration of those weights finds activation ranges that no longer
   fit, its activation scales are taken (weights stay frozen). The numeric
   check compares the file with a float model of exactly its weights.

The new shadow (its float weights are stored with the version) is the
unconstrained model with the refit values where this round wrote (``carry``),
held inside the grid's range: what the budget left out, and progress smaller
than one quantization step, is the residual, a candidate again next round, and
the next round trains on from the whole progress, not from the refit alone.
In ``edgeloop bench deltas --quick`` at 966 B a round, the carried residual
ended at 0.962-0.970 (mean of upright and rotated held-out digits; three
variants that differ only in details) where a shadow that is the refit model
(the written weights' progress only) ended at 0.950-0.957 in five (refit lr
and epochs varied); the unconstrained run reached 0.975. It trails further
right after the drift, though, so more rounds ship 2x or 4x the budget
(patches 6.1-6.3% of the full files, against 4.5-5.2%); at 850 B a round it
ended at 0.958 with 5.15%, at 772 B at 0.953 with 4.4%.

Why refit rather than write the unconstrained model's top changes: Adam moves
every weight by about the learning rate per step, more than one quantization
step, so an unconstrained round changes about 65% of the int8 values. In an
offline run of the digits drift scenario, writing its top 1400 a round (error
feedback alone) left the rotated digits at 0.88 after 10 drifted rounds while
the unconstrained model was at 0.97; refitting the same 1400 tracked the
unconstrained model round by round.

The torch model and the converted TFLite file are matched parameter by
parameter: the converter lays a parameter out as a transposition of its axes
(OIHW -> OHWI for a conv), and ``ParamLayout.match`` finds, for each one, the
float tensor that holds exactly its values, so no name or layout is assumed.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.export.exporter import ExportResult, calibrate_int8, convert_float, probe_set
from cloud.export.grid import (
    LayoutMismatch,
    activation_misfits,
    bytes_changed,
    check_against_reference,
    describe,
    float_reference,
    grid_limits,
    plan_update,
    tied_activations,
    update_tensors,
    with_activations_from,
)
from cloud.export.tflite_file import TFLiteFile, parse_module_name
from cloud.learning.models import Classifier
from cloud.learning.training import Hyperparameters, fine_tune
from shared.codec import sha256_hex
from shared.errors import EdgeloopError

logger = logging.getLogger(__name__)

#: Samples per gradient in the Fisher estimate; at most FISHER_SAMPLES samples.
FISHER_BATCH = 16
FISHER_SAMPLES = 2000

#: After the gate refuses a budgeted child, the budgets tried next, as multiples.
ESCALATION = (2, 4)

Arrays = dict[str, npt.NDArray[Any]]


class FrozenScalesDoNotFit(EdgeloopError):
    """The parent's grid cannot hold this child; re-calibrate (``reason`` says why)."""

    def __init__(self, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.details = details or {}


@dataclass(frozen=True)
class BudgetOptions:
    budget_bytes: int | None  # changed bytes of weight data per round; None: budget_fraction
    budget_fraction: float  # of the model's weight bytes
    clip_tolerance: float  # weight values outside the frozen range, as a fraction
    activation_tolerance: float  # see sparse_update.activation_misfit
    refit_epochs: int
    refit_lr: float
    min_agreement: float
    levels: tuple[int, ...] = ()  # step counts a changed int8 weight may move by; (): any
    select_factor: int = 1  # the first refit trains this many times the budget's values

    def budget_for(self, parent: TFLiteFile) -> int:
        if self.budget_bytes is not None:
            return self.budget_bytes
        total = sum(t.nbytes for t in update_tensors(parent))
        return max(1, int(self.budget_fraction * total))


@dataclass(frozen=True)
class FineTuned:
    """A round's fine-tune as the budgeted update takes it: the model it started from
    (the shadow: the parent's float weights), the model it reached, and how."""

    shadow: Classifier
    unconstrained: Classifier  # where the round's data wants the model to go
    X: npt.NDArray[np.float32]  # the round's training data: the Fisher estimate and refits
    y: npt.NDArray[np.int64]
    hp: Hyperparameters


@dataclass(frozen=True)
class Selection:
    """The values a refit trains (a mask per parameter) and the float range each must
    stay in (the frozen grid's, per value)."""

    mask: Mapping[str, npt.NDArray[np.bool_]]
    limits: Mapping[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]


@dataclass(frozen=True)
class Child:
    """A round's int8 child, the float model to continue from, and what changed."""

    exported: ExportResult
    model: Classifier  # the new shadow: its weights are stored with the version
    details: dict[str, Any]  # the round report's details["delta"]


def full_details(
    parent_content: bytes, content: bytes, mode: str, reason: str, extra: dict[str, Any] | None
) -> dict[str, Any]:
    """The delta details of a freshly calibrated child (everything sent: no residual)."""
    return {
        "mode": mode,
        "scales": "recalibrated",
        "reason": reason,
        "budget_bytes": None,
        **describe(TFLiteFile.read(parent_content), TFLiteFile.read(content)),
        "residual_l2": 0.0,
        "pending_values": 0,
        **(extra or {}),
    }


@dataclass(frozen=True)
class ParamLayout:
    """Where each torch parameter sits in a converted TFLite file."""

    tensors: dict[str, str]  # parameter -> TFLite tensor name
    perms: dict[str, tuple[int, ...]]  # parameter axes -> tensor axes (np.transpose)

    @classmethod
    def match(cls, model: nn.Module, float_file: TFLiteFile) -> ParamLayout:
        consts = [t for t in float_file.constants() if t.dtype == np.float32]
        values = {t.name: float_file.values(t.name) for t in consts}
        tensors, perms = {}, {}
        for name, p in model.named_parameters():
            arr = p.detach().cpu().numpy()
            hits = [
                (t.name, perm)
                for t in consts
                if t.size == arr.size
                for perm in [_axes_onto(arr, values[t.name])]
                if perm is not None
            ]
            if len(hits) > 1:  # equal values (e.g. two untrained biases): the names decide
                module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
                hits = [h for h in hits if parse_module_name(h[0]) == module]
            if len(hits) != 1:
                raise LayoutMismatch(
                    f"parameter {name!r} matches {len(hits)} tensors of the converted file"
                )
            tensors[name], perms[name] = hits[0]
        if len(set(tensors.values())) != len(tensors):
            raise LayoutMismatch("two parameters map to one tensor of the converted file")
        return cls(tensors, perms)

    def to_tflite(self, arrays: Mapping[str, npt.ArrayLike]) -> Arrays:
        """Arrays by parameter name (torch layout) -> by tensor name (TFLite layout)."""
        return {
            self.tensors[n]: np.transpose(np.asarray(a), self.perms[n]) for n, a in arrays.items()
        }

    def to_torch(self, arrays: Mapping[str, npt.ArrayLike]) -> Arrays:
        """Arrays by tensor name (TFLite layout) -> by parameter name (torch layout)."""
        out = {}
        for param, tensor in self.tensors.items():
            if tensor in arrays:
                out[param] = np.transpose(np.asarray(arrays[tensor]), np.argsort(self.perms[param]))
        return out


def _axes_onto(arr: npt.NDArray[Any], target: npt.NDArray[Any]) -> tuple[int, ...] | None:
    for perm in itertools.permutations(range(arr.ndim)):
        moved = np.transpose(arr, perm)
        if moved.shape == target.shape and np.array_equal(moved, target):
            return perm
    return None


def params_of(model: nn.Module) -> Arrays:
    return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in model.named_parameters()}


def fisher_diagonal(
    model: Classifier, X: npt.NDArray[np.float32], y: npt.NDArray[np.int64], seed: int = 0
) -> Arrays:
    """Mean squared gradient of the loss per parameter over small batches of (X, y):
    the diagonal of the empirical Fisher information, the loss's curvature."""
    order = np.random.default_rng(seed).permutation(len(y))[:FISHER_SAMPLES]
    Xt = torch.as_tensor(np.ascontiguousarray(X[order], np.float32))
    yt = torch.as_tensor(np.asarray(y[order], np.int64))
    probe = copy.deepcopy(model).eval()
    total = {n: torch.zeros_like(p) for n, p in probe.named_parameters()}
    batches = 0
    for idx in torch.split(torch.arange(len(yt)), FISHER_BATCH):
        probe.zero_grad()
        torch.autograd.backward(nn.functional.cross_entropy(probe.logits(Xt[idx]), yt[idx]))
        for n, p in probe.named_parameters():
            if p.grad is not None:
                total[n] += p.grad.detach() ** 2
        batches += 1
    return {n: (t / max(batches, 1)).numpy().astype(np.float64) for n, t in total.items()}


def refit(
    shadow: Classifier,
    unconstrained: Classifier,
    selection: Selection,
    data: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    hp: Hyperparameters,
) -> Classifier:
    """The shadow with only the selected values trained (from the unconstrained
    model's values), each held inside its limits; every other value stays put."""
    start = copy.deepcopy(shadow)
    target = dict(unconstrained.named_parameters())
    mask, lo, hi, base = {}, {}, {}, {}
    with torch.no_grad():
        for name, p in start.named_parameters():
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


def published_model(template: Classifier, layout: ParamLayout, parent: TFLiteFile) -> Classifier:
    """``template`` holding exactly the parent's int8 weights (dequantized): what the
    edges run, the start of a refit."""
    values = layout.to_torch({t.name: t.dequantize(parent.content) for t in update_tensors(parent)})
    model = copy.deepcopy(template)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.as_tensor(np.asarray(values[name], np.float32)).reshape(p.shape))
    return model


def carry(unconstrained: Classifier, refitted: Classifier, selection: Selection) -> Classifier:
    """The next shadow: the refit values where this round wrote, the unconstrained
    model's (inside the grid's range) everywhere else, so the progress the budget left
    out is sent by later rounds instead of being trained again."""
    out = copy.deepcopy(unconstrained)
    fitted = dict(refitted.named_parameters())
    with torch.no_grad():
        for name, p in out.named_parameters():
            lo = torch.as_tensor(np.asarray(selection.limits[name][0], np.float32))
            hi = torch.as_tensor(np.asarray(selection.limits[name][1], np.float32))
            mask = torch.as_tensor(np.asarray(selection.mask[name], bool))
            p.copy_(torch.where(mask, fitted[name], torch.clamp(p, lo, hi)))
    return out


class BudgetedUpdate:
    """One round's budgeted update: prepared once (conversion, layout, curvature,
    range check), then written for a budget, and again for a larger one when the
    gate asks for more.

    Raises FrozenScalesDoNotFit (re-calibrate) when the layout does not match or
    too many of the unconstrained model's weights fall outside the frozen range.
    """

    def __init__(
        self,
        parent_content: bytes,
        fit: FineTuned,
        calibration: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
        opts: BudgetOptions,
    ) -> None:
        unconstrained, hp, X, y = fit.unconstrained, fit.hp, fit.X, fit.y
        self.unconstrained, self.data, self.calibration = unconstrained, (X, y), calibration
        self.opts = opts
        self.refit_hp = replace(hp, epochs=opts.refit_epochs, lr=opts.refit_lr, seed=hp.seed + 1)
        self.parent = TFLiteFile.read(parent_content)
        self.budget = opts.budget_for(self.parent)
        self.float_file = TFLiteFile.read(convert_float(unconstrained, X.shape[1]))
        try:
            self.layout = ParamLayout.match(unconstrained, self.float_file)
            names = {t.name for t in update_tensors(self.parent)}
            if names != set(self.layout.tensors.values()):
                raise LayoutMismatch("the model's parameters and the parent's int8 layers differ")
        except LayoutMismatch as e:
            raise FrozenScalesDoNotFit("layout", str(e)) from e
        self.wanted = {n: self.float_file.values(n) for n in names}
        self.curvature = self.layout.to_tflite(fisher_diagonal(unconstrained, X, y, hp.seed))
        everything = plan_update(self.parent, self.wanted, 0, self.curvature)
        self.clipped_fraction = everything.clipped_fraction
        if self.clipped_fraction > opts.clip_tolerance:
            raise FrozenScalesDoNotFit(
                "clipping",
                f"{self.clipped_fraction:.2%} of the weights fall outside the frozen int8 range "
                f"(tolerance {opts.clip_tolerance:.2%})",
                {"clipped_fraction": round(self.clipped_fraction, 6)},
            )
        self.limits = _pairs(self.layout, grid_limits(self.parent))
        self.published = published_model(fit.shadow, self.layout, self.parent)

    def child(self, budget: int | None = None) -> Child:
        """The child for ``budget`` changed bytes (default: the round's budget).

        Raises NumericCheckError when the file disagrees with the float model of
        its own weights.
        """
        start = time.perf_counter()
        budget = self.budget if budget is None else budget
        model, selection = self._narrow(budget)
        weights = self.layout.to_tflite(params_of(model))
        artifact, misfit, recalibrated = self._write(weights, budget)
        shadow = carry(self.unconstrained, model, selection)
        carried = self.layout.to_tflite(params_of(shadow))
        scales = "activations" if recalibrated else "frozen"
        reference = float_reference(self.float_file, artifact)
        cal, probe_X = self.calibration
        tfl, agreement = check_against_reference(
            artifact.content, reference, np.concatenate([cal, probe_X]), self.opts.min_agreement
        )
        exported = ExportResult(
            artifact.content,
            sha256_hex(artifact.content),
            probe_set(tfl, probe_X),
            agreement,
            tfl.runtime,
            time.perf_counter() - start,
        )
        details = {
            "mode": "budgeted",
            "scales": scales,
            "reason": None,
            "budget_bytes": budget,
            **describe(self.parent, artifact, carried),
            "selected_values": int(sum(int(m.sum()) for m in selection.mask.values())),
            "pending_values": plan_update(artifact, carried, 0, levels=self.opts.levels).pending,
            "clipped_fraction": round(self.clipped_fraction, 6),
            "activation_misfit": round(misfit, 4),
            "activations_recalibrated": len(recalibrated),
            "refit": {"epochs": self.refit_hp.epochs, "lr": self.refit_hp.lr},
        }
        logger.info(
            "budgeted child %s: %d bytes changed (budget %d), scales %s, residual %.4f",
            exported.sha256[:12],
            details["bytes_changed"],
            budget,
            scales,
            details["residual_l2"],
        )
        return Child(exported, shadow, details)

    def _narrow(self, budget: int) -> tuple[Classifier, Selection]:
        """The refit model and the values it may change: ``select_factor`` times the
        budget's values refit first, then halved by benefit and refit again, down to
        the budget."""
        model, wanted, width = self.unconstrained, self.wanted, max(self.opts.select_factor, 1)
        while True:
            chosen = TFLiteFile.read(
                plan_update(
                    self.parent, wanted, budget * width, self.curvature, self.opts.levels
                ).content
            )
            selected = self.layout.to_torch(
                {n: chosen.values(n) != self.parent.values(n) for n in wanted}
            )
            selection = Selection(selected, self.limits)
            model = refit(self.published, model, selection, self.data, self.refit_hp)
            if width == 1:
                return model, selection
            width = max(width // 2, 1)
            wanted = self.layout.to_tflite(params_of(model))

    def _write(self, weights: Arrays, budget: int) -> tuple[TFLiteFile, float, list[str]]:
        """The weights on the frozen grid; the activation scales that no longer fit are
        re-calibrated, their bytes taken out of the budget (fewer weight changes)."""
        plan = plan_update(self.parent, weights, budget, self.curvature, self.opts.levels)
        artifact = TFLiteFile.read(plan.content)
        reference = float_reference(self.float_file, artifact)
        fresh = TFLiteFile.read(calibrate_int8(reference, self.calibration[0]))
        misfits = activation_misfits(artifact, fresh)
        misfit = max(misfits.values(), default=0.0)
        if misfit <= self.opts.activation_tolerance:
            return artifact, misfit, []
        names = tied_activations(
            artifact, [n for n, m in misfits.items() if m > self.opts.activation_tolerance]
        )
        parent = self.parent.content
        extra = bytes_changed(
            parent, with_activations_from(artifact, fresh, names)
        ) - bytes_changed(parent, plan.content)
        plan = plan_update(
            self.parent, weights, max(budget - extra, 0), self.curvature, self.opts.levels
        )
        artifact = TFLiteFile.read(
            with_activations_from(TFLiteFile.read(plan.content), fresh, names)
        )
        return artifact, misfit, sorted(names)


def _pairs(
    layout: ParamLayout, limits: Mapping[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]
) -> dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    lo = layout.to_torch({t: v[0] for t, v in limits.items()})
    hi = layout.to_torch({t: v[1] for t, v in limits.items()})
    return {n: (lo[n], hi[n]) for n in lo}
