"""The budgeted child: which weights a round may change under a budget of bytes,
those trained on the parent's frozen grid (cloud/export/grid.py), and a checked
int8 file. docs/ARCHITECTURE.md ("Small deltas: budgeted rounds") has the
measurements behind each choice, and what was tried and not kept.

A ``budgeted`` round (cloud/trainer/rounds.py) goes:

1. **unconstrained**: the round's normal fine-tune of the shadow, exactly what a
   ``full`` round exports. It says where the model wants to go.
2. **select**: its weights on the parent's frozen grid, ranked by Fisher-weighted
   benefit per byte (below); the top ones under the budget are the weights this
   round may change.
3. **refit**: from the published weights (the parent's int8 values), with the
   selected weights set to the unconstrained values, train only the selected
   weights, held inside the grid's range, so that they make up for the ones
   left out. The selection is narrowed down to the budget in steps
   (``select_factor``, default 4): the first refit trains four times the
   budget's values, the better half of its result (by the same benefit, now
   of the refit values) is refit again, and so on down to the budget, so the
   weights that end up written are the ones that matter once the others have
   been allowed to move, not the unconstrained model's guess (three streams of
   ``edgeloop bench deltas --quick``: 0.968, 0.968, 0.965 at 900 values a
   round, where one refit of the budget's values ended at 0.962, 0.963, 0.958
   with 1100). Each step is one more refit (a round takes ~1.7 s longer).
4. **write**: the refit model on the parent's grid under the same budget. When
   a fresh calibration of those weights finds activation ranges that no longer
   fit, its activation scales are taken (weights stay frozen). The numeric
   check compares the file with a float model of exactly its weights.

Why refit rather than write the unconstrained model's top changes: Adam moves
every weight by about the learning rate per step, more than one quantization
step, so an unconstrained round changes about 65% of the int8 values; writing
its top 1400 a round (error feedback alone) left the rotated digits at 0.88
after 10 drifted rounds while the unconstrained model was at 0.97, and
refitting the same 1400 tracked the unconstrained model round by round.

**Ranking.** A candidate change of value i moves the published weight from
``q·s`` to ``t·s`` while the trainer's float model holds ``w``. Around a trained
model the loss grows like ``½ Σ F_i (w_i − published_i)²`` (second-order
Taylor with the diagonal Fisher information F as the curvature, the saliency
of Optimal Brain Damage; cloud/learning/fisher.py), so writing value i lowers
the expected loss gap by ``½ F_i ((w − q·s)² − (w − t·s)²)``. Candidates are
taken by that benefit per byte (1 for int8, the differing bytes of an int32
bias) until the budget is spent (``plan_update``). Without a Fisher estimate
the curvature is taken as 1/s² (distance in quantization steps), which
ranked worse offline (0.43 on rotated digits after 12 rounds against 0.79).

**Residual.** Whatever is not written stays in the trainer's float model, so
the next round's candidates (its model on this grid vs the newly published
bytes) include it again: planning twice with budget B sends what planning once
with 2B sends (error feedback; nothing is lost, only delayed). The new shadow
(its float weights are stored with the version) is the unconstrained model
with the refit values where this round wrote (``carry``), held inside the
grid's range, so the next round trains on from the whole progress, not from
the refit alone (0.962-0.970 at 966 B a round where a shadow that is the
refit model ended at 0.950-0.957).

The torch model and the converted TFLite file are matched parameter by
parameter (cloud/export/param_layout.py).

>>> benefit(w=np.array([0.30, 0.10]), q=np.array([0, 1]), t=np.array([3, 1]),
...         scale=np.array([0.1, 0.1]), curvature=np.ones(2)).round(4).tolist()
[0.09, 0.0]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.export.artifact import Artifact
from cloud.export.exporter import (
    ExportResult,
    NumericCheckError,
    agreement,
    calibrate_int8,
    convert_float,
    probe_set,
)
from cloud.export.grid import (
    activation_misfits,
    bytes_changed,
    describe,
    float_reference,
    grid_limits,
    grid_range,
    grid_target,
    grid_zero_point,
    on_levels,
    tied_activations,
    update_tensors,
    with_activations_from,
)
from cloud.export.int8_check import NotInt8, check_all_int8
from cloud.export.param_layout import Arrays, LayoutMismatch, ParamLayout, params_of
from cloud.export.refit import Selection, carry, published_model, refit
from cloud.export.tflite_file import Tensor, TFLiteFile
from cloud.learning.fisher import fisher_diagonal
from cloud.learning.models import TaskModel
from cloud.learning.training import Hyperparameters
from shared.codec import sha256_hex
from shared.errors import EdgeloopError, ModelRejected
from shared.task import TaskSpec

logger = logging.getLogger(__name__)

#: After the gate refuses a budgeted child, the budgets tried next, as multiples.
ESCALATION = (2, 4)

FloatArray = npt.NDArray[np.float64]


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
    activation_tolerance: float  # see grid.activation_misfits
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

    shadow: TaskModel
    unconstrained: TaskModel  # where the round's data wants the model to go
    X: npt.NDArray[Any]  # the round's training data: the Fisher estimate and refits
    y: npt.NDArray[Any]  # class indices or targets
    hp: Hyperparameters


@dataclass(frozen=True)
class Child:
    """A round's int8 child, the float model to continue from, and what changed."""

    exported: ExportResult
    model: TaskModel  # the new shadow: its weights are stored with the version
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


