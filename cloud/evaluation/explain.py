"""The explanation a version carries in its signed manifest: why it exists, what it changed.

``explain_version`` fills every typed section of ``shared.messages.Explanation``:

- the data window (stream id range, new labels per class, the trigger and its numbers);
- metrics of parent and child on earlier data (the holdout reservoir) and the
  recent window: accuracy, per-class recall, expected calibration error (a
  regressor: MAE, RMSE, R²);
- forgetting (the task's metric on held-out data outside the recent window, parent vs child);
- predictions that flipped on the evaluation set (a regressor: samples whose
  error shrank or grew past a tolerance), with stable sample ids;
- per-layer change (``cloud.evaluation.layer_diff``, or the trainer's own delta report);
- feature attribution shift on a probe set (``cloud.evaluation.attribution``);
- a plain-language summary in which every clause comes from one of those numbers.

Metrics and flips come from the ARTIFACTS, the int8 files run in the edge runtime,
as the gate judges them; the torch models are used only for attribution. A
version without a parent (the bootstrap) gets the same sections with its parent
sides empty, and a note saying so.

>>> from shared.messages import ModelMetrics, SetMetrics
>>> e = Explanation(format=2, window=DataWindow(source="feedback_stream", new_samples=40,
...     training_samples=900, trigger=TriggerSignal(kind="count", threshold_samples=40)),
...     evaluation=EvaluationReport(parent=None, child=ModelMetrics(
...         earlier=SetMetrics(samples=10, accuracy=0.9), recent=SetMetrics())),
...     flips=Flips(), weights=WeightChange(source="none"))
>>> print(summarize(e))
Retrained after 40 new labels (threshold 40), on 900 samples (40 new). Held-out accuracy is 0.900; there is no parent to compare with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.evaluation.attribution import IG_STEPS, attribution_shift
from cloud.evaluation.comparison import (
    EVAL_SETS,
    FLIP_EXAMPLES,
    Proba,
    flips,
    metric_on,
    model_metrics,
    older_than_recent,
    predict_sets,
)
from cloud.evaluation.gate import HeldOut, Samples
from cloud.evaluation.layer_diff import compare_artifacts, from_trainer_report
from cloud.export.artifact import Artifact
from cloud.learning.models import TaskModel
from shared.messages import (
    EXPLANATION_FORMAT,
    DataWindow,
    EvaluationReport,
    Explanation,
    Flips,
    Forgetting,
    ModelMetrics,
    SetMetrics,
    TriggerSignal,
    WeightChange,
)
from shared.task import TaskSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Side:
    """One version as the explainer sees it: its torch model and its int8 artifact."""

    model: TaskModel
    artifact: Artifact
    content: bytes


@dataclass(frozen=True)
class RoundRecord:
    """What the round that made a version records of itself (its ``RoundReport``)."""

    trigger: str
    data_window: dict[str, Any]
    hyperparameters: dict[str, Any]
    details: dict[str, Any]


@dataclass(frozen=True)
class ExplainOptions:
    probe_size: int = 48  # attribution probe: half recent window, half earlier data
    ig_steps: int = IG_STEPS
    flip_examples: int = FLIP_EXAMPLES
    grid: tuple[int, ...] | None = None  # the input's shape, for names like r3c4 (and ch1)


def explain_version(
    record: RoundRecord,
    child: Side,
    parent: Side | None,
    data: HeldOut,
    options: ExplainOptions | None = None,
) -> Explanation:
    """Every section of the explanation of ``child`` (published after ``parent``, if any)."""
    opts = options or ExplainOptions()
    sets = dict(zip(EVAL_SETS, (data.earlier, data.recent), strict=True))
    child_p = predict_sets(child.artifact, sets)
    parent_m: ModelMetrics | None = None
    parent_p: dict[str, Proba] | None = None
    flipped = Flips()
    if parent is not None:
        parent_p = predict_sets(parent.artifact, sets)
        parent_m = model_metrics(parent_p, sets, data.task)
        flipped = flips(sets, parent_p, child_p, data.task, opts.flip_examples)
    probe = _probe(data.recent, data.earlier, opts.probe_size)
    explanation = Explanation(
        format=EXPLANATION_FORMAT,
        trigger=record.trigger,
        data_window=record.data_window,
        hyperparameters=record.hyperparameters,
        details=record.details,
        window=window_of(record, data),
        evaluation=EvaluationReport(parent=parent_m, child=model_metrics(child_p, sets, data.task)),
        forgetting=_forgetting(sets, parent_p, child_p, data.task),
        flips=flipped,
        weights=_weights(record.details, parent, child),
        attribution=attribution_shift(
            parent.model if parent else None,
            child.model,
            probe,
            grid=opts.grid,
            steps=opts.ig_steps,
        ),
        notes=_notes(parent, data),
    )
    explanation.summary = summarize(explanation)
    return explanation


def window_of(record: RoundRecord, data: HeldOut) -> DataWindow:
    """The typed data window from a round's (or the bootstrap's) window record."""
    trigger, window = record.trigger, record.data_window
    earlier, recent = len(data.earlier[1]), len(data.recent[1])
    signal = window.get("signal") or {}
    ids = window.get("stream_ids") or [None, None]
    per_class = {str(k): int(v) for k, v in (window.get("labeled_per_class") or {}).items()}
    seeded = trigger == "bootstrap"
    return DataWindow(
        source="seed_split" if seeded else "feedback_stream",
        first_stream_id=ids[0],
        last_stream_id=ids[-1],
        new_samples=int(
            window.get("seed_split" if seeded else "new_samples", sum(per_class.values()))
        ),
        labeled_per_class=per_class,
        training_samples=int(window.get("seed_split" if seeded else "training_samples", 0)),
        earlier_samples=earlier,
        recent_samples=recent,
        trigger=TriggerSignal(
            kind=trigger,
            served_accuracy=signal.get("served_accuracy"),
            served_level=signal.get("level"),
            drop_threshold=signal.get("drop", signal.get("rise")),
            threshold_samples=signal.get("threshold"),
            interval_s=signal.get("interval_s"),
            metric=signal.get("metric", "accuracy"),
            served_value=signal.get("served_value", signal.get("served_accuracy")),
        ),
    )


def _forgetting(
    sets: dict[str, Samples],
    parent_p: dict[str, Proba] | None,
    child_p: dict[str, Proba],
    task: TaskSpec,
) -> Forgetting:
    """The task's metric on the held-out samples older than the recent window, parent vs child."""
    older = older_than_recent(sets)
    y_old = sets["earlier"][1]
    p_early = metric_on(parent_p["earlier"], y_old, older, task) if parent_p is not None else None
    c_early = metric_on(child_p["earlier"], y_old, older, task)
    digits = 4 if task.is_classification else 6
    change = (
        round(c_early - p_early, digits) if c_early is not None and p_early is not None else None
    )
    out = Forgetting(
        samples=int(older.sum()),
        change=change,
        metric=task.metric,
        parent_value=p_early,
        child_value=c_early,
    )
    if task.is_classification:
        out.parent_accuracy, out.child_accuracy = p_early, c_early
    return out


