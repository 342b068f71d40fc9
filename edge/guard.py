"""Self-protection: after a swap, judge the new version against the previous one
and revert locally, without waiting for the cloud, when it is worse.

A swap to a new version starts a probation of ``window_s`` seconds. During it
the guard compares, on this device:

- the fallback rate and the error rate (invoke errors, non-finite outputs,
  failed requests) since the swap with the previous version's over the time
  it served, once the new version has answered ``min_predictions`` requests;
- the p99 latency of the requests each version answered (the chain's ring of
  recent requests), over the same minimum; a p99 under ``p99_floor_ms`` is
  never a regression, since sub-millisecond timings are mostly scheduler noise;
- the task's metric on labeled predictions, **paired**: each labeled prediction
  the new version made is also scored by the previous version (still loaded as
  last-known-good), so both are judged on the same inputs: accuracy for a
  classifier (a drop past ``max_accuracy_drop`` points), the mean absolute error
  for a regressor (lower is better: a rise past ``max_mae_increase`` of the
  previous version's). It is judged after ``min_labeled`` such pairs. Comparing with the previous version's accuracy before the swap would
  punish a new version for drift that arrived with it.

Any criterion past its threshold reverts at once: the previous model serves
again, the new one is dropped from the chain, and the model store remembers
(on disk) the refused sha256 and why, so that the updater does not apply it
again while it stays the desired version. The reason goes to ``last_error``,
which the rollout gate reads when a ring device leaves version B. At the end
of the window the version is accepted and the guard stands down.

A step back to the version served just before (the last-known-good, as when a
rollout is rolled back) is not put on probation. The guard's state is in
memory: a probation does not outlive a restart of the daemon.

Everything that changes what is served runs in the update consumer's thread
(``tick`` and ``swapped`` are called from it); ``observe`` is called by
feedback threads and only appends to a bounded queue.

>>> judge(GuardPolicy(min_labeled=50), Evidence(labeled=60, new_correct=6, previous_correct=55))
['accuracy 0.100 vs 0.917 for the previous version on the same 60 labeled inputs']
>>> judge(GuardPolicy(min_labeled=50), Evidence(labeled=10, new_correct=0, previous_correct=10))
[]
>>> judge(GuardPolicy(min_labeled=2), Evidence(labeled=2, metric="mae", new_error=3.0, previous_error=2.0))
['MAE 1.500 vs 1.000 for the previous version on the same 2 labeled inputs']
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.fallback import INVOKE_ERROR, NOT_FINITE, RecentInput, ServingChain
from edge.model_store import ModelStore
from shared.runtime import TFLiteModel

logger = logging.getLogger(__name__)

#: Labeled predictions waiting to be scored by the previous version (older ones drop).
PENDING_MAX = 10_000


@dataclass(frozen=True)
class GuardPolicy:
    """Whether the guard watches swaps, and when a new version counts as a
    regression (EdgeSettings ``guard_*``)."""

    enabled: bool = True
    window_s: float = 600.0
    min_predictions: int = 200
    min_labeled: int = 50
    max_accuracy_drop: float = 0.10
    max_mae_increase: float = 0.25
    max_fallback_increase: float = 0.05
    max_error_increase: float = 0.01
    max_p99_ratio: float = 3.0
    p99_floor_ms: float = 5.0


@dataclass(frozen=True)
class Traffic:
    """The chain's cumulative request counters at a moment, or their difference."""

    predictions: int = 0
    fallbacks: int = 0
    errors: int = 0

    @classmethod
    def of(cls, chain: ServingChain) -> Traffic:
        reasons = chain.fallback_counts()
        errors = reasons.get(INVOKE_ERROR, 0) + reasons.get(NOT_FINITE, 0) + chain.failed_requests
        return cls(chain.predictions, sum(reasons.values()), errors)

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.predictions - other.predictions,
            self.fallbacks - other.fallbacks,
            self.errors - other.errors,
        )

    def rate(self, part: int) -> float:
        return part / self.predictions if self.predictions else 0.0


