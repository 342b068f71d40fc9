"""Wire messages: every structure that crosses a process or a network.

Each message carries ``schema_version``; readers refuse versions they do not
know (MessageError) rather than guess. Messages are JSON on the wire, never
pickle. ``to_wire``/``from_wire`` are the one pair of converters each message
uses, so that a stream entry and an HTTP body look the same.

>>> ev = FeedbackEvent(event_id="pi-1:e0:1", device_id="pi-1", model="digits",
...                    x=[0.0, 1.0], label=3)
>>> FeedbackEvent.from_wire(ev.to_wire()) == ev
True
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from shared.codec import SHA256_PATTERN
from shared.errors import MessageError
from shared.task import TaskSpec
from shared.tensors import TensorSpec

SCHEMA_VERSION = 1

M = TypeVar("M", bound="WireModel")


def _from_base64(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"not standard base64: {e}") from e
    return value


def _to_base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


#: Bytes that travel in JSON as standard base64 (RFC 4648 section 4, with padding).
B64Bytes = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    PlainSerializer(_to_base64, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


class WireModel(BaseModel):
    """Base of every wire message: strict about unknown versions, tolerant of new fields."""

    model_config = ConfigDict(extra="ignore", frozen=False)

    schema_version: int = SCHEMA_VERSION

    def to_wire(self) -> bytes:
        # The serializer's own UTF-8 bytes: model_dump_json() decodes them to a str
        # that would be encoded straight back (a sixth of a feedback event's cost).
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def from_wire(cls: type[M], data: bytes | str) -> M:
        try:
            obj = cls.model_validate_json(data)
        except ValidationError as e:
            raise MessageError(f"malformed {cls.__name__}: {_first_error(e)}") from e
        if obj.schema_version != SCHEMA_VERSION:
            raise MessageError(
                f"{cls.__name__} schema_version {obj.schema_version} is not supported "
                f"(this build speaks {SCHEMA_VERSION}); upgrade the reader"
            )
        return obj


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg', 'invalid')}"


# --- feedback ---------------------------------------------------------------


class FeedbackEvent(WireModel):
    """A labeled sample from an edge. ``event_id`` is the idempotency id:
    ``<device>:<epoch>:<seq>``, where the epoch changes when the device's state is
    wiped so that a restarted counter never collides with old ids.

    The truth is ``label`` (a class index) for a classifier, ``target`` (one number
    per output) for a regressor. The sample is ``x``, its values as a flat JSON
    list (what HTTP clients and older edges send), or, on the feedback stream, the
    raw bytes after the event's JSON in a frame (``shared.feedback_stream``), with
    ``x_shape`` and ``x_dtype`` saying how to read them.
    """

    event_id: str = Field(min_length=1, max_length=200)
    device_id: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=64)
    x: list[float] | None = None
    x_shape: list[int] | None = Field(None, max_length=4)
    x_dtype: Literal["float32", "uint8"] | None = None
    label: int | None = None
    target: list[float] | None = Field(None, min_length=1, max_length=1024)
    model_version: int | None = None
    model_sha256: str | None = None
    request_id: str | None = None
    predicted: int | None = None
    predicted_outputs: list[float] | None = Field(None, max_length=1024)
    fallback: bool = False
    ts: float = Field(default_factory=time.time)

    def to_wire(self) -> bytes:
        # Fields left unset are left out (a framed event has no ``x``; a classifier's
        # has no target): readers take them as None, and each event is smaller.
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)

    @property
    def stream_key(self) -> tuple[str, int]:
        """(device stream, sequence number) from the idempotency id."""
        head, _, seq = self.event_id.rpartition(":")
        try:
            return head, int(seq)
        except ValueError as e:
            raise MessageError(
                f"event_id {self.event_id!r} does not end in a sequence number"
            ) from e


class DeadLetter(WireModel):
    """A stream entry a consumer refused, kept with the reason."""

    source_stream: str
    source_id: str
    reason: str
    payload: str = Field(description="The refused entry, truncated to a few KiB")
    consumer: str = ""
    ts: float = Field(default_factory=time.time)


# --- models -----------------------------------------------------------------


class Signature(BaseModel):
    key_id: str
    value: str = Field(description="base64 Ed25519 signature")


class ProbeSet(BaseModel):
    """Inputs the edge runs a new model on before serving it, with the outputs the
    cloud measured for the same file in the edge runtime."""

    inputs: list[list[float]]
    expected: list[list[float]] = Field(description="probabilities per input")
    min_agreement: float = Field(0.95, ge=0, le=1, description="share of equal argmax required")
    max_abs_error: float = Field(0.1, ge=0, description="largest allowed mean |p - expected|")


class Exemplars(BaseModel):
    """Labelled samples of a classifier version's seed data, from which an edge's
    adapter starts instead of from nothing (edge/adaptation.py): the rows the
    bootstrap was trained on, then the rows it held out (``held_out``: the trailing
    ones, which no version was trained on, so the edge may compare the adapter with
    the model on them). ``values`` is their float32 little-endian bytes, one sample
    after another (``num_features`` values each).

    >>> e = Exemplars.of(np.array([[0.5, 1.0], [2.0, 3.0]]), [1, 0], held_out=1)
    >>> X, y = e.arrays(2)
    >>> X.tolist(), y.tolist(), e.held_out
    ([[0.5, 1.0], [2.0, 3.0]], [1, 0], 1)
    """

    values: B64Bytes
    labels: list[int] = Field(min_length=1, description="class index per sample")
    held_out: int = Field(0, ge=0, description="the last this many samples were never trained on")

    @classmethod
    def of(cls, X: npt.ArrayLike, y: npt.ArrayLike, held_out: int = 0) -> Exemplars:
        rows = np.asarray(X, "<f4")
        return cls(
            values=rows.tobytes(), labels=np.asarray(y, np.int64).tolist(), held_out=held_out
        )

    def arrays(self, num_features: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The samples [n, num_features] and their labels [n]."""
        X = np.frombuffer(self.values, "<f4").reshape(len(self.labels), num_features)
        return X.astype(np.float32), np.asarray(self.labels, np.int64)


