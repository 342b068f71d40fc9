"""One round, end to end: parent -> train -> export -> gate -> publish (or reject).

Also the bootstrap, the round that makes version 1 from the dataset's seed
split. Every outcome becomes a ``RoundReport``: what triggered it, on what data,
with which hyperparameters, the parent's and child's numbers, how long each
stage took, and whether (and why) the child was published. A published
version's manifest carries the same facts as its ``Explanation``.

The float weights of every published version are stored next to it
(``FleetKeys.weights``), so that the next round fine-tunes from exactly the
parent the edges run, even in a trainer that just started.

A round's child is written on the parent's frozen int8 grid under a budget of
changed bytes (``update_mode = "budgeted"``, cloud/export/budgeted.py), so its
patch is small; the stored weights are then the trainer's shadow, which holds
what the budget left for later rounds. When the gate refuses that child, or it
trails the round's unconstrained model on the recent window by more than
``update_max_loss`` (a drift the budget cannot follow), more is shipped if a
fresh export (new scales) would do better: a larger budget on the same grid if
that comes within ``update_max_loss`` of it, else the fresh export. A child is
also re-calibrated when the grid no longer fits the weights.
``details["delta"]`` says which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from cloud.data.datasets import Split
from cloud.data.replay import TrainerData
from cloud.evaluation.explain import ExplainOptions, RoundRecord, Side, explain_version
from cloud.evaluation.gate import Decision, GateRule, HeldOut, Metrics, Samples, evaluate, gate
from cloud.export.budgeted import (
    ESCALATION,
    BudgetedUpdate,
    Child,
    FineTuned,
    FrozenScalesDoNotFit,
    full_details,
)
from cloud.export.exporter import ExportError, ExportResult, NumericCheckError, export_int8
from cloud.learning.models import (
    Classifier,
    build_model,
    load_weights,
    predict_proba,
    weights_to_bytes,
)
from cloud.learning.training import Hyperparameters, bootstrap, fine_tune
from cloud.registry.publisher import Publisher, PublishRequest, StaleParent
from cloud.trainer.settings import TrainerSettings
from shared.errors import EdgeloopError
from shared.keys import FleetKeys
from shared.messages import Explanation
from shared.runtime import TFLiteModel

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class RoundError(EdgeloopError):
    """A round cannot run (no parent, no weights for the parent, no data)."""


@dataclass
class RoundReport:
    round: int
    trigger: str
    published: bool
    reason: str
    version: int | None = None
    sha256: str | None = None
    parent_version: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    data_window: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> RoundRecord:
        """What the version's explanation repeats of this report."""
        return RoundRecord(self.trigger, self.data_window, self.hyperparameters, self.details)


@dataclass(frozen=True)
class Parent:
    """The latest version: what a round fine-tunes, and what its child must beat."""

    version: int
    sha256: str
    content: bytes
    model: Classifier  # its stored float weights (after a budgeted round: the shadow)
    artifact: TFLiteModel

    @property
    def side(self) -> Side:
        return Side(self.model, self.artifact, self.content)


@dataclass(frozen=True)
class Round:
    """One round's inputs: the parent, the training set, the held-out data, the hyperparameters."""

    parent: Parent
    X: FloatArray  # the replay buffer and the recent-training ring
    y: IntArray
    held_out: HeldOut
    hp: Hyperparameters