@dataclass
class Evidence:
    """What the guard knows about the new version and the previous one."""

    before: Traffic = field(default_factory=Traffic)
    after: Traffic = field(default_factory=Traffic)
    p99_before: float | None = None
    p99_after: float | None = None
    labeled: int = 0
    new_correct: int = 0
    previous_correct: int = 0
    metric: str = "accuracy"  # the task's: accuracy (classifier) or mae (regressor)
    new_error: float = 0.0  # a regressor's summed absolute errors, per version
    previous_error: float = 0.0


def judge(policy: GuardPolicy, e: Evidence) -> list[str]:
    """The regressions ``e`` shows, as reasons; empty when none (or too little evidence)."""
    out: list[str] = []
    if e.after.predictions >= policy.min_predictions:
        fb_new, fb_old = e.after.rate(e.after.fallbacks), e.before.rate(e.before.fallbacks)
        if fb_new - fb_old > policy.max_fallback_increase:
            out.append(f"fallback rate {fb_new:.3f} vs {fb_old:.3f} on the previous version")
        err_new, err_old = e.after.rate(e.after.errors), e.before.rate(e.before.errors)
        if err_new - err_old > policy.max_error_increase:
            out.append(f"error rate {err_new:.3f} vs {err_old:.3f} on the previous version")
        new, old = e.p99_after, e.p99_before
        if (
            new is not None
            and old
            and new > policy.p99_floor_ms
            and new > policy.max_p99_ratio * old
        ):
            out.append(f"p99 latency {new:.2f} ms vs {old:.2f} ms on the previous version")
    if e.labeled >= policy.min_labeled and e.metric == "mae":
        mae_new, mae_old = e.new_error / e.labeled, e.previous_error / e.labeled
        if mae_new - mae_old > policy.max_mae_increase * mae_old:
            out.append(
                f"MAE {mae_new:.3f} vs {mae_old:.3f} for the previous version "
                f"on the same {e.labeled} labeled inputs"
            )
    elif e.labeled >= policy.min_labeled:
        acc_new, acc_old = e.new_correct / e.labeled, e.previous_correct / e.labeled
        if acc_old - acc_new > policy.max_accuracy_drop:
            out.append(
                f"accuracy {acc_new:.3f} vs {acc_old:.3f} for the previous version "
                f"on the same {e.labeled} labeled inputs"
            )
    return out


@dataclass
class _Probation:
    new: TFLiteModel
    previous: TFLiteModel
    started: float
    start: Traffic
    evidence: Evidence