#: Format of the typed sections of ``Explanation``: 1 = free-form dicts only (manifests
#: published before explanations were typed), 2 = every typed section filled in.
EXPLANATION_FORMAT = 2

#: How expected calibration error is binned, stated in every explanation that reports it.
ECE_BINNING = "top-label confidence, 15 equal-width bins over [0, 1], weighted by bin size"

#: How flipped samples are named: stable across rounds, processes and machines.
SAMPLE_ID_SCHEME = "first 12 hex digits of sha256(int32 LE label + float32 LE features)"
#: The same for a regressor's samples, and for samples that are not float32.
TENSOR_SAMPLE_ID_SCHEME = (
    "first 12 hex digits of sha256(int32 LE label, or float32 LE targets, + the sample's LE bytes)"
)


class TriggerSignal(BaseModel):
    """What started the round, with the numbers that made it start."""

    kind: str = Field(description='"bootstrap", "drift", "count" or "timer"')
    served_accuracy: float | None = Field(
        None, description="drift: served accuracy over the last drift window when it fired"
    )
    served_level: float | None = Field(
        None, description="drift: the running level of the served metric it left behind"
    )
    drop_threshold: float | None = Field(
        None,
        description="drift: the drop that counts as drift (a regressor: the relative rise of its error)",
    )
    metric: str = Field(
        "accuracy", description="the task's metric served_value and served_level are in"
    )
    served_value: float | None = Field(
        None, description="drift: the served metric over the last drift window when it fired"
    )
    threshold_samples: int | None = Field(
        None, description="count/timer: new labels the trigger needed"
    )
    interval_s: float | None = Field(None, description="timer: the round interval")


class DataWindow(BaseModel):
    """The data a version learned from."""

    source: Literal["seed_split", "feedback_stream"]
    first_stream_id: str | None = Field(
        None, description="first feedback stream entry of the window (None: seed split)"
    )
    last_stream_id: str | None = None
    new_samples: int = Field(0, ge=0, description="labeled samples new since the previous round")
    labeled_per_class: dict[str, int] = Field(
        default_factory=dict, description="new labeled samples per class"
    )
    training_samples: int = Field(0, ge=0, description="samples the round trained on")
    earlier_samples: int = Field(0, ge=0, description="held-out earlier data it was judged on")
    recent_samples: int = Field(0, ge=0, description="recent-window samples it was judged on")
    trigger: TriggerSignal


