"""Health gates: is a stage's version B at least as healthy as A on the same devices?

Edges report cumulative counters per model they serve (``EdgeStatus.serving``:
an edge serving two models is judged on the rollout's model only). A stage keeps
each ring device's counters from when the stage began (on A) and from when the
device was first seen serving B; what happened on B is the difference since then.
B is judged on the task's metric against the same devices on A: for accuracy,
B's from the labeled counters since the switch against A's rolling accuracy;
for a lower-is-better metric (a regressor's MAE), the devices' rolling metric on
B, once enough labeled predictions were made on B, against theirs on A.

The figures are sums kept as reports arrive (``cloud.rollout.gate_book``), so
judging a stage costs the same for a ring of 10 devices as of 100 000.

A pass needs evidence from ``GatePolicy.min_devices`` distinct devices (each
serving B, with predictions and labeled ones on B when the policy asks for
them), or from every device of a smaller ring: one device's reports, honest or not, do
not promote a version to more of the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from shared.messages import ModelServing
from shared.rollouts import DeviceSample, GatePolicy, StageState
from shared.task import TaskSpec

Decision = Literal["pass", "fail", "wait"]

#: The metric whose higher values are better; every other one (mae) is an error.
_HIGHER_IS_BETTER = TaskSpec.classification(["a", "b"]).metric


def sample_of(serving: ModelServing, ts: float | None = None) -> DeviceSample:
    """A device's counters for one model (``EdgeStatus.serving(model)``) at ``ts``."""
    c = serving.counters
    return DeviceSample(
        sha256=serving.sha256,
        predictions=c.predictions,
        failed=c.failed_requests,
        fallbacks=c.fallback_predictions,
        labeled=c.labeled,
        correct=c.labeled_correct,
        p99_ms=serving.latency_ms_p99,
        accuracy=serving.rolling_accuracy,
        metric=serving.metric,
        rolling_metric=serving.rolling_metric,
        **({} if ts is None else {"ts": ts}),
    )


@dataclass
class GateResult:
    decision: Decision
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnA:
    """The ring's figures on A when the stage began (fixed for the stage)."""

    accuracy: float | None = None  # the devices' mean rolling accuracy
    p99_ms: float | None = None  # the largest p99
    rolling: float | None = None  # the devices' mean rolling metric
    metric: str | None = None


@dataclass
class OnB:
    """Sums over the ring devices seen serving B, each counted since it switched
    (``cloud.rollout.gate_book`` keeps them as reports arrive)."""

    predictions: int = 0
    failed: int = 0
    fallbacks: int = 0
    labeled: int = 0
    correct: int = 0
    devices: int = 0  # ring devices seen serving B
    witnesses: int = 0  # ... of which give evidence about it (``witnesses``)
    first_ts: float | None = None  # when the first of them was seen on B
    metric: str | None = None
    rolling_sum: float = 0.0  # the devices' rolling metric on B, summed ...
    rolling_n: int = 0  # ... over this many devices
    p99_ms: float | None = None  # the largest p99 on B
    left: str | None = None  # a device that went back from B, and why
    left_why: str = ""

    def add(self, d: DeviceSample, sign: int = 1) -> None:
        """Add (or, with ``sign`` -1, take out) one device's counters since it switched."""
        self.predictions += sign * d.predictions
        self.failed += sign * d.failed
        self.fallbacks += sign * d.fallbacks
        self.labeled += sign * d.labeled
        self.correct += sign * d.correct
        if d.rolling_metric is not None:
            self.rolling_sum += sign * d.rolling_metric
            self.rolling_n += sign
        self.metric = d.metric if sign > 0 else self.metric


def since(now: DeviceSample, then: DeviceSample) -> DeviceSample:
    """Counters since ``then``; a restarted device (counters went down) counts from zero."""
    if now.predictions < then.predictions or now.labeled < then.labeled:
        then = DeviceSample()
    return DeviceSample(
        predictions=now.predictions - then.predictions,
        failed=now.failed - then.failed,
        fallbacks=now.fallbacks - then.fallbacks,
        labeled=now.labeled - then.labeled,
        correct=now.correct - then.correct,
        p99_ms=now.p99_ms,
        metric=now.metric,
        rolling_metric=now.rolling_metric,
        ts=now.ts,
    )


def on_a(samples: list[DeviceSample]) -> OnA:
    """A's figures from the ring devices' samples when the stage began."""
    acc = [s.accuracy for s in samples if s.accuracy is not None]
    p99 = [s.p99_ms for s in samples if s.p99_ms is not None]
    rolling = [s.rolling_metric for s in samples if s.rolling_metric is not None]
    return OnA(
        accuracy=sum(acc) / len(acc) if acc else None,
        p99_ms=max(p99) if p99 else None,
        rolling=sum(rolling) / len(rolling) if rolling else None,
        metric=next((s.metric for s in samples), None),
    )


