"""The edge daemon and its in-process API: ``predict``, ``feedback``, ``health``.

``EdgeDaemon(settings)`` wires the parts together: the model store on disk, the
serving chain in memory, and three threads (feedback uplink, update consumer,
status reporter), each with its own Redis connection. It serves with Redis down:
predictions never touch the network, feedback spools to disk, updates wait.

The HTTP API (``edge.api``) is a thin layer over the same three verbs. Nothing
here is global, so two daemons (two devices) can run in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from math import isfinite
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge.connections import FleetMember
from edge.fallback import Prediction, ServingChain
from edge.guard import GuardPolicy, SwapGuard
from edge.model_store import ModelStore, load_if_sound
from edge.settings import EdgeSettings
from edge.status import ReportPolicy, StatusReporter
from edge.updater import UpdateConsumer, UpdatePolicy
from edge.uplink import FeedbackUplink, UplinkPolicy
from shared.errors import InputError, ModelRejected, NotFound, Unavailable
from shared.keys import FleetKeys
from shared.messages import EdgeCounters, EdgeStatus, FeedbackAccepted, FeedbackEvent
from shared.runtime import TFLiteModel, interpreter_class
from shared.signing import Verifier
from shared.task import TaskSpec
from shared.tensors import TensorSpec, as_batch, to_bytes

logger = logging.getLogger(__name__)


# -- what each setting drives: the parts' options, built from the settings here only --


def uplink_policy(settings: EdgeSettings) -> UplinkPolicy:
    return UplinkPolicy(
        batch=settings.feedback_batch,
        flush_ms=settings.feedback_flush_ms,
        queue_max=settings.feedback_queue_max,
        spool_max_bytes=settings.spool_max_bytes,
    )


def report_policy(settings: EdgeSettings) -> ReportPolicy:
    return ReportPolicy(
        interval_s=settings.status_interval_s,
        ttl_s=settings.status_ttl_s,
        stream_maxlen=settings.status_stream_maxlen,
    )


def guard_policy(settings: EdgeSettings) -> GuardPolicy:
    return GuardPolicy(
        enabled=settings.guard_enabled,
        window_s=settings.guard_window_s,
        min_predictions=settings.guard_min_predictions,
        min_labeled=settings.guard_min_labeled,
        max_accuracy_drop=settings.guard_max_accuracy_drop,
        max_mae_increase=settings.guard_max_mae_increase,
        max_fallback_increase=settings.guard_max_fallback_increase,
        max_error_increase=settings.guard_max_error_increase,
        max_p99_ratio=settings.guard_max_p99_ratio,
        p99_floor_ms=settings.guard_p99_floor_ms,
    )


def update_policy(settings: EdgeSettings) -> UpdatePolicy:
    return UpdatePolicy(
        max_artifact_bytes=settings.max_artifact_bytes,
        runtime=settings.runtime,
        num_threads=settings.num_threads,
        warmup_invokes=settings.warmup_invokes,
        poll_s=settings.desired_poll_s,
    )


def _check_truth(
    classifies: bool, width: int, label: int | None, target: Sequence[float] | None
) -> list[float] | None:
    """The truth a model's task needs: a class index in range for a classifier, or one
    finite number per output for a regressor (returned as a list); InputError if not."""
    if classifies:
        if label is None:
            raise InputError(
                "label is required: this model is a classifier (target is for regressors)"
            )
        if not 0 <= label < width:
            raise InputError(f"label {label} is outside the model's classes 0..{width - 1}")
        return None
    if target is None:
        raise InputError(
            f"target is required: this model is a regressor with {width} output(s) "
            "(label is for classifiers)"
        )
    values = [float(v) for v in target]
    if len(values) != width:
        raise InputError(f"target has {len(values)} value(s); the model has {width} output(s)")
    if not all(isfinite(v) for v in values):
        raise InputError("target must hold finite numbers (got NaN or infinity)")
    return values


class EdgeDaemon:
    """One edge device: serve, learn from feedback, take updates."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.keys = FleetKeys(settings.fleet)
        member = FleetMember(settings.redis_url, self.keys, settings.device_id, settings.model)
        # A bad key file is a ConfigError before anything starts.
        self.verifier = Verifier.from_file(settings.public_key)
        self.store = ModelStore(settings.state_dir, keep=settings.keep_versions)
        self.chain = ServingChain(
            budget_ms=settings.latency_budget_ms,
            probe_every=settings.latency_probe_every,
            recent=settings.recent_inputs,
        )
        # The in-process predict is the chain's own bound method: one Python call
        # less on a path benchmarked in microseconds. The method below documents it.
        self.predict = self.chain.predict  # type: ignore[method-assign]
        self.predict_batch = self.chain.predict_batch  # type: ignore[method-assign]
        self.uplink = FeedbackUplink(
            member, self.store.epoch, settings.state_dir, uplink_policy(settings)
        )
        self.status = StatusReporter(member, self.health, report_policy(settings))
        self.guard = SwapGuard(
            self.chain, self.store, guard_policy(settings), on_revert=self.status.kick
        )
        self.updater = UpdateConsumer(
            member,
            update_policy(settings),
            store=self.store,
            chain=self.chain,
            verifier=self.verifier,
            guard=self.guard,
            on_swap=self.status.kick,
        )
        self._state: str = "starting"
        self._started_at = time.monotonic()
        self._lifecycle = threading.Lock()
        self._stats_lock = threading.Lock()
        # Per labeled prediction: 1/0 right/wrong (classifier) or |error| (regressor).
        self._scores: deque[float] = deque(maxlen=settings.accuracy_window)
        self._labeled = 0
        self._labeled_correct = 0
        self._load_errors: list[str] = []

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Load what the store says to serve, then start the threads. Never
        needs Redis: an edge that boots offline serves from disk."""
        with self._lifecycle:
            if self._state != "starting":
                return
            self.chain.set_models(
                current=self._load_stored(self.store.current, "current"),
                last_known_good=self._load_stored(self.store.last_known_good, "last-known-good"),
                baseline=self._load_baseline(),
            )
            self._state = "running"  # before the threads: the first report says so
            self.uplink.start()
            self.updater.start()
            self.status.start()
        served = ", ".join(m.name for m in self.chain.serving) or "nothing yet"
        logger.info(
            "edge %s (fleet %s) serving %s", self.settings.device_id, self.settings.fleet, served
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking updates, drain feedback (spooling what cannot be sent),
        publish a last 'stopping' status. Safe to call more than once."""
        with self._lifecycle:
            if self._state in ("stopping", "stopped"):
                return
            was_running = self._state == "running"
            self._state = "stopping"
        if was_running:
            self.updater.stop()
            self.uplink.close(timeout)
            self.status.stop(final=self.health())
        self._state = "stopped"
        logger.info("edge %s stopped", self.settings.device_id)

    def __enter__(self) -> EdgeDaemon:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _load_stored(self, sha: str | None, role: str) -> TFLiteModel | None:
        stored = load_if_sound(self.store, sha)
        if stored is None:
            if sha is not None:
                self._load_errors.append(f"stored {role} model {sha[:12]} is unusable")
            return None
        manifest = stored.signed.manifest()
        try:
            model = self._build(
                stored.data,
                manifest.version,
                f"{manifest.model} v{manifest.version}",
                input=manifest.input,
                task=manifest.task,
            )
            # Re-run the probe: a runtime upgraded since install may answer differently.
            model.check_probe(manifest.probe)
        except ModelRejected as e:
            logger.error("refusing stored %s model: %s", role, e)
            self._load_errors.append(f"stored {role} model refused: {e}")
            return None
        return model

    def _load_baseline(self) -> TFLiteModel | None:
        path = self.settings.baseline_model
        if path is None:
            return None
        try:
            return self._build(path.read_bytes(), None, f"baseline {path.name}")
        except (OSError, ModelRejected) as e:
            logger.warning("baseline model %s not used: %s", path, e)
            return None

    def _build(
        self,
        data: bytes,
        version: int | None,
        name: str,
        *,
        input: TensorSpec | None = None,
        task: TaskSpec | None = None,
    ) -> TFLiteModel:
        settings = self.settings
        model = TFLiteModel(
            data,
            version=version,
            name=name,
            num_threads=settings.num_threads,
            runtime=settings.runtime,
            input=input,
            task=task,
        )
        model.warm_up(settings.warmup_invokes)
        return model

    # -- the in-process API -------------------------------------------------

    def predict(
        self, x: npt.NDArray[Any] | Sequence[Any], budget_ms: float | None = None
    ) -> Prediction:
        """Answer one sample; see ``ServingChain.predict`` (which replaces this
        method on each instance)."""
        return self.chain.predict(x, budget_ms)

    def predict_batch(
        self, x: npt.NDArray[Any] | Sequence[Any], budget_ms: float | None = None
    ) -> list[Prediction]:
        """Answer a batch ``[N, *input shape]``; see ``ServingChain.predict_batch``
        (which replaces this method on each instance)."""
        return self.chain.predict_batch(x, budget_ms)

    def feedback(
        self,
        label: int | None = None,
        request_id: str | None = None,
        x: npt.NDArray[Any] | Sequence[Any] | None = None,
        *,
        target: Sequence[float] | None = None,
    ) -> FeedbackAccepted:
        """Record the truth for an earlier prediction (``request_id``) or for one
        sample ``x``, and send it to the trainers: ``label`` (a class index) for a
        classifier, ``target`` (one number per output) for a regressor.

        Raises NotFound for an unknown or expired request id and InputError for a
        truth the model's task does not take or an ``x`` that is not one sample of
        its input (naming the expected shape). With a request id, the stored input
        is used and ``x`` is ignored. The event carries the sample as raw bytes.
        """
        if request_id is not None:
            event, sample = self._joined_event(label, target, request_id)
        elif x is not None:
            spec, classifies = self.chain.input, self.chain.classifies
            if spec is None or classifies is None:
                raise Unavailable("no model is loaded, so the expected input is unknown")
            batch, _ = as_batch(x, spec)
            if len(batch) != 1:
                raise InputError(
                    f"feedback takes one sample of {spec.describe()}, got {len(batch)}"
                )
            targets = _check_truth(classifies, self.chain.num_classes or 0, label, target)
            sample = batch[0]
            event = FeedbackEvent(
                event_id=self.uplink.new_event_id(),
                device_id=self.settings.device_id,
                model=self.settings.model,
                x_shape=spec.shape,
                x_dtype=spec.dtype,
                label=label if classifies else None,
                target=targets,
            )
        else:
            raise InputError("feedback needs a request_id from /v1/predict or the input x")
        queued = self.uplink.submit(event, to_bytes(sample))
        return FeedbackAccepted(event_id=event.event_id, queued=queued)

    def _joined_event(
        self, label: int | None, target: Sequence[float] | None, request_id: str
    ) -> tuple[FeedbackEvent, npt.NDArray[Any]]:
        """The event (and its sample) for an earlier prediction, which also counts
        toward the rolling metric."""
        recalled = self.chain.recall(request_id)
        if recalled is None:
            raise NotFound(
                f"request_id {request_id!r} is unknown or expired (this edge keeps the last "
                f"{self.settings.recent_inputs} predictions of its current run)"
            )
        if not np.isfinite(recalled.x).all():
            raise InputError(f"the input of {request_id} was not finite; it cannot train a model")
        classifies = recalled.predicted_outputs is None
        targets = _check_truth(classifies, recalled.num_classes, label, target)
        event = FeedbackEvent(
            event_id=self.uplink.new_event_id(),
            device_id=self.settings.device_id,
            model=self.settings.model,
            x_shape=list(recalled.x.shape),
            x_dtype="uint8" if recalled.x.dtype == np.uint8 else "float32",
            label=label if classifies else None,
            target=targets,
            model_version=recalled.model_version,
            model_sha256=recalled.model_sha256,
            request_id=request_id,
            predicted=recalled.predicted,
            predicted_outputs=recalled.predicted_outputs,
            fallback=recalled.fallback,
        )
        if targets is None:
            assert label is not None  # _check_truth: a classifier's label
            self.guard.observe(recalled, label)
            score = float(recalled.predicted == label)
        else:
            self.guard.observe(recalled, targets)
            outputs = recalled.predicted_outputs or []
            score = sum(abs(a - b) for a, b in zip(outputs, targets, strict=True)) / len(targets)
        with self._stats_lock:
            self._labeled += 1
            self._labeled_correct += classifies and score == 1.0
            self._scores.append(score)
        return event, recalled.x

    @property
    def can_serve(self) -> bool:
        """True when at least one model can answer."""
        return bool(self.chain.serving)

    def health(self) -> EdgeStatus:
        """This edge's status: what it serves, how well, and what went wrong last."""
        serving = self.chain.serving
        head = serving[0] if serving else None
        p50, p99 = self.chain.latency_percentiles()
        with self._stats_lock:
            rolling = sum(self._scores) / len(self._scores) if self._scores else None
            labeled, correct = self._labeled, self._labeled_correct
        classifies = self.chain.classifies is not False
        return EdgeStatus(
            device_id=self.settings.device_id,
            fleet=self.settings.fleet,
            model=self.settings.model,
            version=head.version if head else None,
            sha256=head.sha256 if head else None,
            runtime=head.runtime if head else self._runtime_name(),
            state=self._public_state(),
            uptime_s=time.monotonic() - self._started_at,
            rolling_accuracy=rolling if classifies else None,
            metric="accuracy" if classifies else "mae",
            rolling_metric=rolling,
            latency_ms_p50=p50,
            latency_ms_p99=p99,
            counters=self._counters(labeled, correct),
            last_error=self._last_error(),
            refused_sha256=self.store.refused_sha256,
            revert_reason=self.store.revert_reason,
        )

    def _counters(self, labeled: int, correct: int) -> EdgeCounters:
        reasons = self.chain.fallback_counts()
        return EdgeCounters(
            predictions=self.chain.predictions,
            failed_requests=self.chain.failed_requests,
            fallback_predictions=sum(reasons.values()),
            fallback_reasons=reasons,
            feedback_sent=self.uplink.sent,
            feedback_spooled=self.uplink.spooled,
            feedback_dropped=self.uplink.dropped,
            labeled=labeled,
            labeled_correct=correct,
            swaps=self.updater.swaps,
            updates_refused=self.updater.updates_refused,
            bytes_downloaded=self.updater.bytes_downloaded,
            patches_applied=self.updater.patches_applied,
            full_downloads=self.updater.full_downloads,
            patch_failures=self.updater.patch_failures,
            self_reverts=self.guard.reverts,
        )

    def _public_state(self) -> Literal["starting", "serving", "degraded", "stopping"]:
        # serving: the current model is loaded. degraded: answering from a
        # fallback (or not at all) because there is no usable current model.
        if self._state == "running":
            return "serving" if self.chain.current is not None else "degraded"
        return "stopping" if self._state in ("stopping", "stopped") else "starting"

    def _last_error(self) -> str | None:
        timed = [
            (self.updater.last_error_at, self.updater.last_error),
            (self.uplink.last_error_at, self.uplink.last_error),
            (self.status.last_error_at, self.status.last_error),
            (self.guard.last_error_at, self.guard.last_error),
        ]
        latest = max(((t, m) for t, m in timed if m), default=None)
        if latest is not None:
            return latest[1]
        if self._load_errors:
            return self._load_errors[-1]
        left_out = self.chain.left_out
        return left_out[0] if left_out else None

    def _runtime_name(self) -> str:
        try:
            return interpreter_class(self.settings.runtime)[1]
        except ImportError:
            return ""