class SetMetrics(BaseModel):
    """One model's numbers on one evaluation set: a classifier's accuracy, recall and ECE,
    or a regressor's MAE, RMSE and R² (None when the set is empty)."""

    samples: int = Field(0, ge=0)
    accuracy: float | None = None
    recall: dict[str, float] = Field(default_factory=dict, description="per-class recall")
    ece: float | None = Field(None, description="expected calibration error (see ece_binning)")
    mae: float | None = Field(None, description="regression: mean absolute error over the outputs")
    rmse: float | None = Field(None, description="regression: root mean squared error")
    r2: float | None = Field(None, description="regression: coefficient of determination")


class ModelMetrics(BaseModel):
    earlier: SetMetrics = Field(description="held-out data from all time (the holdout reservoir)")
    recent: SetMetrics = Field(description="the newest held-out samples (the recent window)")


class EvaluationReport(BaseModel):
    """Parent and child artifacts (int8 files in the edge runtime) on the same data."""

    ece_binning: str = ECE_BINNING
    parent: ModelMetrics | None = Field(description="None: the version has no parent")
    child: ModelMetrics


class Forgetting(BaseModel):
    """Accuracy on earlier data, before and after the update.

    Measured on the held-out samples that are not in the recent window, so that
    gains on new data cannot hide losses on old data.
    """

    samples: int = Field(0, ge=0, description="held-out samples outside the recent window")
    parent_accuracy: float | None = None
    child_accuracy: float | None = None
    change: float | None = Field(
        None, description="child - parent in the metric; forgetting when it is worse (see metric)"
    )
    metric: str = Field(
        "accuracy", description="the task's metric: accuracy, or mae (lower is better)"
    )
    parent_value: float | None = Field(None, description="the parent's metric on these samples")
    child_value: float | None = Field(None, description="the child's metric on these samples")


class FlipCounts(BaseModel):
    compared: int = Field(0, ge=0, description="samples both models answered")
    fixed: int = Field(0, ge=0, description="parent wrong, child right")
    broken: int = Field(0, ge=0, description="parent right, child wrong")


class Flips(FlipCounts):
    """Predictions that changed between parent and child on the evaluation set: for a
    regressor, samples whose error shrank (fixed) or grew (broken) by more than ``tolerance``."""

    id_scheme: str = SAMPLE_ID_SCHEME
    tolerance: float | None = Field(
        None, description="regression: the change of a sample's |error| that counts (None: classes)"
    )
    fixed_ids: list[str] = Field(default_factory=list, description="examples, at most a few")
    broken_ids: list[str] = Field(default_factory=list, description="examples, at most a few")
    by_set: dict[str, FlipCounts] = Field(
        default_factory=dict, description='"earlier" and "recent"; a sample may be in both'
    )


class LayerChange(BaseModel):
    """How much one layer's constant tensors (weights and bias) changed."""

    name: str
    params: int = Field(ge=0)
    bytes: int = Field(ge=0, description="bytes of the layer's quantized tensors")
    bytes_changed: int | None = Field(None, ge=0)
    bytes_changed_fraction: float | None = Field(None, ge=0, le=1)
    l2_change: float | None = Field(None, ge=0, description="L2 norm of the weight change")
    relative_change: float | None = Field(
        None, ge=0, description="l2_change / L2 norm of the parent's weights"
    )
    scales_changed: int | None = Field(
        None, ge=0, description="quantization scales that differ (they live outside the buffers)"
    )
    residual_l2: float | None = Field(
        None, ge=0, description="trainer: L2 norm of the change kept back for later rounds"
    )


class WeightChange(BaseModel):
    source: Literal["none", "artifacts", "trainer"] = Field(
        description="artifacts: compared int8 files; trainer: the round's delta report; "
        "none: no parent"
    )
    layers: list[LayerChange] = Field(default_factory=list)
    bytes: int = Field(0, ge=0)
    bytes_changed: int | None = None
    bytes_changed_fraction: float | None = None
    scales: str | None = Field(
        None, description='trainer: "frozen" (parent\'s int8 grid kept) or "recalibrated"'
    )
    budget_bytes: int | None = Field(None, description="trainer: the round's byte budget")
    residual_l2: float | None = Field(
        None, ge=0, description="trainer: L2 norm of all change kept back for later rounds"
    )


class FeatureShift(BaseModel):
    feature: str = Field(description='input name, e.g. "r3c4" (row 3, column 4) for 8x8 digits')
    index: int = Field(ge=0)
    parent: float = Field(description="share of total attribution in the parent")
    child: float = Field(description="share of total attribution in the child")
    change: float


