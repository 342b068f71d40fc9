"""The serving chain: current model → last-known-good → bundled baseline.

A request is answered by the first link that can: a link is passed over when it
is absent (never loaded, or refused at load), when its invoke raises, when its
output is not finite, or when its latency estimate exceeds what is left of the
request's budget (ARCHITECTURE.md, "Latency budget"). The last link ignores the
budget: a late answer beats none. Each passed-over request is counted by the
reason the first link did not answer.

This is the hot path, benchmarked against a bare set_tensor/invoke/get_tensor
(2.4 µs for the zoo's MLP). Hence: no pydantic, no logging, no uuid, no lock but
the interpreter's on a prediction's success path; one read of the immutable plan
gives a consistent view of the chain even while ``swap`` replaces it; request ids
are a per-chain prefix plus a counter; the inputs kept for feedback joins live in
a fixed ring indexed by that counter, whose entry is the answer itself (a tuple
holding the link and the counter: its request id, version, sha256 and label are
derived when read, and the answer's values stay the list the model read out of
its output buffer until they are asked for as an array). A batch is one request:
one number, one ring entry, its samples' ids that number followed by ``.k``
(numbering each sample and filling a ring slot for each cost a tenth of a small
model's batch invoke).

>>> import numpy as np
>>> from shared.runtime import TFLiteModel
>>> from edge.settings import BUNDLED_BASELINE
>>> chain = ServingChain()
>>> chain.set_models(current=None, last_known_good=None,
...                  baseline=TFLiteModel(BUNDLED_BASELINE.read_bytes()))
>>> p = chain.predict(np.zeros(64, np.float32))
>>> p.fallback, p.fallback_reason
(True, 'absent')
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from math import isfinite
from operator import index
from time import perf_counter
from typing import Any, NoReturn, Protocol, overload

import numpy as np
import numpy.typing as npt

from shared.errors import InputError, Unavailable
from shared.runtime import BatchWay, FloatArray, TFLiteModel
from shared.tensors import TensorSpec, as_batch

ABSENT = "absent"
INVOKE_ERROR = "invoke_error"
NOT_FINITE = "not_finite"
LATENCY_BUDGET = "latency_budget"
FALLBACK_REASONS = (ABSENT, INVOKE_ERROR, NOT_FINITE, LATENCY_BUDGET)

#: Weight of the newest measurement in a link's moving latency estimate.
EWMA = 0.2

_F32 = np.dtype(np.float32)
_ndarray = np.ndarray


#: An answer's values: a list of floats for one sample (read out of the interpreter's
#: output buffer, see TFLiteModel.row_predictor), a row of the answers for a batch's.
Answer = FloatArray | list[float]


class Prediction(tuple[int | str, Any, "_Link", str | None, float, Answer]):
    """One answer. ``fallback`` is true when a link other than the current model answered.

    A classifier's answer is ``label`` and ``probabilities``; a regressor's is
    ``outputs`` (named by ``output_names``), and its ``label`` and
    ``probabilities`` are None. What follows from the link that answered (the
    task, the model's version and sha256), from the request number (the request
    id) or from the answer (the label) is read on demand: building it for every
    request cost a fifth of the chain's overhead.

    It is a tuple (request number, or ``"number.index"`` for a batch's sample,
    input, link, fallback reason, latency ms, answer), built by ``tuple.__new__``
    without a Python ``__init__``, and the very object the chain keeps in its ring
    of recent requests for feedback joins: one allocation per request instead of
    two. The answer is kept as the model gave it (``Answer``); ``probabilities`` and
    ``outputs`` make it an array when read.
    """

    __slots__ = ()

    @property
    def fallback_reason(self) -> str | None:
        return self[3]

    @property
    def latency_ms(self) -> float:
        return self[4]

    @property
    def label(self) -> int | None:
        """The class (argmax of the probabilities); None for a regressor."""
        return int(np.argmax(self[5])) if self[2].classifies else None

    @property
    def probabilities(self) -> FloatArray | None:
        return np.asarray(self[5], _F32) if self[2].classifies else None

    @property
    def outputs(self) -> FloatArray | None:
        """A regressor's outputs; None for a classifier."""
        return None if self[2].classifies else np.asarray(self[5], _F32)

    @property
    def output_names(self) -> list[str]:
        task = self[2].model.task
        return list(task.outputs) if task is not None else []

    @property
    def model_version(self) -> int | None:
        return self[2].version

    @property
    def model_sha256(self) -> str:
        return self[2].sha256

    @property
    def request_id(self) -> str:
        return f"{self[2].id_prefix}{self[0]}"

    @property
    def fallback(self) -> bool:
        return self[3] is not None

    @property
    def adapted(self) -> bool:
        """True when the edge's adapter answered instead of the current model
        (edge/adaptation.py; AdaptedPrediction)."""
        return False

    def __repr__(self) -> str:
        return (
            f"Prediction(label={self.label}, model_version={self.model_version}, "
            f"request_id={self.request_id!r}, fallback_reason={self.fallback_reason!r}, "
            f"latency_ms={self.latency_ms:.3f})"
        )