class RoundRunner:
    """Runs bootstrap and rounds for one model; caches the parent between rounds."""

    def __init__(
        self,
        settings: TrainerSettings,
        client: redis.Redis,
        publisher: Publisher,
        data: TrainerData,
        parts: Split,
    ) -> None:
        self.settings = settings
        self.client = client
        self.keys = FleetKeys(settings.fleet)
        self.publisher = publisher
        self.data = data
        self.parts = parts
        self.labels = parts.seed_train.labels
        self.rule = GateRule(settings.min_gain, settings.forgetting_tolerance)
        self._parent: Parent | None = None

    # -- bootstrap ------------------------------------------------------------

    def bootstrap(self) -> RoundReport:
        """Version 1 from the seed split; seeds the replay buffer and the holdout once."""
        t0 = time.perf_counter()
        epochs, seed = self.settings.bootstrap_epochs, self.settings.seed
        self._seed_stores(seed)
        result = bootstrap(self.parts.seed_train, self._hyperparameters(epochs, seed))
        t1 = time.perf_counter()
        exported = self._export(result.model, self.parts.seed_train.X, seed=seed)
        t2 = time.perf_counter()
        held_out = self._held_out()
        earlier = evaluate(TFLiteModel(exported.content), held_out.earlier, self.labels)
        metrics = {
            "earlier_accuracy": earlier.accuracy or 0.0,
            "earlier_samples": float(earlier.samples),
            "int8_agreement": exported.agreement,
        }
        counts = np.bincount(self.parts.seed_train.y, minlength=len(self.labels))
        report = RoundReport(
            round=0,
            trigger="bootstrap",
            published=True,
            reason="first version",
            metrics=metrics,
            data_window={
                "dataset": self.parts.seed_train.name,
                "seed_split": len(self.parts.seed_train.y),
                "labeled_per_class": {self.labels[c]: int(n) for c, n in enumerate(counts)},
            },
            hyperparameters=result.hyperparameters,
            details={"earlier_recall": earlier.recall},
        )
        explanation = self._explain(report, _side(result.model, exported), None, held_out)
        t3 = time.perf_counter()
        self._publish(report, result.model, exported, None, explanation)
        report.timings.update(train_s=t1 - t0, export_s=t2 - t1, publish_s=time.perf_counter() - t3)
        return report

    def _seed_stores(self, seed: int) -> None:
        """The seed split into the replay buffer and the holdout, unless they hold data."""
        counters = self.data.read_counters(self.client)
        if not any(counters.replay) and not any(counters.holdout):
            train, holdout = self.parts.seed_train, self.parts.seed_holdout
            self.data.seed(train.X, train.y, holdout=False, seed=seed)
            self.data.seed(holdout.X, holdout.y, holdout=True, seed=seed + 1)

    # -- a round --------------------------------------------------------------

    def run(
        self, round_no: int, trigger: str, window: dict[str, Any], may_publish: Callable[[], bool]
    ) -> RoundReport:
        """Fine-tune the latest version on the trainer's data; publish the child if the gate agrees."""
        t0 = time.perf_counter()
        rnd = self._start(round_no)
        report = RoundReport(
            round=round_no,
            trigger=trigger,
            published=False,
            reason="",
            parent_version=rnd.parent.version,
            data_window={
                **window,
                "training_samples": len(rnd.y),
                "recent_holdout": len(rnd.held_out.recent[1]),
                "earlier_holdout": len(rnd.held_out.earlier[1]),
            },
            hyperparameters=rnd.hp.as_dict(),
        )
        trained = fine_tune(rnd.parent.model, rnd.X, rnd.y, rnd.hp).model
        report.timings["train_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            child, update = self._child(rnd, trained)
        except ExportError as e:
            report.reason = f"export refused: {e}"
            return report
        finally:
            report.timings["export_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        child, decision = self._judge(rnd, child, update)
        report.timings["gate_s"] = time.perf_counter() - t2
        _report_decision(report, child, decision)
        if not decision.publish:
            return report
        if not may_publish():
            report.reason = "lease lost before publishing; another trainer runs rounds now"
            return report
        explanation = self._explain(
            report, _side(child.model, child.exported), rnd.parent.side, rnd.held_out
        )
        t3 = time.perf_counter()
        try:
            self._publish(report, child.model, child.exported, rnd.parent.sha256, explanation)
        except StaleParent as e:
            report.published, report.reason = False, str(e)
        report.timings["publish_s"] = time.perf_counter() - t3
        return report

    def parent(self) -> Parent:
        """The latest version, cached by sha256."""
        latest = self.publisher.latest(self.settings.model)
        if latest is None:
            raise RoundError(
                f"no version of {self.settings.model} is published yet; bootstrap first"
            )
        version, sha, _ = latest
        if self._parent is None or self._parent.sha256 != sha:
            blob = self.client.get(self.keys.weights(sha))
            if blob is None:
                raise RoundError(f"v{version} ({sha[:12]}) has no stored weights to fine-tune from")
            if isinstance(blob, str):
                raise RoundError("the trainer needs a Redis client without decode_responses")
            model = build_model(self.parts.seed_train, seed=self.settings.seed)
            load_weights(model, blob)
            content = self.publisher.content(sha)
            self._parent = Parent(
                version, sha, content, model, TFLiteModel(content, version=version)
            )
        return self._parent

    def _start(self, round_no: int) -> Round:
        """The parent and the trainer's data as they are now."""
        parent = self.parent()
        X, y = self.data.training_set()
        hp = self._hyperparameters(self.settings.epochs, self.settings.seed + round_no)
        return Round(parent, X, y, self._held_out(), hp)

    def _held_out(self) -> HeldOut:
        return HeldOut(self.data.holdout_set(), self.data.recent_set(), self.labels)

    def _hyperparameters(self, epochs: int, seed: int) -> Hyperparameters:
        settings = self.settings
        return Hyperparameters(
            epochs, settings.batch_size, settings.lr, seed, settings.weight_decay
        )

    # -- the child ------------------------------------------------------------

    def _export(self, model: Classifier, X: FloatArray, seed: int) -> ExportResult:
        """A freshly calibrated int8 export (the normal path: new scales everywhere)."""
        cal, probe = self._calibration(X, seed)
        return export_int8(model, cal, probe, min_agreement=self.settings.min_int8_agreement)

    def _calibration(self, X: FloatArray, seed: int) -> tuple[FloatArray, FloatArray]:
        """A deterministic sample of the training data to calibrate on, other rows to probe."""
        order = np.random.default_rng(seed).permutation(len(X))
        cal = X[order[: self.settings.calibration_size]]
        rest = order[self.settings.calibration_size :]
        n = self.settings.probe_size
        return cal, X[rest[:n]] if len(rest) >= n else X[order[-n:]]

    def _child(self, rnd: Round, trained: Classifier) -> tuple[Child, BudgetedUpdate | None]:
        """The round's int8 child: on the parent's frozen grid under the update budget
        (cloud/export/budgeted.py), or re-calibrated when the mode or the grid says so."""
        if self.settings.update_mode == "full":
            return self._full(rnd, trained, "full mode"), None
        try:
            fit = FineTuned(rnd.parent.model, trained, rnd.X, rnd.y, rnd.hp)
            calibration = self._calibration(rnd.X, rnd.hp.seed)
            update = BudgetedUpdate(
                rnd.parent.content, fit, calibration, self.settings.budget_options()
            )
            return update.child(), update
        except FrozenScalesDoNotFit as e:
            logger.info("re-calibrating: %s", e)
            return self._full(rnd, trained, e.reason, e.details), None
        except NumericCheckError as e:  # e.g. activations the frozen scales saturate
            logger.info("re-calibrating: %s", e)
            return self._full(rnd, trained, "numeric check", {"error": str(e)}), None

    def _full(
        self, rnd: Round, model: Classifier, reason: str, extra: dict[str, Any] | None = None
    ) -> Child:
        """A freshly calibrated child of ``model``, and its delta details."""
        exported = self._export(model, rnd.X, seed=rnd.hp.seed)
        mode = self.settings.update_mode
        details = full_details(rnd.parent.content, exported.content, mode, reason, extra)
        return Child(exported, model, details)

    # -- the gate -------------------------------------------------------------

    def _gate(self, rnd: Round, child: Child, name: str) -> Decision:
        artifact = TFLiteModel(child.exported.content, name=name)
        return gate(rnd.parent.artifact, artifact, rnd.held_out, self.rule)

    def _judge(
        self, rnd: Round, child: Child, update: BudgetedUpdate | None
    ) -> tuple[Child, Decision]:
        """The gate's decision on the child; for a budgeted child that it refuses, or
        that the budget cost too much, what ``_ship_more`` ships instead."""
        decision = self._gate(rnd, child, "child")
        if update is not None and (
            not decision.publish
            or self._budget_costs(decision, update.unconstrained, rnd.held_out.recent)
        ):
            # The budget or the frozen grid may be what holds the child back: ship more.
            return self._ship_more(rnd, update, child, decision)
        return child, decision

    def _budget_costs(self, decision: Decision, unconstrained: Classifier, recent: Samples) -> bool:
        """Whether the budgeted child trails the round's unconstrained (float) model on
        the recent window by more than update_max_loss: after a drift, a budget that
        suits a quiet stream would leave the fleet on a model it could already beat."""
        X, y = recent
        ours = decision.child_recent.accuracy
        if ours is None or len(y) == 0:
            return False
        wanted = float((predict_proba(unconstrained, X).argmax(axis=1) == y).mean())
        if wanted - ours <= self.settings.update_max_loss:
            return False
        logger.info(
            "budgeted child: recent accuracy %.3f, the unconstrained model %.3f", ours, wanted
        )
        return True

    def _ship_more(
        self, rnd: Round, update: BudgetedUpdate, child: Child, first: Decision
    ) -> tuple[Child, Decision]:
        """When the gate refused the budgeted child, or the budget cost more accuracy
        than update_max_loss: the fresh export (new scales) sets the mark. If it fails
        the gate too, the budget is not what held the child back and ``first`` stands;
        else the first larger budget on the same grid (2x, 4x) within update_max_loss
        of it ships, or the fresh export itself."""
        try:
            fresh = self._full(rnd, update.unconstrained, "budget")
        except ExportError as e:
            logger.info("no fresh export to compare with: %s", e)
            return child, first
        marked = self._gate(rnd, fresh, "fresh child")
        if not marked.publish or marked.child_recent.accuracy is None:
            return child, first
        mark = marked.child_recent.accuracy - self.settings.update_max_loss
        why = (
            first.reason
            if not first.publish
            else (
                f"recent accuracy {first.child_recent.accuracy:.3f}; a fresh export "
                f"{marked.child_recent.accuracy:.3f}"
            )
        )
        if first.publish and (first.child_recent.accuracy or 0.0) >= mark - 1e-9:
            return child, first
        for factor in ESCALATION:
            try:
                more = update.child(update.budget * factor)
            except ExportError as e:
                logger.info("no larger budgeted child: %s", e)
                break
            decision = self._gate(rnd, more, "larger child")
            if decision.publish and (decision.child_recent.accuracy or 0.0) >= mark - 1e-9:
                more.details["budgeted_rejected"] = why
                return more, decision
        fresh.details["budgeted_rejected"] = why
        return fresh, marked

    # -- publishing -----------------------------------------------------------

    def _explain(
        self, report: RoundReport, child: Side, parent: Side | None, held_out: HeldOut
    ) -> Explanation:
        """The explanation the version's signed manifest carries (cloud/evaluation/explain.py)."""
        t = time.perf_counter()
        grid = (8, 8) if self.parts.seed_train.kind == "digits" else None
        options = ExplainOptions(grid=grid)
        explanation = explain_version(report.record(), child, parent, held_out, options)
        report.timings["explain_s"] = time.perf_counter() - t
        return explanation

    def _publish(
        self,
        report: RoundReport,
        model: Classifier,
        exported: ExportResult,
        parent_sha: str | None,
        explanation: Explanation,
    ) -> None:
        # Weights first: a version must never exist without the weights the next round needs.
        self.client.set(self.keys.weights(exported.sha256), weights_to_bytes(model))
        request = PublishRequest(
            self.settings.model,
            exported.content,
            num_features=self.parts.seed_train.num_features,
            labels=self.labels,
            probe=exported.probe,
            runtime=exported.runtime,
            metrics=report.metrics,
            explanation=explanation,
            expected_parent=parent_sha,
        )
        published = self.publisher.publish(request)
        report.published, report.version, report.sha256 = True, published.version, published.sha256
        artifact = TFLiteModel(exported.content, version=published.version)
        self._parent = Parent(
            published.version, published.sha256, exported.content, model, artifact
        )


def _side(model: Classifier, exported: ExportResult) -> Side:
    return Side(model, TFLiteModel(exported.content), exported.content)


def _report_decision(report: RoundReport, child: Child, decision: Decision) -> None:
    """The gate's numbers and reason, and what the child changed, into the report."""
    report.metrics = {
        **decision.metrics(),
        "int8_agreement": child.exported.agreement,
        "delta_bytes_changed": float(child.details["bytes_changed"]),
    }
    report.details = {**_details(decision), "delta": child.details}
    report.reason = decision.reason


def _details(d: Decision) -> dict[str, Any]:
    def m(x: Metrics) -> dict[str, Any]:
        return {"accuracy": x.accuracy, "samples": x.samples, "recall": x.recall}

    return {
        "decision": "publish" if d.publish else "reject",
        "reason": d.reason,
        "parent": {"recent": m(d.parent_recent), "earlier": m(d.parent_earlier)},
        "child": {"recent": m(d.child_recent), "earlier": m(d.child_earlier)},
        "gate": asdict(d.rule),
    }