class AttributionShift(BaseModel):
    """Which inputs the model relies on, before and after (integrated gradients)."""

    method: str
    probe_samples: int = Field(0, ge=0)
    steps: int = Field(0, ge=0)
    grid: list[int] | None = Field(
        None, description="the input's shape when it has one ([rows, cols], [T, C], [H, W, C])"
    )
    parent_importance: list[float] | None = Field(
        None, description="mean |attribution| per input, normalized to sum 1"
    )
    child_importance: list[float] = Field(default_factory=list)
    gained: list[FeatureShift] = Field(default_factory=list)
    lost: list[FeatureShift] = Field(default_factory=list)
    shift_score: float | None = Field(
        None, ge=0, le=1, description="total variation distance of the importance maps (0..1)"
    )


class Explanation(BaseModel):
    """Why a version exists and what it changed.

    ``data_window``, ``hyperparameters`` and ``details`` are the round's record as
    it was written (format 1). The typed sections below are filled in every
    version published at ``format`` 2; they are None only in older manifests,
    which still parse. A version without a parent says so: ``parent`` sides are
    None and ``notes`` says why.
    """

    format: int = Field(1, description="1: free-form record only; 2: typed sections filled")
    trigger: str = ""
    summary: str = ""
    data_window: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    window: DataWindow | None = None
    evaluation: EvaluationReport | None = None
    forgetting: Forgetting | None = None
    flips: Flips | None = None
    weights: WeightChange | None = None
    attribution: AttributionShift | None = None
    notes: list[str] = Field(default_factory=list)


class ModelManifest(WireModel):
    """An immutable model version: the TFLite file is named by ``sha256``."""

    model: str
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1)
    parent_sha256: str | None = None
    parent_version: int | None = None
    created_at: float = Field(default_factory=time.time)
    num_features: int = Field(ge=1, description="values in one sample (input's size)")
    labels: list[str] = Field(default_factory=list, description="class names (classification)")
    input: TensorSpec | None = Field(
        None, description="one sample's shape and dtype; None: a flat float32 vector"
    )
    task: TaskSpec | None = Field(None, description="None: classification over labels")
    quantization: Literal["int8-static"] = "int8-static"
    runtime: str = Field(description="runtime and version the numeric check ran in")
    metrics: dict[str, float] = Field(default_factory=dict)
    explanation: Explanation = Field(default_factory=Explanation)
    probe: ProbeSet
    exemplars: Exemplars | None = Field(
        None, description="labelled samples for the edges' adapters to start from (bootstrap)"
    )

    @model_validator(mode="after")
    def _task_fits(self) -> ModelManifest:
        if self.task is None and len(self.labels) < 2:
            raise ValueError("a classifier's manifest needs at least two labels")
        if self.input is not None and self.input.size != self.num_features:
            raise ValueError(f"num_features {self.num_features} is not the input's size")
        if self.exemplars is not None:
            self._exemplars_fit(self.exemplars)
        return self

    def _exemplars_fit(self, exemplars: Exemplars) -> None:
        if not self.task_spec.is_classification:
            raise ValueError("exemplars are for classifiers")
        size = 4 * self.num_features * len(exemplars.labels)
        if len(exemplars.values) != size:
            raise ValueError(
                f"exemplars: {len(exemplars.values)} bytes of values for "
                f"{len(exemplars.labels)} samples of {self.num_features} float32 ({size})"
            )
        if exemplars.held_out > len(exemplars.labels):
            raise ValueError("exemplars: more held out than there are samples")
        if not all(0 <= c < len(self.labels) for c in exemplars.labels):
            raise ValueError(f"exemplars: a label outside the {len(self.labels)} classes")

    @property
    def input_spec(self) -> TensorSpec:
        return self.input if self.input is not None else TensorSpec.flat(self.num_features)

    @property
    def task_spec(self) -> TaskSpec:
        return self.task if self.task is not None else TaskSpec.classification(self.labels)


class SignedManifest(WireModel):
    """A manifest as the exact JSON that was signed, with its signature."""

    manifest_json: str
    signature: Signature | None = None

    def manifest(self) -> ModelManifest:
        return ModelManifest.from_wire(self.manifest_json)