class AdaptedPrediction(Prediction):
    """An answer of the edge's adapter instead of the current model: a Prediction
    whose answer is the adapter's vote shares, with the current model's own answer
    kept as a seventh field (what feedback reports and the swap guard judges)."""

    __slots__ = ()

    @property
    def adapted(self) -> bool:
        return True

    @property
    def model_label(self) -> int:
        """What the current model itself answered."""
        return int(np.argmax(tuple.__getitem__(self, 6)))


_new = tuple.__new__
_new_object = object.__new__


class BatchPredictions(Sequence[Prediction]):
    """The answers to a batch, one ``Prediction`` per sample in order, each built
    when it is read: a batch of a small model is answered in a few microseconds,
    and building 32 answers up front took longer than the invoke. A batch is one
    request (one number, one ring entry); its sample ``k``'s request id is the
    batch's followed by ``.k``.

    ``answers`` is the whole ``[N, W]`` array (probabilities or outputs).
    """

    __slots__ = ("_record",)

    def __init__(self, record: _BatchRecord) -> None:
        self._record = record

    @property
    def answers(self) -> FloatArray:
        return self._record[5]

    def __len__(self) -> int:
        return self._record[6]

    @overload
    def __getitem__(self, i: int) -> Prediction: ...
    @overload
    def __getitem__(self, i: slice) -> list[Prediction]: ...
    def __getitem__(self, i: int | slice) -> Prediction | list[Prediction]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n, batch, link, reason, ms, outs, size = self._record
        k = index(i)
        if k < 0:
            k += size
        if not 0 <= k < size:
            raise IndexError(f"a batch of {size} has no answer {i}")
        return _new(Prediction, (f"{n}.{k}", batch[k], link, reason, ms, outs[k]))

    def __iter__(self) -> Iterator[Prediction]:
        n, batch, link, reason, ms, outs, size = self._record
        for k in range(size):
            yield _new(Prediction, (f"{n}.{k}", batch[k], link, reason, ms, outs[k]))

    def __repr__(self) -> str:
        return f"BatchPredictions({list(self)!r})"


class AdaptedBatchPredictions(BatchPredictions):
    """A batch the adapter answered: its record holds the current model's own
    answers as an eighth field, and its samples are AdaptedPredictions."""

    __slots__ = ()

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n, batch, link, reason, ms, outs, size, own = self._record  # type: ignore[misc]
        k = index(i)
        if k < 0:
            k += size
        if not 0 <= k < size:
            raise IndexError(f"a batch of {size} has no answer {i}")
        return _new(AdaptedPrediction, (f"{n}.{k}", batch[k], link, reason, ms, outs[k], own[k]))

    def __iter__(self) -> Iterator[Prediction]:
        n, batch, link, reason, ms, outs, size, own = self._record  # type: ignore[misc]
        for k in range(size):
            yield _new(AdaptedPrediction, (f"{n}.{k}", batch[k], link, reason, ms, outs[k], own[k]))


@dataclass(slots=True, frozen=True)
class RecentInput:
    """What a feedback join needs about an earlier prediction: the sample (in the
    input's shape and dtype) and the answer (a class, or a regressor's outputs)."""

    x: npt.NDArray[Any]
    predicted: int | None
    model_version: int | None
    model_sha256: str | None
    num_classes: int  # the answer's width: classes, or a regressor's outputs
    fallback: bool
    predicted_outputs: list[float] | None = None