# -- ranking under the budget ------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The int8 file a budget allows, and what was left out."""

    content: bytes
    budget: int
    weight_bytes_changed: int  # bytes of weight and bias data that differ from the parent
    candidates: int  # values whose grid target differs from the parent's
    pending: int  # of those, not written (the residual still to send)
    clipped: int  # weight values whose target fell outside the int8 range
    weights: int  # int8 weight values in all layers
    targets: dict[str, npt.NDArray[np.int64]] = field(repr=False)  # grid image of the child

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.weights if self.weights else 0.0


def benefit(
    w: FloatArray, q: npt.ArrayLike, t: npt.ArrayLike, scale: FloatArray, curvature: FloatArray
) -> FloatArray:
    """Expected loss decrease (up to ½) of moving a published value from q·s to t·s."""
    before = w - np.asarray(q, np.float64) * scale
    after = w - np.asarray(t, np.float64) * scale
    return np.asarray(curvature * (before * before - after * after), np.float64)


def plan_update(
    parent: TFLiteFile,
    weights: Mapping[str, npt.ArrayLike],
    budget: int,
    curvature: Mapping[str, npt.ArrayLike] | None = None,
    levels: Sequence[int] = (),
) -> Plan:
    """Write the most valuable changes of ``weights`` (float, TFLite layout, by tensor
    name) onto ``parent``'s grid, changing at most ``budget`` bytes of weight data;
    with ``levels``, an int8 weight moves only by one of those step counts."""
    found = [_candidates(parent, t, weights, curvature, levels) for t in update_tensors(parent)]
    score = np.concatenate([c.score for c in found]) if found else np.zeros(0)
    cost = np.concatenate([c.cost for c in found]) if found else np.zeros(0, np.int64)
    order = np.argsort(-score, kind="stable")
    take = np.zeros(len(score), bool)
    take[order[np.cumsum(cost[order]) <= budget]] = True
    new_values, start = {}, 0
    for c in found:
        chosen = c.changed[take[start : start + len(c.changed)]]
        start += len(c.changed)
        values = c.current.copy()
        values.flat[chosen] = c.target.flat[chosen]
        new_values[c.tensor.name] = values
    int8 = [c for c in found if c.tensor.dtype == np.int8]
    return Plan(
        content=parent.with_values(new_values),
        budget=budget,
        weight_bytes_changed=int(cost[take].sum()),
        candidates=len(score),
        pending=int(len(score) - take.sum()),
        clipped=sum(c.clipped for c in int8),
        weights=sum(c.tensor.size for c in int8),
        targets={c.tensor.name: c.target for c in found},
    )


