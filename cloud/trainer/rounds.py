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

from cloud.data.admission import Admission, admit, device_weights
from cloud.data.concept import contradicted
from cloud.data.datasets import Dataset, Split
from cloud.data.quarantine import Quarantine
from cloud.data.replay import DriftMark, Samples, TrainerData
from cloud.evaluation.explain import ExplainOptions, RoundRecord, Side, explain_version
from cloud.evaluation.gate import (
    REGRESSION_FIGURES,
    Decision,
    GateRule,
    HeldOut,
    Metrics,
    evaluate,
    gate,
)
from cloud.export.artifact import Artifact
from cloud.export.budgeted import (
    ESCALATION,
    BudgetedUpdate,
    Child,
    FineTuned,
    FrozenScalesDoNotFit,
    full_details,
)
from cloud.export.exporter import (
    ExportError,
    ExportResult,
    NumericCheckError,
    export_int8,
    preflight,
)
from cloud.learning.contract import DataInfo, build_model
from cloud.learning.models import TaskModel, predict
from cloud.learning.selection import WeightDecayChoice, choose_weight_decay
from cloud.learning.training import Hyperparameters, fine_tune, train
from cloud.learning.weights import load_weights, read_weights_file, weights_to_bytes
from cloud.registry.publisher import (
    Publisher,
    PublishNotReplicated,
    PublishRequest,
    StaleParent,
)
from cloud.trainer.settings import TrainerSettings
from shared.errors import ConfigError, EdgeloopError
from shared.keys import FleetKeys
from shared.messages import Exemplars, Explanation
from shared.task import TaskSpec

#: Inputs of at most this many values get exemplars: the edges' ``adaptation = "auto"``
#: adapts no larger one (edge/adaptation.py, AUTO_MAX_VALUES).
EXEMPLAR_MAX_VALUES = 64
#: Bytes of exemplar values at most: the manifest travels in every TUF targets.json
#: that lists its version (digits: 256 rows).
EXEMPLAR_MAX_BYTES = 64 * 1024

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


class RoundError(EdgeloopError):
    """A round cannot run (no parent, no weights for the parent, no data)."""


class ModelRefused(ConfigError):
    """The model can never become a file edgeloop publishes (an op with no int8 kernel,
    a dynamic shape): refused before any training."""


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
    model: TaskModel  # its stored float weights (after a budgeted round: the shadow)
    artifact: Artifact

    @property
    def side(self) -> Side:
        return Side(self.model, self.artifact, self.content)


@dataclass(frozen=True)
class Round:
    """One round's inputs: the parent, the training set, the held-out data, the hyperparameters."""

    parent: Parent
    X: npt.NDArray[Any]  # the replay buffer and the recent-training ring
    y: npt.NDArray[Any]  # class indices or targets
    held_out: HeldOut
    hp: Hyperparameters
    admission: Admission = field(default_factory=Admission)
    concept: dict[str, Any] = field(default_factory=dict)  # what the latest drift changed
    retrain: bool = False  # a fresh model, not the parent fine-tuned (retrain_max_samples)


