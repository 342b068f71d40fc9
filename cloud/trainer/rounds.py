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
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from cloud.data.datasets import Split
from cloud.data.replay import TrainerData
from cloud.evaluation.explain import Side, explain_version
from cloud.evaluation.gate import Decision, Metrics, Samples, evaluate, gate
from cloud.export.budgeted import (
    ESCALATION,
    BudgetedUpdate,
    Child,
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
from cloud.registry.publisher import Publisher, StaleParent
from cloud.trainer.settings import TrainerSettings
from shared.errors import EdgeloopError
from shared.keys import FleetKeys
from shared.messages import Explanation
from shared.runtime import TFLiteModel

logger = logging.getLogger(__name__)


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
        self.s = settings
        self.client = client
        self.keys = FleetKeys(settings.fleet)
        self.publisher = publisher
        self.data = data
        self.parts = parts
        self.labels = parts.seed_train.labels
        self._parent: tuple[str, Classifier, TFLiteModel] | None = None

    # -- bootstrap ------------------------------------------------------------

    def bootstrap(self) -> RoundReport:
        """Version 1 from the seed split; seeds the replay buffer and the holdout once."""
        t0 = time.perf_counter()
        counters = self.data.read_counters(self.client)
        if not any(counters.replay) and not any(counters.holdout):
            self.data.seed(
                self.parts.seed_train.X, self.parts.seed_train.y, holdout=False, seed=self.s.seed
            )
            self.data.seed(
                self.parts.seed_holdout.X,
                self.parts.seed_holdout.y,
                holdout=True,
                seed=self.s.seed + 1,
            )
        hp = Hyperparameters(
            self.s.bootstrap_epochs, self.s.batch_size, self.s.lr, self.s.seed, self.s.weight_decay
        )
        result = bootstrap(self.parts.seed_train, hp)
        t1 = time.perf_counter()
        exported = self._export(result.model, self.parts.seed_train.X, seed=self.s.seed)
        t2 = time.perf_counter()
        earlier = evaluate(TFLiteModel(exported.content), self.data.holdout_set(), self.labels)
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
        explanation = self._explain(
            report, result.model, exported, None, self.data.holdout_set(), self.data.recent_set()
        )
        t3 = time.perf_counter()
        self._publish(report, result.model, exported, None, explanation)
        report.timings.update(train_s=t1 - t0, export_s=t2 - t1, publish_s=time.perf_counter() - t3)
        return report

    # -- a round --------------------------------------------------------------

    def run(
        self, round_no: int, trigger: str, window: dict[str, Any], may_publish: Callable[[], bool]
    ) -> RoundReport:
        """Fine-tune the latest version on the trainer's data; publish the child if the gate agrees."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        parent_version, parent_sha, parent_model, parent_tfl = self.parent()
        X, y = self.data.training_set()
        earlier, recent = self.data.holdout_set(), self.data.recent_set()
        hp = Hyperparameters(
            self.s.epochs, self.s.batch_size, self.s.lr, self.s.seed + round_no, self.s.weight_decay
        )
        report = RoundReport(
            round=round_no,
            trigger=trigger,
            published=False,
            reason="",
            parent_version=parent_version,
            data_window={
                **window,
                "training_samples": len(y),
                "recent_holdout": len(recent[1]),
                "earlier_holdout": len(earlier[1]),
            },
            hyperparameters=hp.as_dict(),
            timings=timings,
        )
        result = fine_tune(parent_model, X, y, hp)
        timings["train_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            child, update = self._child(parent_sha, parent_model, result.model, X, y, hp)
        except ExportError as e:
            report.reason = f"export refused: {e}"
            timings["export_s"] = time.perf_counter() - t1
            return report
        timings["export_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        judge = partial(
            gate,
            parent_tfl,
            earlier=earlier,
            recent=recent,
            labels=self.labels,
            min_gain=self.s.min_gain,
            forgetting_tolerance=self.s.forgetting_tolerance,
        )
        decision = judge(TFLiteModel(child.exported.content, name="child"))
        if update is not None and (
            not decision.publish or self._budget_costs(decision, result.model, recent)
        ):
            # The budget or the frozen grid may be what holds the child back: ship more.
            child, decision = self._ship_more(update, child, decision, parent_sha, X, hp, judge)
        timings["gate_s"] = time.perf_counter() - t2
        exported = child.exported
        report.metrics = {
            **decision.metrics(),
            "int8_agreement": exported.agreement,
            "delta_bytes_changed": float(child.details["bytes_changed"]),
        }
        report.details = {**_details(decision), "delta": child.details}
        report.reason = decision.reason
        if not decision.publish:
            return report
        if not may_publish():
            report.reason = "lease lost before publishing; another trainer runs rounds now"
            return report
        parent_side = Side(parent_model, parent_tfl, self.publisher.content(parent_sha))
        explanation = self._explain(report, child.model, exported, parent_side, earlier, recent)
        t3 = time.perf_counter()
        try:
            self._publish(report, child.model, exported, parent_sha, explanation)
        except StaleParent as e:
            report.published, report.reason = False, str(e)
        timings["publish_s"] = time.perf_counter() - t3
        return report

    def parent(self) -> tuple[int, str, Classifier, TFLiteModel]:
        """The latest version as (number, sha256, torch model, int8 artifact), cached by sha."""
        latest = self.publisher.latest(self.s.model)
        if latest is None:
            raise RoundError(f"no version of {self.s.model} is published yet; bootstrap first")
        version, sha, _ = latest
        if self._parent is None or self._parent[0] != sha:
            blob = self.client.get(self.keys.weights(sha))
            if blob is None:
                raise RoundError(f"v{version} ({sha[:12]}) has no stored weights to fine-tune from")
            if isinstance(blob, str):
                raise RoundError("the trainer needs a Redis client without decode_responses")
            model = build_model(self.parts.seed_train, seed=self.s.seed)
            load_weights(model, blob)
            self._parent = (sha, model, TFLiteModel(self.publisher.content(sha), version=version))
        return version, sha, self._parent[1], self._parent[2]

    # -- helpers --------------------------------------------------------------

    def _export(self, model: Classifier, X: npt.NDArray[np.float32], seed: int) -> ExportResult:
        """A freshly calibrated int8 export (the normal path: new scales everywhere)."""
        cal, probe = self._calibration(X, seed)
        return export_int8(model, cal, probe, min_agreement=self.s.min_int8_agreement)

    def _calibration(
        self, X: npt.NDArray[np.float32], seed: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """A deterministic sample of the training data to calibrate on, other rows to probe."""
        order = np.random.default_rng(seed).permutation(len(X))
        cal = X[order[: self.s.calibration_size]]
        rest = order[self.s.calibration_size :]
        n = self.s.probe_size
        return cal, X[rest[:n]] if len(rest) >= n else X[order[-n:]]

    def _child(
        self,
        parent_sha: str,
        shadow: Classifier,
        trained: Classifier,
        X: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        hp: Hyperparameters,
    ) -> tuple[Child, BudgetedUpdate | None]:
        """The round's int8 child: on the parent's frozen grid under the update budget
        (cloud/export/budgeted.py), or re-calibrated when the mode or the grid says so."""
        if self.s.update_mode == "full":
            return self._full(parent_sha, trained, X, hp, "full mode"), None
        try:
            update = BudgetedUpdate(
                self.publisher.content(parent_sha),
                shadow,
                trained,
                (X, y),
                self._calibration(X, hp.seed),
                hp,
                self.s.budget_options(),
            )
            return update.child(), update
        except FrozenScalesDoNotFit as e:
            logger.info("re-calibrating: %s", e)
            return self._full(parent_sha, trained, X, hp, e.reason, e.details), None
        except NumericCheckError as e:  # e.g. activations the frozen scales saturate
            logger.info("re-calibrating: %s", e)
            return self._full(parent_sha, trained, X, hp, "numeric check", {"error": str(e)}), None

    def _full(
        self,
        parent_sha: str,
        model: Classifier,
        X: npt.NDArray[np.float32],
        hp: Hyperparameters,
        reason: str,
        extra: dict[str, Any] | None = None,
    ) -> Child:
        exported = self._export(model, X, seed=hp.seed)
        return Child(
            exported,
            model,
            full_details(
                self.publisher.content(parent_sha),
                exported.content,
                self.s.update_mode,
                reason,
                extra,
            ),
        )

    def _budget_costs(self, decision: Decision, unconstrained: Classifier, recent: Samples) -> bool:
        """Whether the budgeted child trails the round's unconstrained (float) model on
        the recent window by more than update_max_loss: after a drift, a budget that
        suits a quiet stream would leave the fleet on a model it could already beat."""
        X, y = recent
        ours = decision.child_recent.accuracy
        if ours is None or len(y) == 0:
            return False
        wanted = float((predict_proba(unconstrained, X).argmax(axis=1) == y).mean())
        if wanted - ours <= self.s.update_max_loss:
            return False
        logger.info(
            "budgeted child: recent accuracy %.3f, the unconstrained model %.3f", ours, wanted
        )
        return True

    def _ship_more(
        self,
        update: BudgetedUpdate,
        child: Child,
        first: Decision,
        parent_sha: str,
        X: npt.NDArray[np.float32],
        hp: Hyperparameters,
        judge: Callable[[TFLiteModel], Decision],
    ) -> tuple[Child, Decision]:
        """When the gate refused the budgeted child, or the budget cost more accuracy
        than update_max_loss: the fresh export (new scales) sets the mark. If it fails
        the gate too, the budget is not what held the child back and ``first`` stands;
        else the first larger budget on the same grid (2x, 4x) within update_max_loss
        of it ships, or the fresh export itself."""
        try:
            fresh = self._full(parent_sha, update.unconstrained, X, hp, "budget")
        except ExportError as e:
            logger.info("no fresh export to compare with: %s", e)
            return child, first
        marked = judge(TFLiteModel(fresh.exported.content, name="fresh child"))
        if not marked.publish or marked.child_recent.accuracy is None:
            return child, first
        mark = marked.child_recent.accuracy - self.s.update_max_loss
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
            decision = judge(TFLiteModel(more.exported.content, name="larger child"))
            if decision.publish and (decision.child_recent.accuracy or 0.0) >= mark - 1e-9:
                more.details["budgeted_rejected"] = why
                return more, decision
        fresh.details["budgeted_rejected"] = why
        return fresh, marked

    def _explain(
        self,
        report: RoundReport,
        model: Classifier,
        exported: ExportResult,
        parent: Side | None,
        earlier: Samples,
        recent: Samples,
    ) -> Explanation:
        """The explanation the version's signed manifest carries (cloud/evaluation/explain.py)."""
        t = time.perf_counter()
        child = Side(model, TFLiteModel(exported.content), exported.content)
        grid = (8, 8) if self.parts.seed_train.kind == "digits" else None
        explanation = explain_version(
            trigger=report.trigger,
            data_window=report.data_window,
            hyperparameters=report.hyperparameters,
            details=report.details,
            labels=self.labels,
            child=child,
            parent=parent,
            earlier=earlier,
            recent=recent,
            grid=grid,
        )
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
        published = self.publisher.publish(
            self.s.model,
            exported.content,
            num_features=self.parts.seed_train.num_features,
            labels=self.labels,
            probe=exported.probe,
            runtime=exported.runtime,
            metrics=report.metrics,
            explanation=explanation,
            expected_parent=parent_sha,
        )
        report.published, report.version, report.sha256 = True, published.version, published.sha256
        self._parent = (
            published.sha256,
            model,
            TFLiteModel(exported.content, version=published.version),
        )


def _details(d: Decision) -> dict[str, Any]:
    def m(x: Metrics) -> dict[str, Any]:
        return {"accuracy": x.accuracy, "samples": x.samples, "recall": x.recall}

    return {
        "decision": "publish" if d.publish else "reject",
        "reason": d.reason,
        "parent": {"recent": m(d.parent_recent), "earlier": m(d.parent_earlier)},
        "child": {"recent": m(d.child_recent), "earlier": m(d.child_earlier)},
        "gate": {"min_gain": d.min_gain, "forgetting_tolerance": d.forgetting_tolerance},
    }