class SwapGuard:
    """Watches each new version for ``policy.window_s`` and reverts it on a regression."""

    def __init__(
        self,
        chain: ServingChain,
        store: ModelStore,
        policy: GuardPolicy,
        *,
        on_revert: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._chain, self._store, self.policy = chain, store, policy
        self._on_revert = on_revert
        self._clock = clock
        self._probation: _Probation | None = None
        #: (sha256, sample, truth, the new version's score: 1/0 right, or |error|)
        self._pending: deque[tuple[str, npt.NDArray[Any], Any, float]] = deque(maxlen=PENDING_MAX)
        # What the chain's current model has served since it became current.
        self._period_sha: str | None = None
        self._period_start = Traffic()
        self.reverts = 0
        self.last_error: str | None = None
        self.last_error_at = 0.0

    @property
    def watching(self) -> str | None:
        """The sha256 of the version on probation, if any."""
        p = self._probation
        return p.new.sha256 if p else None

    @property
    def evidence(self) -> Evidence | None:
        """What the guard has on the version on probation, as of its last tick."""
        p = self._probation
        return p.evidence if p else None

    # -- called by feedback threads -----------------------------------------

    def observe(self, recalled: RecentInput, truth: int | list[float]) -> None:
        """The truth for a prediction (a class, or a regressor's targets): kept for
        scoring if the version on probation made it."""
        p = self._probation
        if p is None or recalled.model_sha256 != p.new.sha256:
            return
        if recalled.predicted_outputs is None:
            score = float(recalled.predicted == truth)
        else:
            score = _abs_error(recalled.predicted_outputs, truth)
        self._pending.append((p.new.sha256, recalled.x, truth, score))

    # -- called by the update consumer's thread -----------------------------

    def swapped(self, previous: TFLiteModel | None, new: TFLiteModel, *, back: bool) -> None:
        """``new`` now serves, ``previous`` (if any) is last-known-good. ``back``:
        a step back to the version served before, which is not put on probation."""
        now = Traffic.of(self._chain)
        before = (
            now - self._period_start
            if previous and self._period_sha == previous.sha256
            else Traffic()
        )
        self._period_sha, self._period_start = new.sha256, now
        self._pending.clear()
        self._probation = None
        if not self.policy.enabled or back or previous is None or previous.sha256 == new.sha256:
            return
        evidence = Evidence(
            before=before, p99_before=self._chain.latency_percentiles(previous.sha256)[1]
        )
        self._probation = _Probation(new, previous, self._clock(), now, evidence)
        logger.info(
            "guard: watching %s against %s for %.0fs", new.name, previous.name, self.policy.window_s
        )

    def tick(self) -> bool:
        """Judge the version on probation; revert it on a regression. True when reverted."""
        current = self._chain.current
        p = self._probation
        if p is None or current is None or current.sha256 != p.new.sha256:
            self._probation = None
            if current is not None and current.sha256 != self._period_sha:
                self._period_sha, self._period_start = current.sha256, Traffic.of(self._chain)
            return False
        e = p.evidence
        self._score(p)
        e.after = Traffic.of(self._chain) - p.start
        e.p99_after = self._chain.latency_percentiles(p.new.sha256)[1]
        reasons = judge(self.policy, e)
        if reasons:
            self._revert(p, "; ".join(reasons))
            return True
        if self._clock() - p.started >= self.policy.window_s:
            logger.info(
                "guard: %s accepted after %.0fs (%d predictions, %d labeled)",
                p.new.name,
                self.policy.window_s,
                e.after.predictions,
                e.labeled,
            )
            self._probation = None
        return False

    def _score(self, p: _Probation) -> None:
        """Score the pending labeled inputs with the previous version too."""
        batch = []
        while self._pending:
            item = self._pending.popleft()
            if item[0] == p.new.sha256:
                batch.append(item)
        if not batch:
            return
        answers = p.previous.answers(np.stack([x for _, x, _, _ in batch]))
        e = p.evidence
        e.labeled += len(batch)
        if p.new.classifies:
            e.new_correct += int(sum(score for *_, score in batch))
            e.previous_correct += int(
                sum(
                    int(a) == y
                    for a, (_, _, y, _) in zip(answers.argmax(axis=1), batch, strict=True)
                )
            )
        else:
            e.metric = "mae"
            e.new_error += sum(score for *_, score in batch)
            e.previous_error += sum(
                _abs_error(a.tolist(), y) for a, (_, _, y, _) in zip(answers, batch, strict=True)
            )

    def _revert(self, p: _Probation, reason: str) -> None:
        message = f"self-reverted {p.new.name} ({p.new.sha256[:12]}) to {p.previous.name}: {reason}"
        try:
            self._store.revert(
                p.previous.sha256, p.previous.version, refused=p.new.sha256, reason=reason
            )
        except OSError as e:  # serve the good model anyway; only the record is lost
            logger.error("guard: cannot record the revert in the state file: %s", e)
        self._chain.set_models(
            current=p.previous, last_known_good=None, baseline=self._chain.baseline
        )
        self._probation = None
        self._pending.clear()
        self._period_sha, self._period_start = p.previous.sha256, Traffic.of(self._chain)
        self.reverts += 1
        self.last_error, self.last_error_at = message, time.time()
        logger.error("guard: %s", message)
        if self._on_revert is not None:
            self._on_revert()


def _abs_error(outputs: list[float], targets: Any) -> float:
    """The mean absolute error of a regressor's outputs against its targets."""
    return float(np.mean(np.abs(np.asarray(outputs, np.float64) - np.asarray(targets, np.float64))))