class VersionRecord(WireModel):
    """The registry's row for one version: what a listing shows without reading
    (and verifying) the whole manifest. Written once, when the version is
    published; ``labels`` is not stored but filled in when the row is read.

    >>> m = ModelManifest(model="digits", version=1, sha256="ab" * 32, size=10, num_features=64,
    ...                   labels=["0", "1"], runtime="test", probe=ProbeSet(inputs=[], expected=[]))
    >>> VersionRecord.from_manifest(m).version
    1
    """

    model: str
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1)
    parent_sha256: str | None = None
    parent_version: int | None = None
    created_at: float
    trigger: str = ""
    summary: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list, description="labels on it when read")

    @classmethod
    def from_manifest(cls, m: ModelManifest) -> VersionRecord:
        return cls(
            model=m.model,
            version=m.version,
            sha256=m.sha256,
            size=m.size,
            parent_sha256=m.parent_sha256,
            parent_version=m.parent_version,
            created_at=m.created_at,
            trigger=m.explanation.trigger,
            summary=m.explanation.summary,
            metrics=m.metrics,
        )


class Payload(BaseModel):
    """One way to fetch a version: the full file, or a patch from a base."""

    encoding: Literal["full", "patch"]
    key: str = Field(max_length=512)
    size: int = Field(ge=0)
    base_sha256: str | None = Field(None, pattern=SHA256_PATTERN)


class DeltaAnnouncement(WireModel):
    """Published on a fleet's delta stream when a version is ready for its edges."""

    model: str
    version: int
    sha256: str = Field(pattern=SHA256_PATTERN)
    manifest_key: str = Field(max_length=512)
    payloads: list[Payload] = Field(min_length=1, max_length=64)
    published_at: float = Field(default_factory=time.time)

    def full_payload(self) -> Payload:
        for p in self.payloads:
            if p.encoding == "full":
                return p
        raise MessageError(f"announcement of v{self.version} carries no full payload")

    def patch_from(self, base_sha256: str | None) -> Payload | None:
        for p in self.payloads:
            if p.encoding == "patch" and base_sha256 and p.base_sha256 == base_sha256:
                return p
        return None


# --- the edge's local API ---------------------------------------------------


class PredictRequest(BaseModel):
    """``POST /v1/predict``: one sample (nested lists in the model's input shape, or a
    flat list of its values), or a batch ``[N, *shape]``."""

    x: list[Any] = Field(min_length=1, max_length=65536)
    budget_ms: float | None = Field(
        None, gt=0, description="latency budget; the fallback answers when the model cannot"
    )


class PredictResponse(BaseModel):
    """One answer: a class with its probabilities (classification) or the outputs
    (regression)."""

    label: int | None = None
    probabilities: list[float] | None = None
    outputs: list[float] | None = None
    output_names: list[str] | None = Field(None, description="regression: what each output is")
    model_version: int | None
    model_sha256: str | None
    request_id: str
    fallback: bool = Field(description="true when a fallback model answered")
    fallback_reason: str | None = None
    latency_ms: float
    adapted: bool = Field(
        False,
        description="true when the edge's adapter (a kNN over its latest labels, measured "
        "better than the model) answered instead of the current model",
    )