class RoundRunner:
    """Runs bootstrap and rounds for one model; caches the parent between rounds."""

    def __init__(
        self,
        settings: TrainerSettings,
        client: redis.Redis,
        publisher: Publisher,
        data: TrainerData,
        parts: Split,
        spec: str,
    ) -> None:
        self.settings = settings
        self.client = client
        self.keys = FleetKeys(settings.fleet)
        self.publisher = publisher
        self.data = data
        self.parts = parts
        self.spec = spec  # the model: a zoo name or an import spec (cloud/learning/contract.py)
        self.info = DataInfo.of(parts.seed_train)  # normalization statistics: the seed split's
        self.task = parts.seed_train.task
        self.labels = self.task.labels
        self.rule = GateRule(settings.min_gain, settings.forgetting_tolerance)
        self.quarantine = Quarantine(client, self.keys, settings.model_name)
        self._parent: Parent | None = None
        self._weight_decay: WeightDecayChoice | None = None

    # -- the model ------------------------------------------------------------

    def fresh_model(self) -> TaskModel:
        """A new model of the spec, checked (ModelError) and seeded by the settings."""
        return build_model(self.spec, self.info, seed=self.settings.seed)

    def weight_decay(self) -> WeightDecayChoice:
        """The weight decay this model trains with: the setting's, or the best of
        ``weight_decay_choices`` by cross-validation on the seed split with the bootstrap's
        recipe (chosen once; a restarted trainer chooses the same from the same data)."""
        s = self.settings
        if not s.weight_decay_choices:
            return WeightDecayChoice(s.weight_decay, {}, self.task.metric)
        if self._weight_decay is None:
            seed = self.parts.seed_train
            hp = Hyperparameters(s.bootstrap_epochs, s.batch_size, s.lr, s.seed)
            self._weight_decay = choose_weight_decay(
                self.fresh_model, seed.X, seed.y, hp, s.weight_decay_choices
            )
            logger.info("weight decay by cross-validation: %s", self._weight_decay.as_dict())
        return self._weight_decay

    def refuse_unpublishable(self) -> None:
        """Export a fresh model once and refuse (ModelRefused) a model that cannot become an
        all-int8 file, before any training: an op with no int8 kernel, a dynamic shape."""
        model = self.fresh_model()
        calibration = self.parts.seed_train.X[: self.settings.calibration_size]
        try:
            preflight(model, calibration)
        except ExportError as e:
            raise ModelRefused(
                f"model {self.spec!r} cannot be published as an all-int8 file: {e}"
            ) from e

    # -- bootstrap ------------------------------------------------------------

    def bootstrap(self) -> RoundReport:
        """Version 1 from the seed split (or the pretrained weights); seeds the replay buffer
        and the holdout once."""
        self.refuse_unpublishable()
        t0 = time.perf_counter()
        epochs, seed = self.settings.bootstrap_epochs, self.settings.seed
        self._seed_stores(seed)
        hp = self._hyperparameters(epochs, seed)
        model, hyperparameters = self.fresh_model(), hp.as_dict()
        if self.settings.pretrained is not None:
            read_weights_file(model.net, self.settings.pretrained)
            hyperparameters = {"pretrained": str(self.settings.pretrained)}
        else:
            model = train(model, self.parts.seed_train.X, self.parts.seed_train.y, hp).model
        t1 = time.perf_counter()
        exported = self._export(model, self.parts.seed_train.X, seed=seed)
        t2 = time.perf_counter()
        held_out = self._held_out()
        earlier = evaluate(Artifact(exported.content), held_out.earlier, self.task)
        report = RoundReport(
            round=0,
            trigger="bootstrap",
            published=True,
            reason="first version" + (" (pretrained weights)" if self.settings.pretrained else ""),
            metrics={**_first_metrics(earlier, self.task), "int8_agreement": exported.agreement},
            data_window={
                "dataset": self.parts.seed_train.name,
                "seed_split": len(self.parts.seed_train.y),
                **self._per_class(self.parts.seed_train.y),
            },
            hyperparameters=hyperparameters,
            details=_first_details(earlier, self.task),
        )
        if (decay := self.weight_decay()).scores:
            report.details["weight_decay"] = decay.as_dict()
        explanation = self._explain(report, _side(model, exported), None, held_out)
        t3 = time.perf_counter()
        try:
            self._publish(report, model, exported, None, explanation, self._exemplars())
        except PublishNotReplicated as e:
            report.published, report.reason = False, str(e)  # bootstrapped again if lost
        report.timings.update(train_s=t1 - t0, export_s=t2 - t1, publish_s=time.perf_counter() - t3)
        return report

    def _exemplars(self) -> Exemplars | None:
        """The newest seed rows, at most ``exemplars``: a fifth of them (or all there
        are) from the held-out seed rows, last, for the edges' adapters to start from
        (ARCHITECTURE.md, "Adaptation on the edge"); None for a regressor, an input the
        edges do not adapt by default, or ``exemplars = 0``."""
        train, held, n = self.parts.seed_train, self.parts.seed_holdout, self.settings.exemplars
        if n == 0 or not self.task.is_classification or train.num_features > EXEMPLAR_MAX_VALUES:
            return None
        n = min(n, EXEMPLAR_MAX_BYTES // (4 * train.num_features))
        n_held = min(len(held.y), n // 5)
        parts = [(train, min(n - n_held, len(train.y))), (held, n_held)]
        X = np.concatenate([_flat(d.X)[len(d.y) - k :] for d, k in parts if k > 0])
        y = np.concatenate([np.asarray(d.y)[len(d.y) - k :] for d, k in parts if k > 0])
        return Exemplars.of(X, y, held_out=n_held)

    def _per_class(self, y: npt.NDArray[Any]) -> dict[str, Any]:
        """The labels per class of a classifier's data window (nothing for a regressor)."""
        if not self.task.is_classification:
            return {}
        counts = np.bincount(np.asarray(y, np.int64), minlength=len(self.labels))
        return {"labeled_per_class": {self.labels[c]: int(n) for c, n in enumerate(counts)}}

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
                "admission": rnd.admission.as_dict(),
                **({"concept": rnd.concept} if rnd.concept else {}),
                "recent_holdout": len(rnd.held_out.recent[1]),
                "earlier_holdout": len(rnd.held_out.earlier[1]),
            },
            hyperparameters=rnd.hp.as_dict(),
        )
        if self.settings.train_workers > 1:
            report.hyperparameters["workers"] = self.settings.train_workers
            report.hyperparameters["staleness"] = self.settings.train_staleness
        if rnd.retrain:
            report.hyperparameters["retrained"] = True
            fresh = build_model(self.spec, self.info, seed=rnd.hp.seed)
            trained = train(fresh, rnd.X, rnd.y, rnd.hp).model
        else:
            trained = self._fine_tune(rnd.parent.model, rnd.X, rnd.y, rnd.hp)
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
        except (StaleParent, PublishNotReplicated) as e:
            # not published (or not known to survive the master): a later round publishes
            # again on what the registry then holds
            report.published, report.reason = False, str(e)
        report.timings["publish_s"] = time.perf_counter() - t3
        return report

    def parent(self) -> Parent:
        """The latest version, cached by sha256."""
        latest = self.publisher.latest(self.settings.model_name)
        if latest is None:
            raise RoundError(
                f"no version of {self.settings.model_name} is published yet; bootstrap first"
            )
        version, sha, _ = latest
        if self._parent is None or self._parent.sha256 != sha:
            blob = self.client.get(self.keys.weights(sha))
            if blob is None:
                raise RoundError(f"v{version} ({sha[:12]}) has no stored weights to fine-tune from")
            if isinstance(blob, str):
                raise RoundError("the trainer needs a Redis client without decode_responses")
            model = self.fresh_model()
            load_weights(model.net, blob)
            content = self.publisher.content(sha)
            self._parent = Parent(version, sha, content, model, Artifact(content, version=version))
        return self._parent

    def _start(self, round_no: int) -> Round:
        """The parent and the trainer's data as they are now."""
        parent = self.parent()
        s = self.settings
        quarantined = set(self.quarantine.members())
        floor = s.device_share_floor or 0  # the settings fill it in
        admission = admit(self.data, s.max_device_share, floor, quarantined)
        concept = self._young_concept()
        facts: dict[str, Any] = {}
        if concept is not None:
            facts = {
                "drift_mark": asdict(concept.mark),
                "reference_samples": len(concept.reference[1]),
            }
            # a regression's targets are no class another label contradicts: its stored
            # samples stay, and the labels since the drift only weigh more
            if self.task.is_classification:
                facts |= self._forget_contradicted(parent, concept)
            logger.info("after the drift: %s", facts)
        X, y = self.data.training_set()
        held_out = self._held_out(quarantined)
        hp = self._hyperparameters(s.epochs, s.seed + round_no)
        if concept is not None:
            stored = len(y)
            X, y = _weighted_concept(X, y, concept.reference, s.concept_share)
            facts["concept_share"] = round(_share(stored, len(concept.reference[1]), len(y)), 3)
            held_out = _since_drift(held_out, concept, s.concept_min_recent, s.gate_min_recent)
            facts["recent_since_drift"] = len(held_out.recent[1])
            hp = self._hyperparameters(s.drift_epochs, s.seed + round_no, s.drift_lr)
        # a stationary stream's: once a drift was signalled the parent holds what the
        # stored samples no longer say (ARCHITECTURE.md, "Rounds on small stationary streams")
        retrain = 0 < len(y) <= s.retrain_max_samples and self.data.drift_mark() is None
        if retrain:
            hp = self._hyperparameters(s.bootstrap_epochs, s.seed + round_no)
        return Round(parent, X, y, held_out, hp, admission, facts, retrain)

    def _young_concept(self) -> Concept | None:
        """The labels since the latest drift while it is young (the recent window still
        holds samples from before it) and there are enough of them to say what the world
        is now (cloud/data/concept.py)."""
        if not self.settings.drop_contradicted:
            return None
        mark = self.data.drift_mark()
        if mark is None:
            return None
        reference, held_since = self.data.since_drift(mark)
        if held_since >= self.data.recent_window:
            return None
        if len(reference[1]) < self.settings.concept_min_samples:
            return None
        return Concept(mark, reference, held_since)

    def _forget_contradicted(self, parent: Parent, concept: Concept) -> dict[str, Any]:
        """Delete the stored samples the labels since the drift contradict (the old concept
        there was overwritten): the parent fine-tuned on those labels alone says what the
        world is now, and a sample within their reach that it labels otherwise goes."""
        s = self.settings
        hp = self._hyperparameters(s.drift_epochs, s.seed, s.drift_lr)
        now = fine_tune(parent.model, *concept.reference, hp).model
        facts: dict[str, Any] = {}
        for holdout, name in ((False, "training_forgotten"), (True, "earlier_forgotten")):
            fields, blobs, (X, y) = self.data.stored(holdout)
            if not fields:
                facts[name] = 0
                continue
            labels = predict(now, X).argmax(axis=1)
            gone = np.flatnonzero(contradicted(concept.reference[0], (X, y), labels))
            facts[name] = self.data.forget(
                holdout, [fields[i] for i in gone], [blobs[i] for i in gone]
            )
        return facts

    def _held_out(self, quarantined: set[str] | None = None) -> HeldOut:
        """The gate's data, each device's weight capped, quarantined devices' at 0."""
        if quarantined is None:
            quarantined = set(self.quarantine.members())
        share = self.settings.max_device_share
        earlier, earlier_devices = self.data.tagged_holdout_set()
        recent, recent_devices = self.data.tagged_recent_set()
        return HeldOut(
            earlier,
            recent,
            self.task,
            device_weights(earlier_devices, share, quarantined),
            device_weights(recent_devices, share, quarantined),
        )

    def _fine_tune(
        self, parent: TaskModel, X: npt.NDArray[Any], y: npt.NDArray[Any], hp: Hyperparameters
    ) -> TaskModel:
        """The round's child: trained here, or data-parallel over ``train_workers``
        processes (a worker that fails abandons the round: ParallelTrainingError)."""
        settings = self.settings
        if settings.train_workers == 1:
            return fine_tune(parent, X, y, hp).model
        from cloud.learning.parallel import Parallelism, fine_tune_parallel

        how = Parallelism(settings.train_workers, settings.train_staleness)
        return fine_tune_parallel(parent, X, y, hp, how).model

    def _hyperparameters(self, epochs: int, seed: int, lr: float | None = None) -> Hyperparameters:
        settings = self.settings
        return Hyperparameters(
            epochs, settings.batch_size, lr or settings.lr, seed, self.weight_decay().value
        )

    # -- the child ------------------------------------------------------------

    def _export(self, model: TaskModel, X: npt.NDArray[Any], seed: int) -> ExportResult:
        """A freshly calibrated int8 export (the normal path: new scales everywhere)."""
        cal, probe = self._calibration(X, seed)
        return export_int8(model, cal, probe, min_agreement=self.settings.min_int8_agreement)

    def _calibration(
        self, X: npt.NDArray[Any], seed: int
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """A deterministic sample of the training data to calibrate on, other rows to probe."""
        order = np.random.default_rng(seed).permutation(len(X))
        cal = X[order[: self.settings.calibration_size]]
        rest = order[self.settings.calibration_size :]
        n = self.settings.probe_size
        return cal, X[rest[:n]] if len(rest) >= n else X[order[-n:]]

    def _child(self, rnd: Round, trained: TaskModel) -> tuple[Child, BudgetedUpdate | None]:
        """The round's int8 child: on the parent's frozen grid under the update budget
        (cloud/export/budgeted.py), or re-calibrated when the mode or the grid says so."""
        if self.settings.update_mode == "full":
            return self._full(rnd, trained, "full mode"), None
        if rnd.retrain:  # every weight is new: no small delta on the parent's grid to write
            return self._full(rnd, trained, "retrained"), None
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
        self, rnd: Round, model: TaskModel, reason: str, extra: dict[str, Any] | None = None
    ) -> Child:
        """A freshly calibrated child of ``model``, and its delta details."""
        exported = self._export(model, rnd.X, seed=rnd.hp.seed)
        mode = self.settings.update_mode
        details = full_details(rnd.parent.content, exported.content, mode, reason, extra)
        return Child(exported, model, details)

    # -- the gate -------------------------------------------------------------

    def _gate(self, rnd: Round, child: Child, name: str) -> Decision:
        artifact = Artifact(child.exported.content, name=name)
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

    def _budget_costs(self, decision: Decision, unconstrained: TaskModel, recent: Samples) -> bool:
        """Whether the budgeted child trails the round's unconstrained (float) model on
        the recent window by more than update_max_loss: after a drift, a budget that
        suits a quiet stream would leave the fleet on a model it could already beat."""
        X, y = recent
        ours = decision.child_value
        if ours is None or len(y) == 0:
            return False
        wanted = self.task.score(predict(unconstrained, X), y)
        loss = self.settings.update_max_loss
        if self.task.gain(wanted, over=ours) <= (
            loss if self.task.is_classification else loss * ours
        ):
            return False
        logger.info(
            "budgeted child: recent %s %.3f, the unconstrained model %.3f",
            self.task.metric,
            ours,
            wanted,
        )
        return True

    def _within(self, value: float, mark: float) -> bool:
        """``value`` trails ``mark`` by at most update_max_loss (accuracy points, or a share
        of a regressor's MAE)."""
        loss = self.settings.update_max_loss
        allowed = loss if self.task.is_classification else loss * abs(mark)
        return self.task.gain(value, over=mark) >= -allowed - 1e-9

    def _ship_more(
        self, rnd: Round, update: BudgetedUpdate, child: Child, first: Decision
    ) -> tuple[Child, Decision]:
        """When the gate refused the budgeted child, or the budget cost more than
        update_max_loss: the fresh export (new scales) sets the mark. If it fails
        the gate too, the budget is not what held the child back and ``first`` stands;
        else the first larger budget on the same grid (2x, 4x) within update_max_loss
        of it ships, or the fresh export itself."""
        try:
            fresh = self._full(rnd, update.unconstrained, "budget")
        except ExportError as e:
            logger.info("no fresh export to compare with: %s", e)
            return child, first
        marked = self._gate(rnd, fresh, "fresh child")
        mark = marked.child_value
        if not marked.publish or mark is None:
            return child, first
        metric = self.task.metric
        why = (
            first.reason
            if not first.publish
            else f"recent {metric} {first.child_value:.3f}; a fresh export {mark:.3f}"
        )
        if first.publish and self._within(first.child_value or 0.0, mark):
            return child, first
        for factor in ESCALATION:
            try:
                more = update.child(update.budget * factor)
            except ExportError as e:
                logger.info("no larger budgeted child: %s", e)
                break
            decision = self._gate(rnd, more, "larger child")
            if decision.publish and self._within(decision.child_value or 0.0, mark):
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
        options = ExplainOptions(grid=attribution_grid(self.parts.seed_train))
        explanation = explain_version(report.record(), child, parent, held_out, options)
        report.timings["explain_s"] = time.perf_counter() - t
        return explanation

    def _publish(
        self,
        report: RoundReport,
        model: TaskModel,
        exported: ExportResult,
        parent_sha: str | None,
        explanation: Explanation,
        exemplars: Exemplars | None = None,
    ) -> None:
        # Weights first: a version must never exist without the weights the next round needs.
        self.client.set(self.keys.weights(exported.sha256), weights_to_bytes(model.net))
        data = self.parts.seed_train
        request = PublishRequest(
            self.settings.model_name,
            exported.content,
            num_features=data.num_features,
            labels=self.labels,
            probe=exported.probe,
            runtime=exported.runtime,
            metrics=report.metrics,
            explanation=explanation,
            expected_parent=parent_sha,
            input=data.input,
            task=data.task,
            exemplars=exemplars,
            requires=(self.keys.weights(exported.sha256),),
        )
        published = self.publisher.publish(request)
        report.published, report.version, report.sha256 = True, published.version, published.sha256
        artifact = Artifact(exported.content, version=published.version)
        self._parent = Parent(
            published.version, published.sha256, exported.content, model, artifact
        )


