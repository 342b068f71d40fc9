"""One model an edge serves: its store, serving chain, feedback uplink, updater,
guard and counters.

An edge serves one model or several (``EdgeSettings.models``); each is a
``ServedModel``, independent of the others: its own state directory (the first
model's is ``state_dir`` itself, so that a device's state survives the upgrade to
several models; another model's is ``state_dir/<model>``), so its own feedback
epoch and sequence numbers, spool and stream (``shared.feedback_stream.feedback_stream``);
its own updater, which applies only its model's announcements; its own guard.
``edge.daemon.EdgeDaemon`` starts and stops them and reports them in one status.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from math import isfinite, prod
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge.adaptation import Adapter, wanted
from edge.connections import FleetMember
from edge.director import DirectorGate
from edge.fallback import BatchPredictions, Prediction, RecentInput, ServingChain
from edge.fleet_api import FleetApi, HttpFetcher
from edge.guard import GuardPolicy, SwapGuard
from edge.http_uplink import HttpSink
from edge.model_store import ModelStore, load_if_sound
from edge.settings import EdgeSettings, device_signer
from edge.status import ReportPolicy
from edge.tuf_client import TufClient
from edge.updater import UpdateConsumer, UpdatePolicy
from edge.uplink import FeedbackUplink, UplinkPolicy
from shared.errors import InputError, ModelRejected, NotFound, Unavailable
from shared.holdout import held_out
from shared.keys import FleetKeys
from shared.messages import EdgeCounters, FeedbackAccepted, FeedbackEvent, ModelServing
from shared.runtime import TFLiteModel
from shared.signing import Verifier
from shared.task import TaskSpec
from shared.tensors import TensorSpec, as_batch, to_bytes

logger = logging.getLogger(__name__)

State = Literal["starting", "serving", "degraded", "stopping"]


# -- what each setting drives: the parts' options, built from the settings here only --


def uplink_policy(settings: EdgeSettings) -> UplinkPolicy:
    return UplinkPolicy(
        batch=settings.feedback_batch,
        flush_ms=settings.feedback_flush_ms,
        queue_max=settings.feedback_queue_max,
        spool_max_bytes=settings.spool_max_bytes,
        wait_replicas=settings.feedback_wait_replicas,
        wait_ms=settings.feedback_wait_ms,
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
        download_deadline_s=settings.download_deadline_s,
    )


def fleet_api(settings: EdgeSettings) -> FleetApi | None:
    """The cloud API client of an edge that updates over HTTP (``update_source``), or None."""
    return _api(settings) if settings.update_source == "http" else None


def uplink_api(settings: EdgeSettings) -> FleetApi | None:
    """A cloud API client of an edge whose feedback and status go over HTTP (``uplink``),
    or None; one per thread that uses it (its own connection pool)."""
    return _api(settings) if settings.uplink == "http" else None


def _api(settings: EdgeSettings) -> FleetApi:
    assert settings.api_url is not None and settings.api_token is not None  # settings check
    return FleetApi(
        settings.api_url,
        settings.api_token.get_secret_value(),
        ca_file=settings.api_ca_file,
        deadline_s=settings.download_deadline_s,
    )


def _tuf_client(
    settings: EdgeSettings, member: FleetMember, metadata_dir: Path, api: FleetApi | None
) -> TufClient:
    assert settings.tuf_root is not None
    if api is not None:
        fetcher = HttpFetcher(api)
        urls = (api.metadata_url, api.targets_url)
        return TufClient.from_file(
            None, member.keys, metadata_dir, settings.tuf_root, fetcher=fetcher, base_urls=urls
        )
    # A stalled metadata or target read is abandoned at the download deadline, as the
    # updater's own downloads are (slow retrieval).
    client = member.connect(socket_timeout=settings.download_deadline_s, retries=0)
    return TufClient.from_file(
        client,
        member.keys,
        metadata_dir,
        settings.tuf_root,
        deadline_s=settings.download_deadline_s,
    )


def _sink(settings: EdgeSettings, member: FleetMember) -> HttpSink | None:
    """The uplink's way through the API (``uplink = "http"``), or None: Redis."""
    api = uplink_api(settings)
    if api is None:
        return None
    return HttpSink(api, member.model, member.signer, settings.feedback_batch)


