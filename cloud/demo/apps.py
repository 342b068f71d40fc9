"""Simulated sensor apps: each asks one edge for predictions over HTTP, as a
real client would, and sends the truth back for a share of them: the class
(``label``) for a classifier, the measured values (``target``) for a regressor.

The app knows every truth, so it also scores the edge: each labeled answer is
recorded (``cloud.demo.figures.Outcome``) with the phase it fell in, the version
that answered and its score in the task's metric, which is where the demo's
figures come from.
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
import numpy.typing as npt

from cloud.demo.figures import Outcome, Phase
from shared.task import TaskSpec

logger = logging.getLogger(__name__)


@dataclass
class AppStats:
    requests: int = 0
    failed: int = 0
    feedback_sent: int = 0
    feedback_failed: int = 0
    #: of the failed requests and truths, those no edge took: its port refused the
    #: connection (the edge process was down)
    refused: int = 0
    #: of the failed ones, those the edge's connection dropped without an answer (its
    #: process died with the request in it, or before the client saw that its
    #: keep-alive connection was dead: a live edge answers or times out)
    cut: int = 0
    #: the latest labeled answers' sample scores (1/0, or absolute errors)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    outcomes: list[Outcome] = field(default_factory=list)
    #: every answer's model version (labeled or not): which versions this app was served
    versions: dict[int | None, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: the event id of every truth an edge accepted (202): what the trainer must get
    event_ids: list[str] = field(default_factory=list)

    @property
    def rolling_metric(self) -> float | None:
        """The task's metric over the latest labeled answers."""
        return sum(self.recent) / len(self.recent) if self.recent else None


@dataclass(frozen=True)
class Samples:
    """What an app draws requests from: the inputs and their truths before the drift,
    and after it (the dataset's own drift concept, or the same inputs transformed)."""

    X: npt.NDArray[Any]
    y: npt.NDArray[Any]
    X_drift: npt.NDArray[Any]
    y_drift: npt.NDArray[Any]

    @classmethod
    def of(
        cls,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        drift_fn: Callable[[npt.NDArray[Any]], npt.NDArray[Any]],
    ) -> Samples:
        """Drift turns the same inputs into new ones; their truths stay."""
        return cls(X, y, drift_fn(X), y)

    def draw(self, rng: np.random.Generator, drift: bool) -> tuple[npt.NDArray[Any], Any]:
        X, y = (self.X_drift, self.y_drift) if drift else (self.X, self.y)
        i = int(rng.integers(len(X)))
        return X[i], y[i]


@dataclass(frozen=True)
class Traffic:
    """How an app uses its edge: requests a second, the share it labels, input noise
    (float inputs only: raw uint8 frames stay what the camera gives)."""

    rate_hz: float
    label_share: float
    noise: float
    seed: int


class SensorApp(threading.Thread):
    """One client of one edge: predict, and label a share of the answers."""

    def __init__(
        self,
        name: str,
        base_url: str,
        samples: Samples,
        phase: Phase,
        traffic: Traffic,
        task: TaskSpec,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.base_url = base_url
        self.samples = samples
        self.phase = phase
        self.task = task
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
        x, truth = self._draw(drift)
        self.stats.requests += 1
        answer = self._predict(client, x)
        if answer is None:
            return
        self.stats.versions[answer["model_version"]] += 1
        if self.rng.random() >= self.label_share:
            return
        score = self.score(answer, truth)
        if score is None:
            return
        self.stats.recent.append(score)
        self.stats.outcomes.append(
            Outcome(
                time.monotonic(),
                drift,
                answer["model_version"],
                score,
                answer["fallback"],
                bool(answer.get("adapted")),
            )
        )
        self._send_truth(client, answer["request_id"], truth)

    def score(self, answer: dict[str, Any], truth: Any) -> float | None:
        """The answer's sample score in the task's metric; None (and counted as a failed
        request) when the edge answered in another task's terms."""
        if self.task.is_classification:
            if answer.get("label") is None:
                self._failed("answer without a label")
                return None
            return 1.0 if int(answer["label"]) == int(truth) else 0.0
        outputs = answer.get("outputs")
        if outputs is None or len(outputs) != self.task.width:
            self._failed("answer without its outputs")
            return None
        return float(self.task.sample_scores([outputs], [truth])[0])

    def _draw(self, drift: bool) -> tuple[npt.NDArray[Any], Any]:
        """One input (drifted or not, with the app's noise) and its truth."""
        x, truth = self.samples.draw(self.rng, drift)
        if self.noise and x.dtype.kind == "f":
            x = x + self.rng.normal(0, self.noise, size=x.shape).astype(x.dtype)
        return x, truth

    def _predict(self, client: httpx.Client, x: npt.NDArray[Any]) -> dict[str, Any] | None:
        try:
            r = client.post("/v1/predict", json={"x": x.tolist()})
            r.raise_for_status()
            answer: dict[str, Any] = r.json()
        except (httpx.HTTPError, ValueError) as e:
            self._count_connection(e)
            self._failed(type(e).__name__)
            return None
        return answer

    def _count_connection(self, e: Exception) -> None:
        self.stats.refused += isinstance(e, httpx.ConnectError)
        self.stats.cut += isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError))

    def _failed(self, reason: str) -> None:
        self.stats.failed += 1
        self.stats.errors[reason] += 1

    def _send_truth(self, client: httpx.Client, request_id: str, truth: Any) -> None:
        body: dict[str, Any] = {"request_id": request_id}
        if self.task.is_classification:
            body["label"] = int(truth)
        else:
            body["target"] = np.asarray(truth, np.float64).reshape(-1).tolist()
        try:
            r = client.post("/v1/feedback", json=body)
            r.raise_for_status()
            event_id = str(r.json().get("event_id", ""))
            self.stats.feedback_sent += 1
            self.stats.event_ids.append(event_id)
        except (httpx.HTTPError, ValueError) as e:
            self._count_connection(e)
            self.stats.feedback_failed += 1
            self.stats.errors[f"feedback {type(e).__name__}"] += 1

    def stop(self) -> None:
        self.stop_event.set()


def failed_requests(apps: list[AppStats]) -> int:
    """Predictions and truths the apps could not get through."""
    return sum(a.failed + a.feedback_failed for a in apps)
