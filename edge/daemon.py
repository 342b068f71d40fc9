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
from typing import Literal

import numpy as np

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
from shared.runtime import FloatArray, TFLiteModel, interpreter_class
from shared.signing import Verifier

logger = logging.getLogger(__name__)

_F32 = np.dtype(np.float32)
_F32_MAX = float(np.finfo(np.float32).max)


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


def _check_label(label: int, num_classes: int) -> None:
    if not 0 <= label < num_classes:
        raise InputError(f"label {label} is outside the model's classes 0..{num_classes - 1}")


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
        self._accuracy: deque[bool] = deque(maxlen=settings.accuracy_window)
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
                stored.data, manifest.version, f"{manifest.model} v{manifest.version}"
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

    def _build(self, data: bytes, version: int | None, name: str) -> TFLiteModel:
        settings = self.settings
        model = TFLiteModel(
            data,
            version=version,
            name=name,
            num_threads=settings.num_threads,
            runtime=settings.runtime,
        )
        model.warm_up(settings.warmup_invokes)
        return model

    # -- the in-process API -------------------------------------------------

    def predict(
        self, x: FloatArray | Sequence[float], budget_ms: float | None = None
    ) -> Prediction:
        """Classify one sample; see ``ServingChain.predict`` (which replaces this
        method on each instance)."""
        return self.chain.predict(x, budget_ms)

    def feedback(
        self,
        label: int,
        request_id: str | None = None,
        x: FloatArray | Sequence[float] | None = None,
    ) -> FeedbackAccepted:
        """Record the true ``label`` for an earlier prediction (``request_id``) or
        for an input ``x``, and send it to the trainers.

        Raises NotFound for an unknown or expired request id and InputError for
        a label outside the model's classes or a malformed ``x``. With a request
        id, the stored input is used and ``x`` is ignored.
        """
        if request_id is not None:
            event = self._joined_event(label, request_id)
        elif x is not None:
            values = self._checked_features(x)
            _check_label(label, self.chain.num_classes or 0)
            event = FeedbackEvent(
                event_id=self.uplink.new_event_id(),
                device_id=self.settings.device_id,
                model=self.settings.model,
                x=values,
                label=label,
            )
        else:
            raise InputError("feedback needs a request_id from /v1/predict or the input x")
        queued = self.uplink.submit(event)
        return FeedbackAccepted(event_id=event.event_id, queued=queued)

    def _joined_event(self, label: int, request_id: str) -> FeedbackEvent:
        """The event for an earlier prediction, which also counts toward the rolling accuracy."""
        recalled = self.chain.recall(request_id)
        if recalled is None:
            raise NotFound(
                f"request_id {request_id!r} is unknown or expired (this edge keeps the last "
                f"{self.settings.recent_inputs} predictions of its current run)"
            )
        if not np.isfinite(recalled.x).all():
            raise InputError(f"the input of {request_id} was not finite; it cannot train a model")
        _check_label(label, recalled.num_classes)
        event = FeedbackEvent(
            event_id=self.uplink.new_event_id(),
            device_id=self.settings.device_id,
            model=self.settings.model,
            x=recalled.x.tolist(),
            label=label,
            model_version=recalled.model_version,
            model_sha256=recalled.model_sha256,
            request_id=request_id,
            predicted=recalled.predicted,
            fallback=recalled.fallback,
        )
        self.guard.observe(recalled, label)
        correct = recalled.predicted == label
        with self._stats_lock:
            self._labeled += 1
            self._labeled_correct += correct
            self._accuracy.append(correct)
        return event

    def _checked_features(self, x: FloatArray | Sequence[float]) -> list[float]:
        """``x`` as a list of the model's feature count of finite float32 numbers."""
        num_features = self.chain.num_features
        if num_features is None:
            raise Unavailable("no model is loaded, so the expected features are unknown")
        try:
            arr = np.asarray(x)
            is_f32 = arr.dtype is _F32  # what predict takes: checked as it is
            if not is_f32:
                arr = arr.astype(np.float64, copy=False)  # the range check cannot overflow
        except (TypeError, ValueError) as e:
            raise InputError(f"x must be a list of {num_features} numbers: {e}") from e
        if arr.size != num_features:
            raise InputError(f"expected {num_features} features, got {arr.size}")
        values: list[float] = arr.ravel().tolist()
        # A finite float32 is in range, and the float64 sum of such values cannot
        # overflow while a NaN or an infinity makes it non-finite: one pass over the
        # list the event needs anyway, a third of two numpy reductions. Other input
        # is float64 by now, range-checked whole (NaN fails the comparison too).
        if not (isfinite(sum(values)) if is_f32 else np.abs(arr).max() <= _F32_MAX):
            raise InputError(
                "features must be finite float32 numbers (got NaN, infinity or overflow)"
            )
        return values

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
            accuracy = sum(self._accuracy) / len(self._accuracy) if self._accuracy else None
            labeled, correct = self._labeled, self._labeled_correct
        return EdgeStatus(
            device_id=self.settings.device_id,
            fleet=self.settings.fleet,
            model=self.settings.model,
            version=head.version if head else None,
            sha256=head.sha256 if head else None,
            runtime=head.runtime if head else self._runtime_name(),
            state=self._public_state(),
            uptime_s=time.monotonic() - self._started_at,
            rolling_accuracy=accuracy,
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
        return self._load_errors[-1] if self._load_errors else None

    def _runtime_name(self) -> str:
        try:
            return interpreter_class(self.settings.runtime)[1]
        except ImportError:
            return ""
