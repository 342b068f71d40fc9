"""Data-parallel training with bounded staleness (Stale Synchronous Parallel).

A round whose data outgrows one machine trains on ``workers`` processes joined
by ``torch.distributed`` (gloo; the loop keeps tensors on the CPU), each one on its
share of the training rows: every epoch all workers draw the same seeded
permutation and worker ``r`` takes rows ``r, r + W, r + 2W, ...`` of it (the
remainder past a multiple of ``W`` is left out of that epoch, so that every
worker takes the same number of steps).

``staleness`` (``s``) bounds how far a worker may run ahead of the slowest one:

- ``s = 0``: synchronous. The model is wrapped in ``DistributedDataParallel``,
  whose backward all-reduces the gradients every step; every worker applies the
  same averaged gradient, so the models stay identical.
- ``0 < s < inf``: local steps with model averaging inside the bound. Before
  step ``k + 1`` a worker waits until every worker has finished step ``k - s``
  (the gate below), then replaces its parameters by the mean of its own and the
  latest ones every other worker published (none older than step ``k - s``),
  takes a local Adam step and publishes its parameters.
- ``s = None`` (infinity): the same averaging with no gate: a worker averages
  with whatever the others last published and never waits for anyone.

**How the bound is enforced.** The workers share the c10d ``TCPStore`` that the
gloo process group rendezvouses on (hosted by the launching process). After its
step ``k`` a worker writes its parameters (``params/<rank>``), increments its
counter (``steps/<rank>``) and then sets the key ``done/<rank>/<k>``. The gate
before step ``k + 1`` is ``store.wait`` on ``done/<r>/<k - s>`` for every other
worker ``r``: it blocks (no polling) until the slowest has finished step
``k - s``, so a worker about to start a step has completed at most ``s`` steps
more than the slowest has. Each worker reads the others' counters when it passes
the gate and records that gap; the tests assert that it never exceeds ``s``.

``PeriodicModelAverager`` (torch's post-local SGD) was considered for ``s > 0``:
its averaging is an all-reduce, a barrier every ``period`` steps, so with
``period = s + 1`` it does keep every worker within ``s`` steps of the slowest,
but it makes the fastest wait for the slowest to catch up completely at every
period (bulk synchronous with local steps) and has no asynchronous form. The
store gate is the SSP rule itself: a fast worker keeps going while it is at most
``s`` ahead, and the same code with no gate is the asynchronous case.

The launching process (``Pool``) starts the workers with
``torch.multiprocessing.start_processes`` (spawn) on loopback, hands them the
parent's model and the data at start, and runs one or more *cases* on them; the
result of a case is the mean of the workers' final parameters (identical ones
for ``s = 0``). A worker that dies fails the case with ``ParallelTrainingError``
(nothing half-trained is returned); ``fine_tune_parallel`` then starts the round's
training again on new workers, ``Parallelism.retries`` times.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, Store, TCPStore
from torch.multiprocessing.spawn import start_processes
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from cloud.learning.models import TaskModel
from cloud.learning.training import (
    Hyperparameters,
    TrainingError,
    TrainResult,
    loss_of,
    truths_tensor,
)
from shared.errors import ConfigError, EdgeloopError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: How long a worker waits at the gate or in a collective before the case fails.
TIMEOUT = timedelta(seconds=120)
#: How long a worker waits for its next case.
IDLE = timedelta(hours=1)


class ParallelTrainingError(EdgeloopError):
    """A worker failed or timed out: the round is abandoned, nothing is returned."""


@dataclass(frozen=True)
class Parallelism:
    """How a round trains: ``workers`` processes, at most ``staleness`` steps apart
    (``None``: unbounded, asynchronous).

    >>> Parallelism(4, 1).label
    's=1'
    >>> Parallelism(4, -1)
    Traceback (most recent call last):
    ...
    shared.errors.ConfigError: staleness must be 0 or more (or unbounded), got -1
    """

    workers: int = 1
    staleness: int | None = 0
    backend: str = "gloo"
    #: Times a round's training is started on new workers when one of them fails.
    retries: int = 1

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, got {self.retries}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.staleness is not None and self.staleness < 0:
            raise ConfigError(f"staleness must be 0 or more (or unbounded), got {self.staleness}")

    @property
    def label(self) -> str:
        return "s=inf" if self.staleness is None else f"s={self.staleness}"


def parse_staleness(text: str) -> int | None:
    """``"inf"`` (or ``"∞"``) is unbounded, else a count of steps >= 0.

    >>> parse_staleness("4"), parse_staleness("inf")
    (4, None)
    """
    if text.strip().lower() in ("inf", "∞", "infinity", "none"):
        return None
    try:
        value = int(text)
    except ValueError as e:
        raise ConfigError(
            f"staleness must be a whole number of steps or 'inf', got {text!r}"
        ) from e
    Parallelism(1, value)  # the one check
    return value


@dataclass(frozen=True)
class Case:
    """One training run on a pool: hyperparameters, bound and per-rank pace."""

    hp: Hyperparameters
    staleness: int | None
    #: Seconds each rank sleeps after each step (a stand-in for a slower machine).
    delays: tuple[float, ...] = ()
    #: With ``rotate > 0`` the delays move one rank on every ``rotate`` steps: rank
    #: ``r`` sleeps ``delays[(r + k // rotate) % W]`` after step ``k`` (a straggler
    #: that is slow for a while, then another one is).
    rotate: int = 0
    #: Ranks that train (the first ``ranks``); the others sit this case out.
    ranks: int | None = None
    #: Record a digest of each worker's parameters after every step.
    trace: bool = False


@dataclass
class WorkerStats:
    rank: int
    steps: int
    seconds: float
    final_loss: float
    max_gap: int
    gaps: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)


@dataclass
class CaseResult:
    model: TaskModel
    seconds: float
    workers: list[WorkerStats]
    #: (seconds since the start, accuracy) of the averaged model, when a holdout was given.
    curve: list[tuple[float, float]] = field(default_factory=list)

    @property
    def max_gap(self) -> int:
        return max(w.max_gap for w in self.workers)


# -- the worker side ---------------------------------------------------------


class _Sync:
    """One worker's view of the shared store during one case."""

    def __init__(self, store: Store, prefix: str, rank: int, world: int) -> None:
        self.store = PrefixStore(prefix, store)
        self.rank, self.world = rank, world
        self.others = [r for r in range(world) if r != rank]

    def publish(self, model: TaskModel, step: int) -> None:
        vec = parameters_to_vector(model.parameters()).detach()
        self.store.set(f"params/{self.rank}", vec.numpy().tobytes())  # type: ignore[arg-type]
        self.store.add(f"steps/{self.rank}", 1 if step > 0 else 0)
        self.store.set(f"done/{self.rank}/{step}", b"1")  # type: ignore[arg-type]

    def gate(self, completed: int, staleness: int | None) -> int:
        """Block until every other worker has finished step ``completed - staleness``;
        the gap (own steps minus the slowest's) when the worker goes on."""
        if staleness is not None and completed - staleness > 0:
            need = completed - staleness
            self.store.wait([f"done/{r}/{need}" for r in self.others], TIMEOUT)
        slowest = min((self.store.add(f"steps/{r}", 0) for r in self.others), default=completed)
        return completed - slowest

    def average(self, model: TaskModel) -> None:
        """Own parameters replaced by the mean of own and the others' latest."""
        own = parameters_to_vector(model.parameters()).detach()
        theirs = self.store.multi_get([f"params/{r}" for r in self.others])
        total = own.clone()
        for raw in theirs:
            total += torch.from_numpy(np.frombuffer(raw, np.float32).copy())
        vector_to_parameters(total / self.world, model.parameters())