@dataclass(frozen=True)
class _Candidates:
    """One tensor's values whose grid target differs from what the parent holds."""

    tensor: Tensor
    current: npt.NDArray[np.int64]  # the parent's values
    target: npt.NDArray[np.int64]  # the child's weights on the grid (and on the levels)
    clipped: int  # values whose target fell outside the range
    changed: npt.NDArray[np.intp]  # flat indices where target and current differ
    score: FloatArray  # benefit per byte of each changed value
    cost: npt.NDArray[np.int64]  # bytes each changed value changes


def _candidates(
    parent: TFLiteFile,
    t: Tensor,
    weights: Mapping[str, npt.ArrayLike],
    curvature: Mapping[str, npt.ArrayLike] | None,
    levels: Sequence[int],
) -> _Candidates:
    if t.name not in weights:
        raise LayoutMismatch(f"the child has no weights for the parent's {t.name!r}")
    w = np.asarray(weights[t.name], np.float64)
    if w.size != t.size:
        raise LayoutMismatch(f"{t.name}: child has {w.size} values, the parent {t.size}")
    w = w.reshape(t.shape)
    q = t.values(parent.content).astype(np.int64)
    target, clipped = grid_target(t, w)
    if t.dtype == np.int8 and levels:
        target = on_levels(q, target, levels, *grid_range(t))
    s = np.broadcast_to(t.channel_scales(), t.shape)
    curv = (
        np.broadcast_to(np.asarray(curvature[t.name], np.float64).reshape(t.shape), t.shape)
        if curvature is not None and t.name in curvature
        else 1.0 / (s * s)
    )
    changed = np.flatnonzero(target != q)
    cost = _byte_cost(t, q, target).ravel()[changed]
    zp = grid_zero_point(t)
    gain = benefit(w, q - zp, target - zp, s, curv)
    return _Candidates(t, q, target, clipped, changed, gain.ravel()[changed] / cost, cost)


def _byte_cost(t: Tensor, q: npt.NDArray[np.int64], target: npt.NDArray[np.int64]) -> Any:
    """Bytes that change per value (1 for int8; the differing bytes of wider ints)."""
    if t.dtype.itemsize == 1:
        return np.ones(q.shape, np.int64)
    a = q.astype(t.dtype).view(np.uint8).reshape(*q.shape, t.dtype.itemsize)
    b = target.astype(t.dtype).view(np.uint8).reshape(*q.shape, t.dtype.itemsize)
    return np.maximum((a != b).sum(axis=-1), 1)


# -- the update --------------------------------------------------------------------