class _Link:
    """One model in the chain, with its moving latency estimate. The estimate
    travels with the model when it moves from current to last-known-good."""

    __slots__ = (
        "batch_ways",
        "classifies",
        "est_ms",
        "id_prefix",
        "input",
        "model",
        "num_classes",
        "num_features",
        "run",
        "sha256",
        "skipped",
        "version",
    )

    def __init__(self, model: TFLiteModel, id_prefix: str) -> None:
        self.model = model
        self.id_prefix = id_prefix  # of the request ids of the chain's answers
        self.run: Callable[[npt.NDArray[Any]], list[float]] = model.row_predictor()
        self.version = model.version
        self.sha256 = model.sha256
        self.input = model.input
        self.classifies = model.classifies
        self.num_features = model.num_features
        self.num_classes = model.width
        self.est_ms = 0.0
        self.skipped = 0
        #: Batch size -> the model's way for it and the batch's shape, for the sizes
        #: whose way the model has chosen (see predict_batch).
        self.batch_ways: dict[int, tuple[BatchWay, tuple[int, ...]]] = {}

    def learn_batch_way(self, size: int) -> None:
        """Remember the model's way for batches of ``size`` once it has chosen one."""
        if size not in self.batch_ways:
            way = self.model.batch_ways.get(size)
            if way is not None:
                self.batch_ways[size] = (way, (size, *self.input.shape))

    def fits(self, head: _Link) -> str | None:
        """Why this link cannot stand in for ``head``, or None when it can."""
        if self.input != head.input:
            return f"takes {self.input.describe()}, the current model {head.input.describe()}"
        if self.classifies != head.classifies or self.num_classes != head.num_classes:
            return (
                f"answers {self.num_classes} {'classes' if self.classifies else 'outputs'}, "
                f"the current model {head.num_classes} "
                f"{'classes' if head.classifies else 'outputs'}"
            )
        return None


#: A batch, one request in the ring: (number, inputs, link that answered, fallback
#: reason, latency ms, answers, size). Its fields 2-4 are where a Prediction has them,
#: so the latency statistics read both alike.
_BatchRecord = tuple[int, npt.NDArray[Any], _Link, str | None, float, FloatArray, int]
#: A batch the adapter answered: a _BatchRecord with the adapter's answers in place of
#: the model's, followed by the model's own.
_AdaptedRecord = tuple[int, npt.NDArray[Any], _Link, str | None, float, FloatArray, int, FloatArray]
#: A recent request: its Prediction, or the record of the batch it was in.
_Recent = Prediction | _BatchRecord | _AdaptedRecord


class Adapting(Protocol):
    """What the chain needs of an adapter (edge.adaptation.Adapter): vote shares for
    a sample or a batch, or None when it cannot answer yet."""

    def answer(self, x: npt.NDArray[Any]) -> list[float] | None: ...

    def answer_many(self, xs: npt.NDArray[Any]) -> FloatArray | None: ...


class _Plan:
    """An immutable view of the chain, replaced whole by ``swap``."""

    __slots__ = (
        "adapter",
        "dtype",
        "head",
        "head_reason",
        "last",
        "links",
        "ndim2",
        "shape",
        "shape2",
        "spec",
    )

    def __init__(
        self,
        links: tuple[_Link, ...],
        head_reason: str | None,
        adapter: Adapting | None = None,
    ) -> None:
        self.links = links
        self.head = links[0] if links and head_reason is None else None
        #: Answers instead of the head while set (edge/adaptation.py); every new plan
        #: (a swap, a revert) starts without it.
        self.adapter = adapter if self.head is not None else None
        self.last = links[-1] if links else None
        self.head_reason = head_reason
        self.spec: TensorSpec | None = links[0].input if links else None
        self.shape: tuple[int, ...] = tuple(self.spec.shape) if self.spec else (0,)
        self.shape2 = (1, *self.shape)
        self.ndim2 = len(self.shape2)
        self.dtype = self.spec.np_dtype if self.spec else _F32