def check_truth(
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


class ServedModel:
    """One model on this edge: serve it, send its feedback, take its updates."""

    def __init__(
        self,
        settings: EdgeSettings,
        model: str,
        state_dir: Path,
        *,
        verifier: Verifier,
        baseline: Path | None,
        on_change: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.name = model
        self.state_dir = state_dir
        self._baseline_path = baseline
        keys = FleetKeys(settings.fleet)
        member = FleetMember(
            settings.redis_url,
            keys,
            settings.device_id,
            model,
            tls=settings.redis_options(),
            signer=device_signer(settings),
        )
        self.store = ModelStore(state_dir, keep=settings.keep_versions)
        self.chain = ServingChain(
            budget_ms=settings.latency_budget_ms,
            probe_every=settings.latency_probe_every,
            recent=settings.recent_inputs,
        )
        # The in-process predict is the chain's own bound method: one Python call
        # less on a path benchmarked in microseconds. The methods below document it.
        self.predict = self.chain.predict  # type: ignore[method-assign]
        self.predict_batch = self.chain.predict_batch  # type: ignore[method-assign]
        self.uplink = FeedbackUplink(
            member, self.store.epoch, state_dir, uplink_policy(settings), _sink(settings, member)
        )
        self.guard = SwapGuard(self.chain, self.store, guard_policy(settings), on_revert=on_change)
        api = fleet_api(settings)
        self.updater = UpdateConsumer(
            member,
            update_policy(settings),
            store=self.store,
            chain=self.chain,
            verifier=verifier,
            guard=self.guard,
            on_swap=on_change,
            tuf=(
                _tuf_client(settings, member, state_dir / "tuf", api)
                if settings.tuf_root is not None
                else None
            ),
            director=(
                DirectorGate(
                    keys,
                    model,
                    settings.device_id,
                    [Verifier.from_file(k) for k in settings.director_keys],
                    state_dir / "director.counter",
                )
                # With tuf_root, the fleet's root may name the director keys (keys init).
                if settings.director_keys or settings.tuf_root is not None
                else None
            ),
            api=api,
        )
        self._stats_lock = threading.Lock()
        # Per labeled prediction: 1/0 right/wrong (classifier) or |error| (regressor).
        self._scores: deque[float] = deque(maxlen=settings.accuracy_window)
        self._labeled = 0
        self._labeled_correct = 0
        self._load_errors: list[str] = []
        # Adaptation on the edge (edge/adaptation.py): built for the first label of a
        # model that wants one, again when the model's input or classes change.
        self._adapter: Adapter | None = None
        self._adapter_for: tuple[TensorSpec, int] | None = None
        self._adapter_lock = threading.Lock()
        self._retired = (0, 0, 0)  # answered, labels, switches of replaced adapters

    # -- lifecycle (EdgeDaemon's) -------------------------------------------

    def load(self) -> None:
        """Put what the store says to serve into the chain (no network)."""
        self.chain.set_models(
            current=self._load_stored(self.store.current, "current"),
            last_known_good=self._load_stored(self.store.last_known_good, "last-known-good"),
            baseline=self._load_baseline(),
        )

    def start(self) -> None:
        self.uplink.start()
        self.updater.start()

    def stop(self, timeout: float) -> None:
        """Stop taking updates, then drain feedback (spooling what cannot be sent)."""
        self.updater.stop()
        self.uplink.close(timeout)

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
        path = self._baseline_path
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
    ) -> BatchPredictions:
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
        """``handle_feedback`` without the event's frame; see there."""
        return self.handle_feedback(label, request_id, x, target=target)[0]

    def handle_feedback(
        self,
        label: int | None = None,
        request_id: str | None = None,
        x: npt.NDArray[Any] | Sequence[Any] | None = None,
        *,
        target: Sequence[float] | None = None,
    ) -> tuple[FeedbackAccepted, bytes]:
        """Record the truth for an earlier prediction (``request_id``) or for one
        sample ``x``, and send it to the trainers: ``label`` (a class index) for a
        classifier, ``target`` (one number per output) for a regressor.

        Raises NotFound for an unknown or expired request id and InputError for a
        truth the model's task does not take or an ``x`` that is not one sample of
        its input (naming the expected shape). With a request id, the stored input
        is used and ``x`` is ignored. The event carries the sample as raw bytes.
        Returns the answer and the event's frame (``FeedbackUplink.kept``).
        """
        if request_id is not None:
            event, sample, answered = self._joined_event(label, target, request_id)
        elif x is not None:
            spec, classifies = self.chain.input, self.chain.classifies
            if spec is None or classifies is None:
                raise Unavailable("no model is loaded, so the expected input is unknown")
            batch, _ = as_batch(x, spec)
            if len(batch) != 1:
                raise InputError(
                    f"feedback takes one sample of {spec.describe()}, got {len(batch)}"
                )
            targets = check_truth(classifies, self.chain.num_classes or 0, label, target)
            sample = batch[0]
            answered = None
            event = FeedbackEvent(
                event_id=self.uplink.new_event_id(),
                device_id=self.settings.device_id,
                model=self.name,
                x_shape=spec.shape,
                x_dtype=spec.dtype,
                label=label if classifies else None,
                target=targets,
            )
        else:
            raise InputError("feedback needs a request_id from /v1/predict or the input x")
        queued, line = self.uplink.hand_over(event, to_bytes(sample))
        if event.label is not None:
            self._adapt(sample, event.label, answered, event)
        return FeedbackAccepted(event_id=event.event_id, queued=queued), line

    def _adapt(
        self, x: npt.NDArray[Any], label: int, answered: RecentInput | None, event: FeedbackEvent
    ) -> None:
        """Teach the adapter one label, compared with the current model's own answer:
        the one it gave the request if it answered it, else its answer now; whether the
        trainers hold the label out comes from the event's id."""
        adapter = self._adapter_now()
        current = self.chain.current
        if adapter is None or current is None:
            return
        held = held_out(*event.stream_key, self.settings.holdout_every)
        if adapter.active and not self.chain.adapting:
            adapter.dropped()  # a swap or revert dropped it: it offers itself again
        if answered is not None and answered.model_sha256 == current.sha256:
            adapter.learn(x, label, answered.predicted, current.sha256, held)
            return
        own = self.chain.current_label(x)
        if own is not None:
            adapter.learn(x, label, own[0], own[1], held)

    def _adapter_now(self) -> Adapter | None:
        """The adapter for the current model (None if it wants none), new if its
        input or classes changed."""
        chain, settings = self.chain, self.settings
        spec, width = chain.input, chain.num_classes
        if spec is None or width is None:
            return None
        with self._adapter_lock:
            if not wanted(settings.adaptation, chain.classifies, prod(spec.shape)):
                self._retire()
                return None
            if self._adapter is None or self._adapter_for != (spec, width):
                self._retire()
                self._adapter = adapter = Adapter(
                    width,
                    window=settings.adaptation_window,
                    ks=settings.adaptation_ks,
                    spans=settings.adaptation_spans,
                    linear=settings.adaptation_linear,
                    trees=settings.adaptation_trees,
                    average=settings.adaptation_average,
                    choose=settings.adaptation_voter_record,
                    alpha=settings.adaptation_alpha,
                    keep_alpha=settings.adaptation_keep_alpha,
                )
                adapter.on_switch = lambda on, sha: chain.adapt(adapter if on else None, sha)
                adapter.judge = chain.current_label
                self._adapter_for = (spec, width)
                self._start_adapter(adapter, spec)
            return self._adapter

    def _start_adapter(self, adapter: Adapter, spec: TensorSpec) -> None:
        """Teach a new adapter the exemplars of the version serving now, if its manifest
        carries any (the bootstrap's seed rows) for this input."""
        stored = load_if_sound(self.store, self.store.current)
        if stored is None:
            return
        manifest = stored.signed.manifest()
        if manifest.exemplars is None or manifest.input_spec != spec:
            return
        X, y = manifest.exemplars.arrays(manifest.num_features)
        adapter.start_from(X, y, manifest.exemplars.held_out)
        logger.info(
            "adapter starts from %d exemplars of %s v%d", len(y), manifest.model, manifest.version
        )

    def _retire(self) -> None:
        old = self._adapter
        if old is None:
            return
        self.chain.adapt(None, "")
        answered, labels, switches = self._retired
        self._retired = (answered + old.answered, labels + old.labels, switches + old.switches)
        self._adapter = None

    def _joined_event(
        self, label: int | None, target: Sequence[float] | None, request_id: str
    ) -> tuple[FeedbackEvent, npt.NDArray[Any], RecentInput]:
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
        targets = check_truth(classifies, recalled.num_classes, label, target)
        event = FeedbackEvent(
            event_id=self.uplink.new_event_id(),
            device_id=self.settings.device_id,
            model=self.name,
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
        return event, recalled.x, recalled

    # -- status -------------------------------------------------------------

    def report(self, running: bool, runtime: str) -> ModelServing:
        """This model's part of the edge's status. ``running``: the edge's threads run;
        ``runtime`` names the runtime when no model is loaded."""
        serving = self.chain.serving
        head = serving[0] if serving else None
        p50, p99 = self.chain.latency_percentiles()
        with self._stats_lock:
            rolling = sum(self._scores) / len(self._scores) if self._scores else None
            labeled, correct = self._labeled, self._labeled_correct
        classifies = self.chain.classifies is not False
        return ModelServing(
            model=self.name,
            version=head.version if head else None,
            sha256=head.sha256 if head else None,
            runtime=head.runtime if head else runtime,
            state=self.public_state(running),
            rolling_accuracy=rolling if classifies else None,
            metric="accuracy" if classifies else "mae",
            rolling_metric=rolling,
            latency_ms_p50=p50,
            latency_ms_p99=p99,
            counters=self._counters(labeled, correct),
            last_error=self.last_error(),
            refused_sha256=self.store.refused_sha256,
            revert_reason=self.store.revert_reason,
            stale=self.updater.stale,
            tuf_root_version=self.updater.tuf_root_version,
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
            **self._adapter_counters(),
        )

    def _adapter_counters(self) -> dict[str, Any]:
        with self._adapter_lock:
            adapter, (answered, labels, switches) = self._adapter, self._retired
        if adapter is not None:
            answered += adapter.answered
            labels += adapter.labels
            switches += adapter.switches
        return {
            "adapted_predictions": answered,
            "adapter_labels": labels,
            "adapter_switches": switches,
            "adapter_active": self.chain.adapting,
        }

    def public_state(self, running: bool) -> State:
        # serving: the current model is loaded. degraded: answering from a
        # fallback (or not at all) because there is no usable current model.
        if running:
            return "serving" if self.chain.current is not None else "degraded"
        return "starting"

    def timed_errors(self) -> list[tuple[float, str | None]]:
        """(when, message) of the last error of each of this model's threads."""
        return [
            (self.updater.last_error_at, self.updater.last_error),
            (self.uplink.last_error_at, self.uplink.last_error),
            (self.guard.last_error_at, self.guard.last_error),
        ]

    def last_error(self, also: list[tuple[float, str | None]] | None = None) -> str | None:
        """The newest error of this model's threads (and ``also``), else why a stored
        model was refused at start, else why a loaded model is not in the chain."""
        timed = [*self.timed_errors(), *(also or [])]
        latest = max(((t, m) for t, m in timed if m), default=None)
        if latest is not None:
            return latest[1]
        if self._load_errors:
            return self._load_errors[-1]
        left_out = self.chain.left_out
        return left_out[0] if left_out else None
