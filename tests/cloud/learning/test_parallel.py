"""Data-parallel training with bounded staleness, on real torch.distributed (gloo on
loopback): one pool of two spawned workers serves every case of this module (each
spawned worker imports torch: the pool is most of this module's time)."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from cloud.cli.main import main
from cloud.data.datasets import load_dataset
from cloud.learning.contract import DataInfo, build_model
from cloud.learning.parallel import (
    Case,
    Parallelism,
    ParallelTrainingError,
    Pool,
    fine_tune_parallel,
    parse_staleness,
)
from cloud.learning.training import Hyperparameters, fine_tune
from shared.errors import ConfigError

WORKERS = 2
ROWS = 600
HP = Hyperparameters(epochs=1, batch_size=32, lr=3e-3, seed=0)
STEPS = -(-ROWS // WORKERS // HP.batch_size)  # 10 a worker


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    rows = np.random.default_rng(0).permutation(len(ds.y))[:ROWS]
    part = ds.subset(rows)
    return part, build_model("mlp", DataInfo.of(part), seed=0)


@pytest.fixture(scope="module")
def pool(digits):
    ds, model = digits
    with Pool(model, ds.X, ds.y, Parallelism(WORKERS)) as running:
        yield running


@pytest.mark.timeout(120)
def test_s0_gives_every_worker_the_same_model_after_every_step(pool):
    got = pool.run(Case(HP, 0, trace=True))
    digests = [w.digests for w in got.workers]
    assert len(digests[0]) == got.workers[0].steps == STEPS
    assert digests[0] == digests[1]
    assert len(set(digests[0])) == STEPS  # and every step changed it
    assert got.max_gap == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("s", [1, 3])
def test_no_worker_runs_more_than_s_steps_ahead_of_the_slowest(pool, s):
    got = pool.run(Case(HP, s, delays=(0.0, 0.02)))
    gaps = [g for w in got.workers for g in w.gaps]
    assert max(gaps) <= s
    assert max(gaps) == s  # the straggler is slow enough that the bound is what holds them
    # bounded: the fast workers end with the slowed one, within s of its steps' time
    fast, slowed = got.workers[0].seconds, got.workers[-1].seconds
    assert fast > slowed - (s + 1) * 0.02 - 0.2


@pytest.mark.timeout(120)
def test_a_slowed_worker_does_not_hold_back_s_inf(pool):
    got = pool.run(Case(HP, None, delays=(0.0, 0.05)))
    slowed = got.workers[-1]
    assert slowed.seconds >= STEPS * 0.05
    for fast in got.workers[:-1]:
        assert fast.steps == slowed.steps
        assert fast.seconds < 0.5 * slowed.seconds
    assert got.max_gap > 3  # nothing held the fast ones to the slowed one's pace


@pytest.mark.timeout(120)
def test_the_round_model_is_the_mean_of_the_workers_and_learns(pool, digits):
    ds, model = digits
    X = torch.as_tensor(ds.X, dtype=torch.float32)

    def accuracy(m):
        with torch.no_grad():
            return float((m.logits(X).argmax(-1).numpy() == ds.y).mean())

    got = pool.run(Case(Hyperparameters(3, 16, 3e-3, 0), 1))
    assert accuracy(got.model) > accuracy(model) + 0.3
    assert all(np.isfinite(w.final_loss) for w in got.workers)


def test_one_worker_is_fine_tune_itself(digits):
    ds, model = digits
    hp = Hyperparameters(1, 64, 1e-3, 0)
    X, y = ds.X[:128], ds.y[:128]
    a = fine_tune_parallel(model, X, y, hp, Parallelism(1, None)).model
    b = fine_tune(model, X, y, hp).model
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Parallelism(0), "workers must be at least 1, got 0"),
        (lambda: Parallelism(4, -1), "staleness must be 0 or more (or unbounded), got -1"),
        (lambda: parse_staleness("-2"), "staleness must be 0 or more (or unbounded), got -2"),
        (lambda: parse_staleness("soon"), "staleness must be a whole number of steps or 'inf'"),
    ],
)
def test_bad_input_is_one_clear_error(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_parse_staleness_reads_infinity():
    assert parse_staleness("inf") is None and parse_staleness("∞") is None
    assert parse_staleness("0") == 0


def test_the_bench_refuses_bad_figures_in_one_line(capsys):
    assert main(["bench", "ssp", "--target", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgeloop bench: error: --step-ms must be 0 or more and --target in (0, 1]"]


@pytest.mark.timeout(180)
def test_a_round_whose_worker_dies_is_trained_again_on_new_workers(digits, monkeypatch, caplog):
    """A worker SIGKILLed mid-round: the round's training is abandoned and started again
    on new workers (``retries``, 1 by default), and the child is the retry's, whole; with
    no retries left the round fails and returns nothing."""
    ds, model = digits
    run = Pool.run
    killed: list[int] = []

    def run_and_kill_the_first(self, case, *args, **kwargs):
        if not killed:  # a real SIGKILL of a worker of the first pool, as it trains
            killed.append(self.context.processes[1].pid)
            threading.Timer(0.2, os.kill, (killed[0], signal.SIGKILL)).start()
        return run(self, case, *args, **kwargs)

    monkeypatch.setattr(Pool, "run", run_and_kill_the_first)
    hp = Hyperparameters(epochs=40, batch_size=32, lr=3e-3, seed=0)
    got = fine_tune_parallel(model, ds.X, ds.y, hp, Parallelism(WORKERS, 0))
    assert len(killed) == 1 and got.hyperparameters["attempts"] == 2
    assert "started again on new workers (attempt 2 of 2)" in caplog.text
    with torch.no_grad():
        predicted = got.model(torch.as_tensor(ds.X, dtype=torch.float32)).argmax(1).numpy()
    assert float(np.mean(predicted == ds.y)) > 0.9  # trained whole

    killed.clear()
    with pytest.raises(ParallelTrainingError, match="a training worker failed"):
        fine_tune_parallel(model, ds.X, ds.y, hp, Parallelism(WORKERS, 0, retries=0))


# Last in this module: it kills one of the module's workers (the pool is spent after it).
@pytest.mark.timeout(120)
def test_a_worker_that_dies_mid_round_fails_the_round_and_returns_nothing(pool):
    victim = pool.context.processes[1].pid
    killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
    killer.start()
    started = time.monotonic()
    with pytest.raises(ParallelTrainingError, match="a training worker failed"):
        pool.run(Case(Hyperparameters(50, 32, 3e-3, 0), 1, delays=(0.01, 0.01)))
    killer.join()
    assert time.monotonic() - started < 30  # noticed at once, not at a timeout