class ServingChain:
    """Answers predictions from the best model that can, and says which one did."""

    def __init__(
        self,
        *,
        budget_ms: float = 50.0,
        probe_every: int = 100,
        recent: int = 4096,
    ) -> None:
        self.budget_ms = float(budget_ms)
        self.probe_every = int(probe_every)
        self._current: _Link | None = None
        self._lkg: _Link | None = None
        self._baseline: _Link | None = None
        self._plan = _Plan((), None)
        self._swap_lock = threading.Lock()
        # Request ids: unique per chain instance, so an id from before a restart
        # never joins to an input it did not produce.
        self._prefix = secrets.token_hex(4) + "-"
        self._count = itertools.count(1)
        self._uncounted = 0
        # Samples of batches beyond their one request number each: appended to a list
        # (atomic, and a fifth of the cost of a lock around an addition) and summed
        # into _batched when read, or when the list grows long.
        self._batched = 0
        self._batched_extra: list[int] = []
        # What a feedback join and the latency percentiles need of the last
        # ``recent`` requests, as plain tuples (the cheapest record to build, and
        # it does not keep the caller's answer alive): see _Recent.
        self._recent: list[_Recent | None] = [None] * recent
        self._recent_size = recent
        self._stats_lock = threading.Lock()
        self.fallback_reasons: dict[str, int] = {}
        self.failed_requests = 0
        #: Why loaded models are not in the chain (a baseline for another input, say).
        self.left_out: list[str] = []

    # -- the chain ----------------------------------------------------------

    def set_models(
        self,
        *,
        current: TFLiteModel | None,
        last_known_good: TFLiteModel | None,
        baseline: TFLiteModel | None,
    ) -> None:
        """Install the links at start (models already built and warmed)."""
        with self._swap_lock:
            self._current = _Link(current, self._prefix) if current else None
            self._lkg = _Link(last_known_good, self._prefix) if last_known_good else None
            self._baseline = _Link(baseline, self._prefix) if baseline else None
            self._replan()

    def swap(self, model: TFLiteModel) -> None:
        """Serve ``model`` from the next request on; the current model (if it was
        serving) becomes last-known-good. The caller built and checked ``model``
        off the request path; this is one reference assignment."""
        link = _Link(model, self._prefix)
        with self._swap_lock:
            if self._current is not None and self._current.sha256 != link.sha256:
                self._lkg = self._current
            self._current = link
            self._replan()

    def _replan(self) -> None:
        candidates = [x for x in (self._current, self._lkg, self._baseline) if x is not None]
        links: list[_Link] = []
        left_out: list[str] = []
        for link in candidates:
            if not links:
                links.append(link)
                continue
            if any(link.sha256 == other.sha256 for other in links):
                continue
            # A model for another input or task cannot answer this one's requests.
            why = link.fits(links[0])
            if why is None:
                links.append(link)
            else:
                left_out.append(f"{link.model.name} is not a fallback: it {why}")
        self.left_out = left_out
        self._plan = _Plan(tuple(links), None if self._current else ABSENT)

    def adapt(self, adapter: Adapting | None, sha256: str) -> bool:
        """Let ``adapter`` answer instead of the current model (None: stop), if the
        current model is still ``sha256``, the version it was compared with. A swap or
        revert meanwhile made a plan without it; True when the plan now says so."""
        with self._swap_lock:
            plan = self._plan
            if adapter is not None and (plan.head is None or plan.head.sha256 != sha256):
                return False
            self._plan = _Plan(plan.links, plan.head_reason, adapter)
            return True

    @property
    def adapting(self) -> bool:
        """Whether an adapter answers instead of the current model now."""
        return self._plan.adapter is not None

    def current_label(self, x: npt.NDArray[Any]) -> tuple[int, str] | None:
        """The current model's own class for one sample and its sha256, or None (no
        current model, not a classifier, or its answer failed). Off the hot path."""
        head = self._plan.head
        if head is None or not head.classifies:
            return None
        try:
            out = head.run(np.ascontiguousarray(x, head.input.np_dtype).reshape(head.input.shape))
        except Exception:  # any runtime fault: nothing to compare with
            return None
        if not isfinite(sum(out)):
            return None
        return int(np.argmax(out)), head.sha256

    @property
    def current(self) -> TFLiteModel | None:
        return self._current.model if self._current else None

    @property
    def last_known_good(self) -> TFLiteModel | None:
        return self._lkg.model if self._lkg else None

    @property
    def baseline(self) -> TFLiteModel | None:
        return self._baseline.model if self._baseline else None

    @property
    def serving(self) -> list[TFLiteModel]:
        """The models a request may be answered by, in order."""
        return [link.model for link in self._plan.links]

    @property
    def num_features(self) -> int | None:
        links = self._plan.links
        return links[0].num_features if links else None

    @property
    def input(self) -> TensorSpec | None:
        """What one sample must look like: the first serving model's input."""
        return self._plan.spec

    @property
    def classifies(self) -> bool | None:
        links = self._plan.links
        return links[0].classifies if links else None

    @property
    def num_classes(self) -> int | None:
        links = self._plan.links
        return links[0].num_classes if links else None

    # -- the hot path -------------------------------------------------------

    def predict(
        self, x: npt.NDArray[Any] | Sequence[Any], budget_ms: float | None = None
    ) -> Prediction:
        """Answer one sample of the model's input within ``budget_ms``.

        ``x`` is one sample: an array of the input's shape, or of it with a batch
        axis of 1, or the sample's values in order (a flat list or array); nested
        lists are copied into an array. Raises InputError for anything else
        (naming the expected shape; a batch of several samples goes to
        ``predict_batch``), and Unavailable when no link can answer. An array of
        the input's dtype is used as it is: pass a fresh one, and do not modify it
        afterwards, since it is kept for a feedback join.

        Finite inputs are the caller's business here (the HTTP API refuses NaN
        and infinity): checking costs more than a quarter of the overhead
        budget, and an int8 model saturates them rather than failing. A float
        model's NaN output is caught and reported as InputError.
        """
        t0 = perf_counter()
        plan = self._plan
        head = plan.head
        # The common case, written out: a sample of the input's dtype and shape, and
        # the current model answers within budget. The dtype and shape are checked
        # here because the model's row predictor writes into the interpreter's input
        # buffer, which would cast or broadcast what set_tensor refused.
        if (
            head is None
            or x.__class__ is not _ndarray
            or x.dtype is not plan.dtype  # type: ignore[union-attr]
            or (x.shape != plan.shape and x.shape != plan.shape2)  # type: ignore[union-attr]
            or head.est_ms > (budget_ms or self.budget_ms)
        ):
            return self._predict_slow(plan, x, t0, budget_ms)
        n = next(self._count)
        try:
            out = head.run(x)  # type: ignore[arg-type]
        except Exception:  # any runtime fault of this model: the next link answers
            return self._walk(plan, x, n, t0, budget_ms, INVOKE_ERROR)  # type: ignore[arg-type]
        t1 = perf_counter()
        # Any NaN or infinity makes the sum non-finite (a Python float sum of float32
        # values cannot overflow): half the cost of numpy's argmax or isfinite on a
        # few values. The label (the argmax) is computed when read.
        if not isfinite(sum(out)):
            self._check_finite_input(x)  # type: ignore[arg-type]
            return self._walk(plan, x, n, t0, budget_ms, NOT_FINITE)  # type: ignore[arg-type]
        ms = (t1 - t0) * 1000.0
        head.est_ms += (ms - head.est_ms) * EWMA
        if plan.adapter is not None:
            return self._adapted(plan.adapter, n, x, head, t0, out)  # type: ignore[arg-type]
        # Prediction(...) rather than _new: the type's own call is a little cheaper.
        self._recent[n % self._recent_size] = p = Prediction((n, x, head, None, ms, out))
        return p

    def _adapted(
        self, adapter: Adapting, n: int, x: npt.NDArray[Any], head: _Link, t0: float, out: Answer
    ) -> Prediction:
        """The head answered ``out``; the adapter answers instead while it may."""
        shares = adapter.answer(x)
        if shares is None:
            p = _new(Prediction, (n, x, head, None, (perf_counter() - t0) * 1000.0, out))
        else:
            ms = (perf_counter() - t0) * 1000.0
            p = _new(AdaptedPrediction, (n, x, head, None, ms, shares, out))
        self._recent[n % self._recent_size] = p
        return p

    def _predict_slow(self, plan: _Plan, x: Any, t0: float, budget_ms: float | None) -> Prediction:
        """``predict`` of anything but the common case: another type, dtype or shape
        (checked, and copied when it must be converted: InputError before a request
        number is taken), no current model, or a current model over budget."""
        x = self._coerce(x, plan) if x.__class__ is not _ndarray else self._checked(x, plan)
        return self._walk(plan, x, next(self._count), t0, budget_ms)

    def _walk(
        self,
        plan: _Plan,
        x: npt.NDArray[Any],
        n: int,
        t0: float,
        budget_ms: float | None,
        head_failed: str | None = None,
    ) -> Prediction:
        """The general case: try the links in order, with the budget and probes;
        from the second one on when the head was tried and ``head_failed`` (why).

        Its arguments are ``predict``'s locals (the request's number and start
        time), passed as they are: this runs for every request a fallback answers.
        """
        reason = head_failed or plan.head_reason
        budget = budget_ms or self.budget_ms
        x2 = x.reshape(plan.shape2)
        last = plan.last
        t = perf_counter()
        for link in plan.links[1:] if head_failed else plan.links:
            probing = False
            if link.est_ms > budget - (t - t0) * 1000.0 and link is not last:
                link.skipped += 1
                if link.skipped < self.probe_every:
                    reason = reason or LATENCY_BUDGET
                    continue
                link.skipped, probing = 0, True
            try:
                out = link.run(x2)
            except Exception:  # any runtime fault of this model: the next link answers
                reason = reason or INVOKE_ERROR
                t = perf_counter()
                continue
            t1 = perf_counter()
            if not isfinite(sum(out)):
                self._check_finite_input(x)
                reason = reason or NOT_FINITE
                t = t1
                continue
            ms = (t1 - t) * 1000.0
            # A probe replaces the estimate: a model that was slow under load
            # comes back as soon as one measurement says it is fast again.
            link.est_ms = ms if probing else link.est_ms + (ms - link.est_ms) * EWMA
            ms = (t1 - t0) * 1000.0
            if reason is not None:
                self._count_fallback(reason)
            elif plan.adapter is not None:
                return self._adapted(plan.adapter, n, x, link, t0, out)
            self._recent[n % self._recent_size] = p = _new(
                Prediction, (n, x, link, reason, ms, out)
            )
            return p
        return self._fail(plan, reason)

    def predict_batch(
        self, x: npt.NDArray[Any] | Sequence[Any], budget_ms: float | None = None
    ) -> BatchPredictions:
        """Answer a batch ``[N, *input shape]`` (or one sample): one Prediction per
        sample, in order, each with its own request id for feedback (built when read;
        ``answers`` is the whole array). The batch is one request: one number, one
        ring entry, and its samples' ids are its id followed by ``.k``.

        The batch's shape and dtype are checked first (InputError naming the expected
        shape; as in ``predict``, an array of the input's dtype is used as it is and
        kept for feedback joins). It is answered by one link, the first that answers
        every sample with finite values; a float batch holding NaN or infinity is an
        InputError when its answers are not finite (checked only then: like
        ``predict``, the hot path does not pay for it). ``budget_ms`` is for the whole
        batch, which a link is expected to take N times its single-sample estimate
        for. Each answer's ``latency_ms`` is the batch's.
        """
        t0 = perf_counter()
        plan = self._plan
        head = plan.head
        # The common case, written out: an array of the input's dtype and sample shape
        # whose size the current model has answered before (so its way is known: see
        # TFLiteModel.answers), within budget.
        if head is not None and x.__class__ is _ndarray and x.dtype is plan.dtype:  # type: ignore[union-attr]
            size = len(x)
            known = head.batch_ways.get(size)
            if (
                known is not None
                and x.shape == known[1]  # type: ignore[union-attr]
                and head.est_ms * size <= (budget_ms or self.budget_ms)
            ):
                extra = self._batched_extra  # _number_batch, written out
                extra.append(size - 1)
                if len(extra) > 4096:
                    self._sum_batched()
                n = next(self._count)
                try:
                    outs, total = known[0](x)
                except Exception:  # any runtime fault of this model: the next link answers
                    return self._walk_batch(plan, x, n, t0, budget_ms, INVOKE_ERROR)  # type: ignore[arg-type]
                # The answers' sum is NaN or infinite when any answer is, and costs a
                # third of np.isfinite(outs).all(); that one decides only when the sum
                # of finite answers overflowed.
                if not isfinite(total) and not np.isfinite(outs).all():
                    self._check_finite_batch(x, plan)  # type: ignore[arg-type]
                    return self._walk_batch(plan, x, n, t0, budget_ms, NOT_FINITE)  # type: ignore[arg-type]
                if plan.adapter is not None:
                    return self._adapted_batch(plan.adapter, n, x, head, t0, outs)  # type: ignore[arg-type]
                self._recent[n % self._recent_size] = record = (
                    n, x, head, None, (perf_counter() - t0) * 1000.0, outs, size,
                )  # fmt: skip
                answers = _new_object(BatchPredictions)  # its __init__, without the call
                answers._record = record  # type: ignore[assignment]
                return answers
        spec = plan.spec
        if spec is None:
            raise Unavailable("no model is loaded: the edge cannot serve yet")
        if (
            x.__class__ is _ndarray
            and x.dtype == plan.dtype  # type: ignore[union-attr]
            and x.shape[1:] == plan.shape  # type: ignore[union-attr]
            and len(x)
        ):
            batch: npt.NDArray[Any] = x  # type: ignore[assignment]
        else:
            batch, _ = as_batch(x, spec)  # InputError for a NaN or infinity, among others
        n = self._number_batch(len(batch))
        return self._walk_batch(plan, batch, n, t0, budget_ms, checked=batch is not x)

    def _number_batch(self, size: int) -> int:
        """The batch's request number; its samples count as requests all the same."""
        extra = self._batched_extra
        extra.append(size - 1)
        if len(extra) > 4096:
            self._sum_batched()
        return next(self._count)

    def _sum_batched(self) -> None:
        with self._stats_lock:
            extra = self._batched_extra
            k = len(extra)  # appends from other threads meanwhile land after these
            self._batched += sum(extra[:k])
            del extra[:k]

    def _walk_batch(
        self,
        plan: _Plan,
        batch: npt.NDArray[Any],
        n: int,
        t0: float,
        budget_ms: float | None,
        head_failed: str | None = None,
        checked: bool = False,
    ) -> BatchPredictions:
        """``predict_batch``'s general case: try the links in order, with the budget;
        from the second one on when the head was tried and ``head_failed`` (why).
        ``checked``: the batch went through as_batch (so it holds finite numbers)."""
        size = len(batch)
        reason = head_failed or plan.head_reason
        budget = budget_ms or self.budget_ms
        for link in plan.links[1:] if head_failed else plan.links:
            if (
                link.est_ms * size > budget - (perf_counter() - t0) * 1000.0
                and link is not plan.last
            ):
                reason = reason or LATENCY_BUDGET
                continue
            try:
                outs = link.model.answers(batch)
            except Exception:  # any runtime fault of this model: the next link answers
                reason = reason or INVOKE_ERROR
                continue
            if not np.isfinite(outs).all():
                if not checked:
                    self._check_finite_batch(batch, plan)
                reason = reason or NOT_FINITE
                continue
            if reason is not None:
                self._count_fallback(reason, size)
            elif plan.adapter is not None:
                link.learn_batch_way(size)
                return self._adapted_batch(plan.adapter, n, batch, link, t0, outs)
            ms = (perf_counter() - t0) * 1000.0
            record: _BatchRecord = (n, batch, link, reason, ms, outs, size)
            self._recent[n % self._recent_size] = record
            link.learn_batch_way(size)
            return BatchPredictions(record)
        with self._stats_lock:
            self.failed_requests += size - 1  # _fail counts one
        self._fail(plan, reason)

    def _adapted_batch(
        self,
        adapter: Adapting,
        n: int,
        batch: npt.NDArray[Any],
        head: _Link,
        t0: float,
        outs: FloatArray,
    ) -> BatchPredictions:
        """The head answered ``outs``; the adapter answers instead while it may."""
        shares = adapter.answer_many(batch)
        size = len(batch)
        ms = (perf_counter() - t0) * 1000.0
        if shares is None:
            record: _BatchRecord = (n, batch, head, None, ms, outs, size)
            self._recent[n % self._recent_size] = record
            return BatchPredictions(record)
        adapted: _AdaptedRecord = (n, batch, head, None, ms, shares, size, outs)
        self._recent[n % self._recent_size] = adapted
        return AdaptedBatchPredictions(adapted)  # type: ignore[arg-type]

    def _check_finite_batch(self, batch: npt.NDArray[Any], plan: _Plan) -> None:
        """InputError for a batch holding NaN or infinity, its numbers given back (looked
        at only when answers are not finite, so the hot path pays nothing)."""
        assert plan.spec is not None
        try:
            as_batch(batch, plan.spec)
        except InputError:
            with self._stats_lock:
                self._uncounted += len(batch)
            raise

    # -- the slow paths -----------------------------------------------------

    def _coerce(self, x: Any, plan: _Plan) -> npt.NDArray[Any]:
        """``x`` as a checked copy of one sample in the input's shape and dtype, or
        InputError / Unavailable."""
        if plan.spec is None:
            raise Unavailable("no model is loaded: the edge cannot serve yet")
        batch, _ = as_batch(x, plan.spec)
        if len(batch) != 1:
            raise InputError(
                f"x is a batch of {len(batch)} samples of {plan.spec.describe()}; "
                "predict answers one (predict_batch answers a batch)"
            )
        sample: npt.NDArray[Any] = batch[0]
        # A copy: the sample is kept for a feedback join, and the caller may reuse x.
        return (
            sample.copy()
            if isinstance(x, np.ndarray) and np.may_share_memory(sample, x)
            else sample
        )

    def _checked(self, x: npt.NDArray[Any], plan: _Plan) -> npt.NDArray[Any]:
        """``x`` if it is already one sample of the input's dtype, else a checked copy."""
        if (
            x.dtype == plan.dtype
            and plan.links
            and (x.shape == plan.shape or x.shape == plan.shape2)
        ):
            return x
        return self._coerce(x, plan)

    @staticmethod
    def _check_finite_input(x: FloatArray) -> None:
        # Only looked at when an output is not finite, so the hot path pays nothing.
        if not np.isfinite(x).all():
            raise InputError("x must hold finite numbers (got NaN or infinity)")

    def _count_fallback(self, reason: str, answers: int = 1) -> None:
        with self._stats_lock:
            self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + answers

    def _fail(self, plan: _Plan, reason: str | None) -> NoReturn:
        with self._stats_lock:
            self.failed_requests += 1
        if not plan.links:
            raise Unavailable("no model is loaded: the edge cannot serve yet")
        raise Unavailable(
            f"no model could answer ({len(plan.links)} tried; first failure: {reason}); "
            "see the edge's log and its last_error in /v1/health"
        )

    # -- feedback joins and stats -------------------------------------------

    def recall(self, request_id: str) -> RecentInput | None:
        """The input and answer of a recent request, or None if unknown or expired."""
        if not request_id.startswith(self._prefix):
            return None
        number, dot, sample = request_id[len(self._prefix) :].partition(".")
        try:
            n, k = int(number), int(sample) if dot else None
        except ValueError:
            return None
        entry = self._recent[n % self._recent_size]
        canonical = f"{self._prefix}{n}" if k is None else f"{self._prefix}{n}.{k}"
        if entry is None or entry[0] != n or request_id != canonical:
            return None  # expired, or not the canonical form of the id (say, "007")
        # The model's own answer, which an adapted request keeps after the adapter's.
        if entry.__class__ is tuple:  # a batch's record: the id must name one of its samples
            _, batch, link, reason, _, outs, size = entry[:7]  # type: ignore[misc]
            if k is None or not 0 <= k < size:
                return None
            x, out = batch[k], (entry[7] if len(entry) == 8 else outs)[k]  # type: ignore[misc]
        else:
            if k is not None:
                return None
            _, x, link, reason, _, out = entry[:6]
            if len(entry) == 7:
                out = entry[6]  # type: ignore[misc]
        return RecentInput(
            x.reshape(link.input.shape),
            int(np.argmax(out)) if link.classifies else None,
            link.version,
            link.sha256,
            link.num_classes,
            reason is not None,
            None if link.classifies else np.asarray(out, np.float32).tolist(),
        )

    @property
    def predictions(self) -> int:
        """Requests that reached a model (answered or failed)."""
        # itertools.count cannot be read without advancing it: take one number
        # and remember how many were taken this way (or by refused inputs).
        self._sum_batched()
        with self._stats_lock:
            taken = next(self._count) - 1 - self._uncounted + self._batched
            self._uncounted += 1
        return taken

    def latency_percentiles(self, sha256: str | None = None) -> tuple[float | None, float | None]:
        """(p50, p99) in ms over the requests kept for feedback joins (the last
        ``recent``; a batch is one, with the whole batch's latency), or over those
        of them the model ``sha256`` answered: the ring already holds them, so the
        hot path pays nothing extra for latency statistics."""
        window = [
            e[4]
            for e in self._recent[:]
            if e is not None and (sha256 is None or e[2].sha256 == sha256)
        ]
        if not window:
            return None, None
        p50, p99 = np.percentile(np.asarray(window), [50, 99])
        return float(p50), float(p99)

    def fallback_counts(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self.fallback_reasons)