def _notes(parent: Side | None, data: HeldOut) -> list[str]:
    notes = []
    if parent is None:
        notes.append(
            "first version: no parent, so parent metrics, flips and weight change are empty"
        )
    if len(data.recent[1]) == 0:
        notes.append("no recent window yet: recent metrics are empty")
    return notes


def _weights(details: dict[str, Any], parent: Side | None, child: Side) -> WeightChange:
    """The trainer's per-layer report when the round wrote one, completed from the files."""
    measured = compare_artifacts(parent.content if parent else None, child.content)
    if parent is None:
        return measured
    return from_trainer_report(details.get("delta"), measured) or measured


def _probe(recent: Samples, earlier: Samples, size: int) -> npt.NDArray[np.float32]:
    """Up to ``size`` inputs: the newest half from the recent window, the rest earlier data."""
    take = min(len(recent[0]), size // 2)
    rest = earlier[0][: size - take]
    return np.concatenate([recent[0][:take], rest]).astype(np.float32)


# -- the summary ---------------------------------------------------------------


def _name(metric: str) -> str:
    return "MAE" if metric == "mae" else metric


def _move(before: float | None, after: float | None, digits: int = 3) -> str | None:
    if before is None or after is None:
        return None
    if round(after, digits) > round(before, digits):
        return f"rose from {before:.{digits}f} to {after:.{digits}f}"
    if round(after, digits) < round(before, digits):
        return f"fell from {before:.{digits}f} to {after:.{digits}f}"
    return f"stayed at {after:.{digits}f}"


def _why(e: Explanation) -> str:
    w = e.window
    assert w is not None
    t = w.trigger
    if t.kind == "bootstrap":
        dataset = e.data_window.get("dataset", "the dataset's")
        return f"First version, trained from scratch on {w.training_samples} samples of the {dataset} seed split"
    if t.kind == "drift" and t.served_accuracy is not None and t.served_level is not None:
        why = f"after served accuracy dropped to {t.served_accuracy:.3f} from a level of {t.served_level:.3f} (drift)"
    elif t.kind == "drift" and t.served_value is not None and t.served_level is not None:
        why = (
            f"after the served {_name(t.metric)} rose to {t.served_value:.4g} from a level of "
            f"{t.served_level:.4g} (drift)"
        )
    elif t.kind == "count":
        why = f"after {w.new_samples} new labels" + (
            f" (threshold {t.threshold_samples})" if t.threshold_samples else ""
        )
    elif t.kind == "timer" and t.interval_s is not None:
        why = f"on the {t.interval_s:g} s round timer with {w.new_samples} new labels"
    else:
        why = f"on a {t.kind} trigger"
    return f"Retrained {why}, on {w.training_samples} samples ({w.new_samples} new)"


def summarize(e: Explanation) -> str:
    """Two or three sentences, each clause built from a number in ``e``."""
    assert e.evaluation is not None and e.flips is not None and e.weights is not None
    sentences = [_why(e) + "."]
    child, parent = e.evaluation.child, e.evaluation.parent
    regression = child.earlier.mae is not None or child.recent.mae is not None
    if parent is None:
        first = _first_figures(child.earlier) if regression else _first_accuracy(child.earlier)
        if first:
            sentences.append(first)
    else:
        clauses = _regression_clauses(e) if regression else _classification_clauses(e)
        sentences.append(_capitalize("; ".join(clauses)) + ".")
        where = _where(e)
        if where:
            sentences.append(where)
    return " ".join(sentences)


def _first_accuracy(m: SetMetrics) -> str | None:
    if m.accuracy is None:
        return None
    ece = f" (calibration error {m.ece:.3f})" if m.ece is not None else ""
    return f"Held-out accuracy is {m.accuracy:.3f}{ece}; there is no parent to compare with."


def _first_figures(m: SetMetrics) -> str | None:
    if m.mae is None:
        return None
    r2 = f", R² {m.r2:.3f}" if m.r2 is not None else ""
    return (
        f"Held-out MAE is {m.mae:.4g} (RMSE {m.rmse:.4g}{r2}); there is no parent to compare with."
    )


def _classification_clauses(e: Explanation) -> list[str]:
    assert e.evaluation is not None and e.evaluation.parent is not None and e.flips is not None
    child, parent = e.evaluation.child, e.evaluation.parent
    clauses = []
    recent = _move(parent.recent.accuracy, child.recent.accuracy)
    if recent:
        clauses.append(f"recent-window accuracy {recent}")
    f = e.forgetting
    older = _move(f.parent_accuracy, f.child_accuracy) if f is not None else None
    if f is not None and older:
        clauses.append(f"accuracy on {f.samples} older held-out samples {older}")
    fixed, broken, compared = e.flips.fixed, e.flips.broken, e.flips.compared
    clauses.append(f"{fixed} predictions were fixed and {broken} broken out of {compared}")
    return clauses


def _regression_clauses(e: Explanation) -> list[str]:
    assert e.evaluation is not None and e.evaluation.parent is not None and e.flips is not None
    child, parent = e.evaluation.child, e.evaluation.parent
    clauses = []
    recent = _move(parent.recent.mae, child.recent.mae)
    if recent:
        clauses.append(f"recent-window MAE {recent}")
    f = e.forgetting
    older = _move(f.parent_value, f.child_value) if f is not None else None
    if f is not None and older:
        clauses.append(f"MAE on {f.samples} older held-out samples {older}")
    fl = e.flips
    clauses.append(
        f"the error of {fl.fixed} samples shrank and of {fl.broken} grew by more than "
        f"{fl.tolerance or 0.0:.3g} out of {fl.compared}"
    )
    return clauses


def _where(e: Explanation) -> str | None:
    clauses = []
    layers = [x for x in (e.weights.layers if e.weights else []) if x.relative_change is not None]
    if layers:
        top = max(layers, key=lambda x: x.relative_change or 0.0)
        clauses.append(
            f"layer {top.name} moved most (relative change {top.relative_change:.3f}, "
            f"{(top.bytes_changed_fraction or 0) * 100:.0f}% of its bytes)"
        )
    held = e.weights.residual_l2 if e.weights else None
    if held:
        clauses.append(f"a change of L2 norm {held:.3f} is held back for later rounds")
    held = e.weights.residual_l2 if e.weights else None
    if held:
        clauses.append(f"a change of L2 norm {held:.3f} is held back for later rounds")
    a = e.attribution
    if a is not None and a.shift_score is not None and a.gained and a.lost:
        kind = "pixel" if a.grid else "input"
        clauses.append(
            f"attribution shifted by {a.shift_score:.2f} (0..1) toward {kind} {a.gained[0].feature} "
            f"and away from {a.lost[0].feature}"
        )
    return _capitalize("; ".join(clauses)) + "." if clauses else None


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]