def check_against_reference(
    content: bytes, reference: bytes, X: npt.NDArray[Any], task: TaskSpec, min_agreement: float
) -> tuple[Artifact, float]:
    """The int8 file and the float model of the same weights, both in the edge runtime:
    all-int8, and agreeing (``exporter.agreement``) on ``X`` at least ``min_agreement``."""
    try:
        check_all_int8(content)
    except NotInt8 as e:
        raise NumericCheckError(f"the budgeted file is not all-int8: {e}") from e
    try:
        tfl = Artifact(content, name="budgeted")
        ref = Artifact(reference, name="float reference")
    except ModelRejected as e:
        raise NumericCheckError(f"the edge runtime refuses the budgeted file: {e}") from e
    agreed = agreement(task, tfl.answers(X), ref.answers(X))
    if agreed < min_agreement:
        raise NumericCheckError(
            f"the budgeted int8 file agrees with the float model of its own weights on "
            f"{agreed:.1%} of {len(X)} inputs in {tfl.runtime}; need {min_agreement:.1%}"
        )
    return tfl, agreed


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
        calibration: tuple[npt.NDArray[Any], npt.NDArray[Any]],
        opts: BudgetOptions,
    ) -> None:
        unconstrained, hp, X, y = fit.unconstrained, fit.hp, fit.X, fit.y
        self.unconstrained, self.data, self.calibration = unconstrained, (X, y), calibration
        self.opts = opts
        self.refit_hp = replace(hp, epochs=opts.refit_epochs, lr=opts.refit_lr, seed=hp.seed + 1)
        self.parent = TFLiteFile.read(parent_content)
        self.budget = opts.budget_for(self.parent)
        self.float_file = TFLiteFile.read(convert_float(unconstrained))
        try:
            self.layout = ParamLayout.match(unconstrained, self.float_file)
            names = {t.name for t in update_tensors(self.parent)}
            if names != self.layout.tensor_names():
                raise LayoutMismatch("the model's parameters and the parent's int8 layers differ")
        except LayoutMismatch as e:
            raise FrozenScalesDoNotFit("layout", str(e)) from e
        self.wanted = {n: self.float_file.values(n) for n in names}
        self.curvature = self.layout.curvature_to_tflite(
            fisher_diagonal(unconstrained, X, y, hp.seed)
        )
        everything = plan_update(self.parent, self.wanted, 0, self.curvature)
        self.clipped_fraction = everything.clipped_fraction
        if self.clipped_fraction > opts.clip_tolerance:
            raise FrozenScalesDoNotFit(
                "clipping",
                f"{self.clipped_fraction:.2%} of the weights fall outside the frozen int8 range "
                f"(tolerance {opts.clip_tolerance:.2%})",
                {"clipped_fraction": round(self.clipped_fraction, 6)},
            )
        self.limits = self.layout.limits_to_torch(grid_limits(self.parent))
        # the unconstrained model, not the shadow: a folded norm's statistics are its
        self.published = published_model(unconstrained, self.layout, self.parent)

    def child(self, budget: int | None = None) -> Child:
        """The child for ``budget`` changed bytes (default: the round's budget).

        Raises NumericCheckError when the file disagrees with the float model of
        its own weights.
        """
        start = time.perf_counter()
        budget = self.budget if budget is None else budget
        model, selection = self._narrow(budget)
        weights = self.layout.weights(params_of(model))
        artifact, misfit, recalibrated = self._write(weights, budget)
        shadow = carry(self.unconstrained, model, selection)
        carried = self.layout.weights(params_of(shadow))
        scales = "activations" if recalibrated else "frozen"
        reference = float_reference(self.float_file, artifact)
        cal, probe_X = self.calibration
        task = self.unconstrained.task
        tfl, agreed = check_against_reference(
            artifact.content,
            reference,
            np.concatenate([cal, probe_X]),
            task,
            self.opts.min_agreement,
        )
        probe = probe_set(tfl, probe_X, task)
        seconds = time.perf_counter() - start
        exported = ExportResult(
            artifact.content, sha256_hex(artifact.content), probe, agreed, tfl.runtime, seconds
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

    def _narrow(self, budget: int) -> tuple[TaskModel, Selection]:
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
            selected = self.layout.masks_to_torch(
                {n: chosen.values(n) != self.parent.values(n) for n in wanted}
            )
            selection = Selection(selected, self.limits)
            model = refit(self.published, model, selection, self.data, self.refit_hp)
            if width == 1:
                return model, selection
            width = max(width // 2, 1)
            wanted = self.layout.weights(params_of(model))

    def _write(self, weights: Arrays, budget: int) -> tuple[TFLiteFile, float, list[str]]:
        """The weights on the frozen grid; the activation scales that no longer fit are
        re-calibrated, their bytes taken out of the budget (fewer weight changes)."""
        plan = plan_update(self.parent, weights, budget, self.curvature, self.opts.levels)
        artifact = TFLiteFile.read(plan.content)
        reference = float_reference(self.float_file, artifact)
        fresh = TFLiteFile.read(
            calibrate_int8(reference, self.calibration[0], self.unconstrained.task)
        )
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
