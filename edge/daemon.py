"""The edge daemon and its in-process API: ``predict``, ``feedback``, ``health``.

``EdgeDaemon(settings)`` wires the parts together: for each model it serves
(``EdgeSettings.models``, usually one) a ``ServedModel`` (``edge.serving``: its
model store on disk, serving chain in memory, feedback uplink and update
consumer threads, guard), and one status reporter thread for the device, each
thread with its own Redis connection. It serves with Redis down: predictions
never touch the network, feedback spools to disk, updates wait.

``predict``, ``predict_batch`` and ``feedback`` answer for the first model (the
only one on most edges); ``served(name)`` gives any model's. The HTTP API
(``edge.api``) is a thin layer over the same verbs. Nothing here is global, so
two daemons (two devices) can run in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy.typing as npt

from edge.connections import FleetMember
from edge.fallback import BatchPredictions, Prediction
from edge.serving import ServedModel, report_policy, uplink_api
from edge.settings import EdgeSettings, device_signer
from edge.status import StatusReporter
from shared.errors import NotFound
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, FeedbackAccepted
from shared.runtime import interpreter_class
from shared.signing import Verifier

logger = logging.getLogger(__name__)


class EdgeDaemon:
    """One edge device: serve its models, learn from feedback, take updates."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.keys = FleetKeys(settings.fleet)
        member = FleetMember(
            settings.redis_url,
            self.keys,
            settings.device_id,
            settings.model,
            tls=settings.redis_options(),
            signer=device_signer(settings),
        )
        # A bad key file is a ConfigError before anything starts.
        self.verifier = Verifier.from_file(settings.public_key)
        self.status = StatusReporter(
            member, self.health, report_policy(settings), uplink_api(settings)
        )
        self.models: dict[str, ServedModel] = {}
        for i, name in enumerate(settings.models):
            self.models[name] = ServedModel(
                settings,
                name,
                settings.state_dir if i == 0 else settings.state_dir / name,
                verifier=self.verifier,
                # The bundled baseline is the first model's (an edge of one model's).
                baseline=settings.baseline_model if i == 0 else None,
                on_change=self.status.kick,
            )
        first = self.models[settings.models[0]]
        self.first = first
        # The first model's parts, as an edge of one model has them.
        self.store, self.chain, self.uplink = first.store, first.chain, first.uplink
        self.guard, self.updater = first.guard, first.updater
        # The in-process predict is the chain's own bound method: one Python call
        # less on a path benchmarked in microseconds. The methods below document it.
        self.predict = first.chain.predict  # type: ignore[method-assign]
        self.predict_batch = first.chain.predict_batch  # type: ignore[method-assign]
        self._state: str = "starting"
        self._started_at = time.monotonic()
        self._lifecycle = threading.Lock()

    def served(self, name: str) -> ServedModel:
        """The model ``name``; NotFound naming the models this edge serves."""
        found = self.models.get(name)
        if found is None:
            raise NotFound(
                f"this edge does not serve a model {name!r}; it serves "
                + ", ".join(repr(m) for m in self.models)
            )
        return found

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Load what the stores say to serve, then start the threads. Never
        needs Redis: an edge that boots offline serves from disk."""
        with self._lifecycle:
            if self._state != "starting":
                return
            for model in self.models.values():
                model.load()
            self._state = "running"  # before the threads: the first report says so
            for model in self.models.values():
                model.start()
            self.status.start()
        served = ", ".join(m.name for s in self.models.values() for m in s.chain.serving)
        logger.info(
            "edge %s (fleet %s) serving %s",
            self.settings.device_id,
            self.settings.fleet,
            served or "nothing yet",
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
            for model in self.models.values():
                model.stop(timeout)
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

    # -- the in-process API (the first model's) -----------------------------

    def predict(
        self, x: npt.NDArray[Any] | Sequence[Any], budget_ms: float | None = None
    ) -> Prediction:
        """Answer one sample with the first model; see ``ServingChain.predict``
        (which replaces this method on each instance)."""
        return self.first.predict(x, budget_ms)

    def predict_batch(
        self, x: npt.NDArray[Any] | Sequence[Any], budget_ms: float | None = None
    ) -> BatchPredictions:
        """Answer a batch with the first model; see ``ServingChain.predict_batch``
        (which replaces this method on each instance)."""
        return self.first.predict_batch(x, budget_ms)

    def feedback(
        self,
        label: int | None = None,
        request_id: str | None = None,
        x: npt.NDArray[Any] | Sequence[Any] | None = None,
        *,
        target: Sequence[float] | None = None,
    ) -> FeedbackAccepted:
        """The truth for the first model; see ``ServedModel.feedback``."""
        return self.first.feedback(label, request_id, x, target=target)

    @property
    def can_serve(self) -> bool:
        """True when the first model can answer (the others: ``health().models``)."""
        return bool(self.chain.serving)

    def health(self) -> EdgeStatus:
        """This edge's status: what it serves, how well, and what went wrong last.
        The top-level fields are the first model's; ``models`` has each model's."""
        running = self._state == "running"
        runtime = self._runtime_name()
        status_error = [(self.status.last_error_at, self.status.last_error)]
        reports = {}
        for name, model in self.models.items():
            report = model.report(running, runtime)
            # The status reporter's errors are the device's: every model shows them.
            report.last_error = model.last_error(also=status_error)
            if self._state in ("stopping", "stopped"):
                report.state = "stopping"
            reports[name] = report
        first = reports[self.first.name]
        return EdgeStatus(
            device_id=self.settings.device_id,
            fleet=self.settings.fleet,
            uptime_s=time.monotonic() - self._started_at,
            models=reports,
            **first.model_dump(),
        )

    def _runtime_name(self) -> str:
        try:
            return interpreter_class(self.settings.runtime)[1]
        except ImportError:
            return ""