@dataclass(frozen=True)
class Concept:
    """The world since the latest drift: its mark, the training samples labelled since
    (the reference), and how many held-out samples came since."""

    mark: DriftMark
    reference: Samples
    held_since: int


def _copies(stored: int, since: int, share: float) -> int:
    """How many more times the ``since`` samples of a young concept (already once among
    the ``stored``) are repeated to make up ``share`` of a round's training data."""
    if since == 0 or share <= 0 or stored <= since:
        return 0
    # since * (1 + c) = share * (stored + since * c)
    return max(0, round((share * stored - since) / (since * (1 - share))))


def _share(before: int, since: int, after: int) -> float:
    """The share the since-drift samples have of a round's ``after`` training samples."""
    return (since + (after - before)) / after if after else 0.0


def _weighted_concept(
    X: npt.NDArray[Any], y: npt.NDArray[Any], reference: tuple[Any, Any], share: float
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """The training data with the labels since a young drift repeated to ``share`` of it:
    the stored samples from before the drift (those the new labels do not contradict)
    outnumber them many times, and would otherwise slow the new concept's learning
    down as much."""
    rX, ry = reference
    c = _copies(len(y), len(ry), share)
    if c == 0:
        return X, y
    return np.concatenate([X, *([rX] * c)]), np.concatenate([y, *([ry] * c)])


def _since_drift(held_out: HeldOut, concept: Concept, min_since: int, min_recent: int) -> HeldOut:
    """The recent window cut to the held-out samples since the drift, when there are
    ``min_since`` of them: the child is judged on the world as it is now. Fewer: the
    newest ``min_recent``, some from before the drift."""
    (rX, ry), rw = held_out.recent, held_out.recent_weights
    since = concept.held_since
    n = min(len(ry), since if since >= min_since else max(since, min_recent))  # newest first
    return HeldOut(
        held_out.earlier,
        (rX[:n], ry[:n]),
        held_out.task,
        held_out.earlier_weights,
        None if rw is None else rw[:n],
    )


def _side(model: TaskModel, exported: ExportResult) -> Side:
    return Side(model, Artifact(exported.content), exported.content)


def attribution_grid(dataset: Dataset) -> tuple[int, ...] | None:
    """The shape attribution maps are named over: the digits' 8x8, or the input's own
    when it has one ([T, C], [H, W, C])."""
    if dataset.kind == "digits":
        return (8, 8)
    shape = tuple(dataset.input.shape)
    return shape if len(shape) > 1 else None


def _first_metrics(earlier: Metrics, task: TaskSpec) -> dict[str, float]:
    """Version 1's figures on the seed holdout: accuracy, or MAE, RMSE and R²."""
    if task.is_classification:
        return {
            "earlier_accuracy": earlier.accuracy or 0.0,
            "earlier_samples": float(earlier.samples),
        }
    figures = {f"earlier_{f}": getattr(earlier, f) for f in REGRESSION_FIGURES}
    out = {k: float(v) for k, v in figures.items() if v is not None}
    return {**out, "earlier_samples": float(earlier.samples)}


def _first_details(earlier: Metrics, task: TaskSpec) -> dict[str, Any]:
    if task.is_classification:
        return {"earlier_recall": earlier.recall}
    return {"earlier": _figures(earlier, task)}


def _report_decision(report: RoundReport, child: Child, decision: Decision) -> None:
    """The gate's numbers and reason, and what the child changed, into the report."""
    report.metrics = {
        **decision.metrics(),
        "int8_agreement": child.exported.agreement,
        "delta_bytes_changed": float(child.details["bytes_changed"]),
    }
    report.details = {**_details(decision), "delta": child.details}
    report.reason = decision.reason


def _figures(m: Metrics, task: TaskSpec) -> dict[str, Any]:
    if task.is_classification:
        return {"accuracy": m.accuracy, "samples": m.samples, "recall": m.recall}
    return {"mae": m.mae, "rmse": m.rmse, "r2": m.r2, "samples": m.samples}


def _details(d: Decision) -> dict[str, Any]:
    return {
        "decision": "publish" if d.publish else "reject",
        "reason": d.reason,
        "parent": {
            "recent": _figures(d.parent_recent, d.task),
            "earlier": _figures(d.parent_earlier, d.task),
        },
        "child": {
            "recent": _figures(d.child_recent, d.task),
            "earlier": _figures(d.child_earlier, d.task),
        },
        "gate": asdict(d.rule),
    }


def _flat(X: npt.ArrayLike) -> FloatArray:
    """Samples as float32 rows."""
    rows = np.asarray(X, np.float32)
    return rows.reshape(len(rows), -1)