def _delay(case: Case, rank: int, world: int, step: int) -> float:
    """The sleep after step ``step`` of ``rank``.

    >>> [_delay(Case(None, 0, (0.0, 0.5), rotate=2), 0, 2, k) for k in range(5)]
    [0.0, 0.0, 0.5, 0.5, 0.0]
    """
    slot = (rank + step // case.rotate) % world if case.rotate else rank
    return case.delays[slot] if slot < len(case.delays) else 0.0


def _digest(model: TaskModel) -> str:
    vec = parameters_to_vector(model.parameters()).detach().numpy()
    return hashlib.sha256(vec.tobytes()).hexdigest()[:16]


def train_share(
    model: TaskModel,
    X: torch.Tensor,
    y: torch.Tensor,
    case: Case,
    rank: int,
    world: int,
    sync: _Sync,
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> WorkerStats:
    """Rank ``rank``'s part of a case: its share of every epoch, gated and averaged
    (with ``world > 1``), its parameters published after every step. ``forward`` is
    ``model.logits``, or its ``DistributedDataParallel`` wrapper for ``s = 0``."""
    hp = case.hp
    gen = torch.Generator().manual_seed(hp.seed)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    loss_fn = loss_of(model.task)
    stats = WorkerStats(rank, 0, 0.0, float("nan"), 0)
    usable = len(y) // world * world
    start = time.perf_counter()
    model.train()
    for _ in range(hp.epochs):
        total, count = 0.0, 0
        share = torch.randperm(len(y), generator=gen)[:usable][rank::world]
        for idx in torch.split(share, hp.batch_size):
            if world > 1:
                gap = sync.gate(stats.steps, case.staleness)
                stats.gaps.append(gap)
                stats.max_gap = max(stats.max_gap, gap)
                if case.staleness != 0:
                    sync.average(model)
            opt.zero_grad()
            loss = loss_fn(forward(X[idx]), y[idx])
            torch.autograd.backward(loss)
            opt.step()
            delay = _delay(case, rank, world, stats.steps)
            if delay:
                time.sleep(delay)
            stats.steps += 1
            if case.trace:
                stats.digests.append(_digest(model))
            sync.publish(model, stats.steps)
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        stats.final_loss = total / max(count, 1)
    model.eval()
    stats.seconds = time.perf_counter() - start
    return stats


@dataclass(frozen=True)
class _Job:
    #: A file private to this launch with the model and the data (``torch.save``):
    #: small spawn arguments, so that starting a worker never waits for the one
    #: before it to import torch (the spawn pipe blocks past its buffer).
    path: str
    world: int
    backend: str
    port: int


def _worker(rank: int, job: _Job) -> None:
    """A spawned worker: join the group, then run cases until told to stop."""
    torch.set_num_threads(1)
    saved = torch.load(job.path, weights_only=False)
    store = TCPStore(HOST, job.port, is_master=False, timeout=TIMEOUT)
    dist.init_process_group(
        job.backend,
        store=PrefixStore("pg/", store),
        rank=rank,
        world_size=job.world,
        timeout=TIMEOUT,
    )
    dist.barrier()  # gloo connects its mesh lazily: at the first collective, not in a case
    X, y = saved["X"], saved["y"]
    try:
        for n in range(1_000_000):
            store.wait([f"case/{n}"], IDLE)  # the launcher gone: the wait fails, the worker ends
            raw = store.get(f"case/{n}")
            if raw == b"end":
                break
            case = _case_from_json(raw)
            ranks = case.ranks or job.world
            if rank >= ranks:
                continue
            model = copy.deepcopy(saved["model"])
            own = _Sync(store, f"c{n}", rank, ranks)
            forward: Callable[[torch.Tensor], torch.Tensor] = model.logits
            if ranks > 1 and case.staleness == 0:  # built (a collective) before the clock starts
                forward = DistributedDataParallel(model.net)
            own.publish(model, 0)
            own.store.wait(["go"], TIMEOUT)
            stats = train_share(model, X, y, case, rank, ranks, own, forward)
            own.store.set(f"result/{rank}", json.dumps(asdict(stats)).encode())  # type: ignore[arg-type]
    finally:
        dist.destroy_process_group()


def _case_to_json(case: Case) -> bytes:
    return json.dumps({**asdict(case), "hp": case.hp.as_dict()}).encode()


def _case_from_json(raw: bytes) -> Case:
    d = json.loads(raw)
    hp = Hyperparameters(**d["hp"])
    return Case(hp, d["staleness"], tuple(d["delays"]), d["rotate"], d["ranks"], d["trace"])


# -- the launching side ------------------------------------------------------


class Pool:
    """``world`` spawned workers on loopback, holding ``model`` and (X, y), ready for cases.

    Use as a context manager; ``run(case)`` trains and returns the averaged model.
    """

    def __init__(
        self,
        model: TaskModel,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        parallelism: Parallelism,
    ) -> None:
        yt = np.asarray(y)
        if len(yt) == 0:
            raise TrainingError("no samples to train on")
        self.world = parallelism.workers
        self.model = model
        self.store = TCPStore(HOST, 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
        self.tmp = tempfile.TemporaryDirectory(prefix="edgeloop-parallel-")
        path = str(Path(self.tmp.name) / "job.pt")
        Xt = torch.as_tensor(np.ascontiguousarray(X, np.float32))
        torch.save({"model": model, "X": Xt, "y": truths_tensor(yt, model.task)}, path)
        job = _Job(path, self.world, parallelism.backend, self.store.port)
        self.context = start_processes(  # type: ignore[no-untyped-call]
            _worker, args=(job,), nprocs=self.world, join=False, start_method="spawn"
        )
        self.cases = 0

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.context is None:
            return
        self.store.set(f"case/{self.cases}", b"end")  # type: ignore[arg-type]
        # a failed worker has been reported by run(); stop the rest
        with contextlib.suppress(Exception):
            self.context.join(timeout=10)
        for p in self.context.processes:
            if p.is_alive():
                p.terminate()
        self.context = None
        self.tmp.cleanup()

    def _check_alive(self) -> None:
        try:
            self.context.join(timeout=0)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ParallelTrainingError(f"a training worker failed: {first}") from e

    def run(
        self,
        case: Case,
        holdout: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
        every: float = 0.025,
    ) -> CaseResult:
        """Run ``case``; with a ``holdout``, the averaged model's accuracy every ``every`` s."""
        ranks = case.ranks or self.world
        if ranks not in (1, self.world):
            raise ConfigError(f"a case trains on 1 or all {self.world} workers, not {ranks}")
        n, self.cases = self.cases, self.cases + 1
        store = PrefixStore(f"c{n}", self.store)
        self.store.set(f"case/{n}", _case_to_json(case))  # type: ignore[arg-type]
        # every worker has published its starting parameters: the clock starts together
        for r in range(ranks):
            self._wait(store, f"done/{r}/0")
        probe = copy.deepcopy(self.model)
        Xh = yh = None
        if holdout is not None:
            Xh = torch.as_tensor(np.ascontiguousarray(holdout[0], np.float32))
            yh = np.asarray(holdout[1])
        curve: list[tuple[float, float]] = []
        results = [f"result/{r}" for r in range(ranks)]
        start = time.perf_counter()
        store.set("go", b"1")  # type: ignore[arg-type]
        while not store.check(results):
            self._check_alive()
            if Xh is not None and yh is not None:
                curve.append(
                    (time.perf_counter() - start, self._accuracy(store, ranks, probe, Xh, yh))
                )
            time.sleep(every)
        seconds = time.perf_counter() - start
        stats = [WorkerStats(**json.loads(raw)) for raw in store.multi_get(results)]
        self._average_into(store, ranks, probe)
        if Xh is not None and yh is not None:
            curve.append((seconds, self._accuracy(store, ranks, probe, Xh, yh)))
        return CaseResult(probe, seconds, stats, curve)

    def _wait(self, store: Store, key: str) -> None:
        deadline = time.monotonic() + TIMEOUT.total_seconds()
        while not store.check([key]):
            self._check_alive()
            if time.monotonic() > deadline:
                raise ParallelTrainingError(f"no training worker started within {TIMEOUT}")
            time.sleep(0.02)

    @staticmethod
    def _average_into(store: Store, ranks: int, model: TaskModel) -> None:
        raws = store.multi_get([f"params/{r}" for r in range(ranks)])
        vecs = [np.frombuffer(raw, np.float32) for raw in raws]
        mean = torch.from_numpy(np.mean(vecs, axis=0).astype(np.float32))
        vector_to_parameters(mean, model.parameters())

    def _accuracy(
        self, store: Store, ranks: int, model: TaskModel, X: torch.Tensor, y: npt.NDArray[Any]
    ) -> float:
        self._average_into(store, ranks, model)
        with torch.no_grad():
            predicted = model.logits(X).argmax(dim=-1).numpy()
        return float(np.mean(predicted == y))


def fine_tune_parallel(
    parent: TaskModel,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    hp: Hyperparameters,
    parallelism: Parallelism,
) -> TrainResult:
    """``training.fine_tune`` over ``parallelism.workers`` processes: a child trained
    data-parallel from ``parent`` (left untouched) on (X, y). One worker is
    ``fine_tune`` itself, in this process."""
    from cloud.learning.training import fine_tune

    if parallelism.workers == 1:
        return fine_tune(parent, X, y, hp)
    if len(np.asarray(y)) < parallelism.workers:
        raise TrainingError(
            f"{len(np.asarray(y))} samples cannot be shared by {parallelism.workers} workers"
        )
    attempts = parallelism.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            with Pool(parent, X, y, parallelism) as pool:
                result = pool.run(Case(hp, parallelism.staleness))
            break
        except ParallelTrainingError as e:
            if attempt == attempts:
                raise
            logger.warning(
                "%s: the round's training is abandoned and started again on new workers "
                "(attempt %d of %d)", e, attempt + 1, attempts,
            )  # fmt: skip
    samples = len(np.asarray(y))
    loss = float(np.mean([w.final_loss for w in result.workers]))
    logger.info(
        "trained on %d samples over %d workers (%s), loss %.4f, in %.1fs",
        samples, parallelism.workers, parallelism.label, loss, result.seconds,
    )  # fmt: skip
    return TrainResult(
        result.model,
        {
            **hp.as_dict(),
            "workers": parallelism.workers,
            "staleness": parallelism.staleness,
            "attempts": attempt,
        },
        samples,
        loss,
        result.seconds,
    )


def straggler_delays(world: int, base: float, slow: float, extra: float = 0.0) -> tuple[float, ...]:
    """Per-rank sleeps: ``base`` for every rank, the last one slowed ``slow`` times
    (``extra``: a step's own compute, which the slowed rank also repeats).

    >>> straggler_delays(3, 0.01, 2.0)
    (0.01, 0.01, 0.02)
    """
    last = slow * base + (slow - 1) * extra
    return tuple([base] * (world - 1) + [last]) if world > 1 else (base,)


def time_to(curve: Sequence[tuple[float, float]], target: float) -> float:
    """The first time the curve reaches ``target`` (``inf`` if it never does)."""
    return next((t for t, acc in curve if acc >= target), math.inf)