def evaluate(stage: StageState, a: OnA, b: OnB, policy: GatePolicy, now: float) -> GateResult:
    """Judge a running stage from its ring's figures on A (when it began) and on B."""
    if b.left is not None:
        why = b.left_why or "it no longer serves the new version"
        return GateResult("fail", [f"{b.left} left version B: {why}"], {"reverted": b.left})
    figures = _figures(stage, a, b)
    fails = _failures(figures, policy)
    if fails:
        return GateResult("fail", fails, figures)
    if stage.started_at is not None and now - stage.started_at > policy.stage_timeout_s:
        return GateResult("fail", [f"no decision within {policy.stage_timeout_s:.0f}s"], figures)
    reasons = _not_yet(stage, b, policy, now)
    return GateResult("wait" if reasons else "pass", reasons, figures)


def witnesses(since: DeviceSample, policy: GatePolicy) -> bool:
    """Whether a device serving B gives evidence about it: the traffic the policy asks for
    (predictions when ``min_requests`` > 0, labeled ones when ``min_labeled`` > 0)."""
    return (since.predictions > 0 or policy.min_requests == 0) and (
        since.labeled > 0 or policy.min_labeled == 0
    )


def _not_yet(stage: StageState, b: OnB, policy: GatePolicy, now: float) -> list[str]:
    """Why B cannot pass yet: not long enough on B, or too few predictions to judge."""
    reasons = []
    if b.first_ts is None:
        reasons.append("no ring device serves version B yet")
    elif now - b.first_ts < policy.min_dwell_s:
        reasons.append(f"on B for {now - b.first_ts:.0f}s of {policy.min_dwell_s:.0f}s")
    if b.labeled < policy.min_labeled:
        reasons.append(f"{b.labeled} of {policy.min_labeled} labeled predictions on B")
    if b.predictions < policy.min_requests:
        reasons.append(f"{b.predictions} of {policy.min_requests} predictions on B")
    needed = min(policy.min_devices, len(stage.devices)) if stage.devices else policy.min_devices
    if b.witnesses < needed:
        reasons.append(f"evidence from {b.witnesses} of {needed} devices on B")
    return reasons


def _figures(stage: StageState, a: OnA, b: OnB) -> dict[str, Any]:
    metric = b.metric or a.metric or _HIGHER_IS_BETTER
    accuracy_b = b.correct / b.labeled if b.labeled else None
    if metric == _HIGHER_IS_BETTER:
        metric_a, metric_b = a.accuracy, accuracy_b
    else:
        metric_a = a.rolling
        metric_b = b.rolling_sum / b.rolling_n if b.rolling_n else None
    return {
        "metric": metric,
        "lower_is_better": metric != _HIGHER_IS_BETTER,
        "metric_b": metric_b,
        "metric_a": metric_a,
        "devices_on_b": b.devices,
        "devices_with_evidence": b.witnesses,
        "devices_in_ring": len(stage.devices),
        "predictions_b": b.predictions,
        "labeled_b": b.labeled,
        "accuracy_b": accuracy_b if metric == _HIGHER_IS_BETTER else None,
        "accuracy_a": metric_a if metric == _HIGHER_IS_BETTER else None,
        "error_rate_b": b.failed / b.predictions if b.predictions else None,
        "fallback_rate_b": b.fallbacks / b.predictions if b.predictions else None,
        "p99_ms_b": b.p99_ms,
        "p99_ms_a": a.p99_ms,
    }


def _failures(f: dict[str, Any], policy: GatePolicy) -> list[str]:
    out: list[str] = []
    if f["predictions_b"] >= policy.min_requests and f["predictions_b"]:
        if f["error_rate_b"] > policy.max_error_rate:
            out.append(f"error rate {f['error_rate_b']:.3f} > {policy.max_error_rate}")
        if f["fallback_rate_b"] > policy.max_fallback_rate:
            out.append(f"fallback rate {f['fallback_rate_b']:.3f} > {policy.max_fallback_rate}")
        # Below the floor a p99 is a scheduler's whim (0.2 ms doubles on one context
        # switch), as in the edge guard: only a slowdown a user could feel fails a stage.
        p99_a, p99_b = f["p99_ms_a"], f["p99_ms_b"]
        if p99_a and p99_b and p99_b > policy.p99_floor_ms and p99_b > policy.max_p99_ratio * p99_a:
            out.append(
                f"p99 {f['p99_ms_b']:.2f} ms > {policy.max_p99_ratio}x A's {f['p99_ms_a']:.2f} ms"
            )
    a, b, metric = f["metric_a"], f["metric_b"], f["metric"]
    if f["labeled_b"] < policy.min_labeled or a is None or b is None:
        return out
    if not f["lower_is_better"]:
        if b < a - policy.max_accuracy_drop:
            out.append(
                f"{metric} {b:.3f} on B vs {a:.3f} on A (max drop {policy.max_accuracy_drop})"
            )
    elif b > a * (1 + policy.max_error_rise):
        out.append(
            f"{metric} {b:.4g} on B vs {a:.4g} on A (lower is better; max rise "
            f"{policy.max_error_rise:.0%} of A's)"
        )
    return out