class PredictBatchResponse(BaseModel):
    """The answers to a batch, in its order."""

    predictions: list[PredictResponse]


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: the truth for an earlier ``request_id``, or an input with
    its truth: ``label`` (a class index) or ``target`` (one number per output)."""

    label: int | None = Field(None, ge=0)
    target: list[float] | None = Field(None, min_length=1, max_length=1024)
    request_id: str | None = Field(None, max_length=100)
    x: list[Any] | None = Field(None, min_length=1, max_length=65536)


class FeedbackAccepted(BaseModel):
    event_id: str
    queued: bool = Field(description="false when the event went to the on-disk spool")


# --- status -----------------------------------------------------------------


class EdgeCounters(BaseModel):
    predictions: int = 0
    failed_requests: int = 0
    fallback_predictions: int = 0
    fallback_reasons: dict[str, int] = Field(default_factory=dict)
    feedback_sent: int = 0
    feedback_spooled: int = 0
    feedback_dropped: int = 0
    labeled: int = 0
    labeled_correct: int = 0
    swaps: int = 0
    updates_refused: int = 0
    bytes_downloaded: int = 0
    patches_applied: int = 0
    full_downloads: int = 0
    patch_failures: int = 0
    self_reverts: int = Field(
        0, description="versions this edge reverted by itself (edge/guard.py)"
    )
    adapted_predictions: int = Field(
        0, description="answers of the edge's adapter instead of the current model"
    )
    adapter_labels: int = Field(0, description="labels the edge's adapter learned")
    adapter_switches: int = Field(0, description="times the adapter started or stopped answering")
    adapter_active: bool = Field(False, description="the adapter answers instead of the model now")


class ModelServing(BaseModel):
    """One model an edge serves: its version, health and counters (``EdgeStatus.models``)."""

    model: str
    version: int | None = None
    sha256: str | None = None
    runtime: str = ""
    state: Literal["starting", "serving", "degraded", "stopping"] = "starting"
    rolling_accuracy: float | None = None
    metric: str = "accuracy"
    rolling_metric: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    counters: EdgeCounters = Field(default_factory=EdgeCounters)
    last_error: str | None = None
    refused_sha256: str | None = None
    revert_reason: str | None = None
    stale: bool = False
    tuf_root_version: int | None = None


class EdgeStatus(WireModel):
    """What an edge reports about itself, on a timer and after every swap.

    The top-level fields describe the edge's first model (the only one on most edges,
    and what readers before several models per edge read); ``models`` has every model
    the edge serves, the first included. ``serving(name)`` reads either."""

    device_id: str
    fleet: str
    model: str
    version: int | None = None
    sha256: str | None = None
    runtime: str = ""
    state: Literal["starting", "serving", "degraded", "stopping"] = "starting"
    uptime_s: float = 0.0
    rolling_accuracy: float | None = None
    metric: str = Field("accuracy", description="what rolling_metric measures (the task's)")
    rolling_metric: float | None = Field(
        None, description="the task's metric over the last labeled predictions"
    )
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    counters: EdgeCounters = Field(default_factory=EdgeCounters)
    last_error: str | None = None
    refused_sha256: str | None = Field(
        None, description="a version this edge reverted from and will not re-apply while desired"
    )
    revert_reason: str | None = Field(None, description="why it reverted from refused_sha256")
    stale: bool = Field(
        False,
        description="the fleet's signed update metadata (TUF timestamp, or this device's "
        "director order) has expired: the edge keeps serving what it has and installs nothing "
        "new until it is fresh again",
    )
    tuf_root_version: int | None = Field(
        None,
        description="the version of the fleet's TUF root this edge trusts (None: no TUF); "
        "`edgeloop keys show` lists edges still behind the newest root",
    )
    models: dict[str, ModelServing] = Field(
        default_factory=dict, description="every model this edge serves, by name"
    )
    ts: float = Field(default_factory=time.time)

    def serving(self, model: str) -> ModelServing | None:
        """This edge's report on ``model``, or None when it does not serve it."""
        if model in self.models:
            return self.models[model]
        if model != self.model:
            return None
        return ModelServing.model_validate(self.model_dump(include=set(ModelServing.model_fields)))


class VersionSummary(BaseModel):
    version: int
    sha256: str
    trigger: str
    metrics: dict[str, float] = Field(default_factory=dict)
    published_at: float


class TrainerStatus(WireModel):
    """The trainer's own report, kept in one key per model."""

    model: str
    consumer: str
    rounds: int = Field(0, description="rounds whose child was published")
    rounds_rejected: int = Field(0, description="rounds the gate (or the exporter) refused")
    feedback_accepted: int = 0
    feedback_duplicates: int = 0
    feedback_deadlettered: int = 0
    pending_samples: int = 0
    last_round: dict[str, Any] = Field(default_factory=dict)
    published: list[VersionSummary] = Field(default_factory=list)
    ts: float = Field(default_factory=time.time)


class QuarantineRecord(WireModel):
    """Why a device's feedback for a model is kept aside, not trained on (the trainer
    writes it, ``edgeloop quarantine release`` ends it): its labels disagreed with the
    model far more often than the rest of the fleet's, beyond what chance explains."""

    device_id: str
    model: str
    reason: str
    checked: int = Field(description="the device's samples checked against the model")
    disagreed: int = Field(description="of them, those whose label the model disagreed with")
    rate: float = Field(description="disagreed / checked")
    fleet_rate: float = Field(description="the other devices' median rate")
    bound: float = Field(description="the rate beyond which chance is ruled out (fleet + margin)")
    p_value: float = Field(description="Chernoff bound on the chance of so many disagreements")
    since: float = Field(default_factory=time.time)


def dumps_compact(obj: Any) -> str:
    """JSON with no spaces, for stream fields and logs."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)
