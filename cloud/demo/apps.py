"""Simulated sensor apps: each asks one edge for predictions over HTTP, as a
real client would, and sends the true label back for a share of them.

The app knows every true label, so it also scores the edge: each labeled
prediction is recorded with the phase it fell in and the version that
answered, which is where the demo's accuracy figures come from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Phase:
    """Shared, thread-safe timeline: drift on/off and versions published before it."""

    drift: bool = False
    drift_at: float | None = None
    pre_drift_versions: frozenset[int] = frozenset()
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject_drift(self, published_versions: set[int]) -> None:
        with self.lock:
            self.pre_drift_versions = frozenset(published_versions)
            self.drift_at = time.monotonic()
            self.drift = True


@dataclass
class Outcome:
    t: float
    drift: bool
    version: int | None
    correct: bool
    fallback: bool


@dataclass
class AppStats:
    requests: int = 0
    failed: int = 0
    feedback_sent: int = 0
    feedback_failed: int = 0
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=200))
    outcomes: list[Outcome] = field(default_factory=list)
    #: every answer's model version (labeled or not): which versions this app was served
    versions: dict[int | None, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def rolling_accuracy(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


@dataclass(frozen=True)
class Samples:
    """What an app draws requests from: the inputs, as they are and as drift turns
    them, and their true labels."""

    X: np.ndarray
    X_drifted: np.ndarray
    y: np.ndarray

    @classmethod
    def of(
        cls, X: np.ndarray, y: np.ndarray, drift_fn: Callable[[np.ndarray], np.ndarray]
    ) -> Samples:
        return cls(X, drift_fn(X), y)


@dataclass(frozen=True)
class Traffic:
    """How an app uses its edge: requests a second, the share it labels, input noise."""

    rate_hz: float
    label_share: float
    noise: float
    seed: int


class SensorApp(threading.Thread):
    """One client of one edge: predict, and label a share of the answers."""

    def __init__(
        self, name: str, base_url: str, samples: Samples, phase: Phase, traffic: Traffic
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.base_url = base_url
        self.samples = samples
        self.phase = phase
        self.period = 1.0 / traffic.rate_hz
        self.label_share = traffic.label_share
        self.noise = traffic.noise
        self.rng = np.random.default_rng(traffic.seed)
        self.stats = AppStats()
        self.stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                self._one(client)
                next_at += self.period
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)
                else:
                    next_at = time.monotonic()

    def _one(self, client: httpx.Client) -> None:
        drift = self.phase.drift
        x, label = self._draw(drift)
        self.stats.requests += 1
        answer = self._predict(client, x)
        if answer is None:
            return
        self.stats.versions[answer["model_version"]] += 1
        if self.rng.random() >= self.label_share:
            return
        correct = answer["label"] == label
        self.stats.recent.append(correct)
        self.stats.outcomes.append(
            Outcome(time.monotonic(), drift, answer["model_version"], correct, answer["fallback"])
        )
        self._send_label(client, answer["request_id"], label)

    def _draw(self, drift: bool) -> tuple[np.ndarray, int]:
        """One input (drifted or not, with the app's noise) and its true label."""
        i = int(self.rng.integers(len(self.samples.X)))
        x = (self.samples.X_drifted if drift else self.samples.X)[i]
        if self.noise:
            x = x + self.rng.normal(0, self.noise, size=x.shape).astype(np.float32)
        return x, int(self.samples.y[i])

    def _predict(self, client: httpx.Client, x: np.ndarray) -> dict[str, Any] | None:
        try:
            r = client.post("/v1/predict", json={"x": x.tolist()})
            r.raise_for_status()
            answer: dict[str, Any] = r.json()
        except (httpx.HTTPError, ValueError) as e:
            self.stats.failed += 1
            self.stats.errors[type(e).__name__] += 1
            return None
        return answer

    def _send_label(self, client: httpx.Client, request_id: str, label: int) -> None:
        try:
            r = client.post("/v1/feedback", json={"request_id": request_id, "label": label})
            r.raise_for_status()
            self.stats.feedback_sent += 1
        except httpx.HTTPError as e:
            self.stats.feedback_failed += 1
            self.stats.errors[f"feedback {type(e).__name__}"] += 1

    def stop(self) -> None:
        self.stop_event.set()


def failed_requests(apps: list[AppStats]) -> int:
    """Predictions and labels the apps could not get through."""
    return sum(a.failed + a.feedback_failed for a in apps)


def phase_accuracies(
    outcomes: list[Outcome], phase: Phase, settle_share: float = 0.4
) -> dict[str, float | None]:
    """Accuracy on labeled predictions in each phase of the run.

    - ``acc_pre_drift``: before the drift.
    - ``acc_drift_before_update``: after the drift, answered by a version published before it.
    - ``acc_after_update``: answered by a version published after the drift, in the last
      ``settle_share`` of the drift phase (the trainer keeps improving after its first
      post-drift version; this is where the fleet has settled).
    """
    pre = [o.correct for o in outcomes if not o.drift]
    stale = [o.correct for o in outcomes if o.drift and o.version in phase.pre_drift_versions]
    fresh = [
        o
        for o in outcomes
        if o.drift and o.version is not None and o.version not in phase.pre_drift_versions
    ]
    if fresh and phase.drift_at is not None:
        end = max(o.t for o in outcomes)
        start = end - settle_share * (end - phase.drift_at)
        fresh = [o for o in fresh if o.t >= start]

    def mean(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {
        "acc_pre_drift": mean(pre),
        "acc_drift_before_update": mean(stale),
        "acc_after_update": mean([o.correct for o in fresh]),
    }
