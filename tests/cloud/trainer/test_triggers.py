"""When a round starts (cloud/trainer/triggers.py): the count, the timer and the
drift signal each fire exactly at their threshold, and a round resets them; after a
drift, the young concept's pace."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.trainer.triggers import DriftDetector, RoundTrigger
from shared.task import TaskSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def trigger(clock) -> RoundTrigger:
    return RoundTrigger(min_samples=100, interval_s=60.0, interval_min_samples=20, clock=clock)


def test_the_count_fires_at_min_samples(trigger):
    trigger.observe(99)
    assert trigger.due() is None
    trigger.observe(1)
    assert trigger.due() == "count"
    assert trigger.started() == 100
    assert trigger.due() is None and trigger.pending == 0


def test_the_timer_fires_after_the_interval_with_enough_samples(trigger, clock):
    trigger.observe(20)
    clock.now += 59.9
    assert trigger.due() is None
    clock.now += 0.1
    assert trigger.due() == "timer"
    trigger.started()
    trigger.observe(20)
    assert trigger.due() is None  # the interval counts from the last round
    clock.now += 60
    assert trigger.due() == "timer"


def test_the_timer_waits_for_its_minimum_of_samples(trigger, clock):
    trigger.observe(19)
    clock.now += 3600
    assert trigger.due() is None
    trigger.observe(1)
    assert trigger.due() == "timer"


def test_drift_fires_at_once_but_only_with_new_samples(trigger):
    trigger.observe(0, drift=True)
    assert trigger.due() is None  # nothing new to train on
    trigger.observe(1)
    assert trigger.due() == "drift"
    trigger.observe(500)
    assert trigger.due() == "drift"  # drift outranks the count
    assert trigger.started() == 501
    trigger.observe(1)
    assert trigger.due() is None  # the round consumed the signal


def test_a_young_concept_waits_for_its_samples_then_trains_in_small_rounds(clock):
    t = RoundTrigger(100, 60.0, 20, clock, concept_samples=60, young_samples=25, young_span=300)
    t.observe(500)  # a count round is due ...
    t.observe(10, drift=True)
    assert t.due() is None  # ... but a drift outranks it, and waits for its concept
    t.observe(49)
    assert t.due() is None
    t.observe(1)
    assert t.due() == "drift"
    t.started()
    t.observe(24, drift=True)  # the same drift signalled again: no new wait
    assert t.due() == "drift"
    t.started()
    t.observe(24)
    assert t.due() is None
    t.observe(1)
    assert t.due() == "concept"
    t.started()
    t.observe(199)  # 300 samples since the signal: the concept is no longer young
    assert not t.young and t.due() == "count"


def test_without_a_concept_pace_drift_fires_at_once_and_no_concept_rounds(trigger):
    trigger.observe(1, drift=True)
    assert trigger.due() == "drift"
    trigger.started()
    trigger.observe(99)
    assert not trigger.young and trigger.due() is None


def outcomes(hits: int, misses: int = 0) -> np.ndarray:
    """``hits`` correct then ``misses`` wrong served predictions, as served scores."""
    return np.array([1.0] * hits + [0.0] * misses)


def test_drift_fires_when_the_window_falls_below_the_level_by_more_than_drop():
    d = DriftDetector(window=10, drop=0.25, alpha=0.5)
    assert not d.update(outcomes(30))  # a level of 1.0 forms
    assert d.level == 1.0
    assert not d.update(outcomes(0, 2))  # 0.8: a drop of 0.2
    assert d.update(outcomes(0, 1))  # 0.7: a drop of 0.3 > 0.25
    assert d.last_signal == {"served_accuracy": 0.7, "level": 1.0, "drop": 0.25, "window": 10}


def test_one_drift_is_one_signal():
    d = DriftDetector(window=10, drop=0.25, alpha=0.1)
    d.update(outcomes(30))
    assert d.update(outcomes(0, 3))
    # the level starts over from the drifted accuracy: staying at 0.7 is no new drift
    pattern = np.tile([1, 0, 1, 1, 0, 1, 1, 0, 1, 1], 10)
    assert not d.update(pattern.astype(float))
    assert d.recent_value == 0.7
    # a further drop is a drift of its own
    assert d.update(outcomes(0, 10))


def test_the_level_starts_from_a_whole_window_not_one_score():
    # a steady served accuracy of 0.75 whose first score was a hit: from that one
    # score the level read 1.0 for the next ~1/alpha scores, and the first full window
    # (0.75 < 1.0 - 0.2) signalled a drift that never was, after every published version
    d = DriftDetector(window=40, drop=0.2, alpha=0.02)
    steady = np.tile([1.0, 1.0, 1.0, 0.0], 100)  # 0.75 in every window
    assert not d.update(steady)
    assert d.level == pytest.approx(0.75, abs=0.01)
    assert d.last_signal is None


def test_a_noisy_streams_wobble_is_no_drift_but_a_real_drop_still_is():
    rng = np.random.default_rng(0)
    steady = (rng.random(6000) < 0.76).astype(float)  # LED's served accuracy, no drift

    def signals(detector: DriftDetector, scores: np.ndarray) -> int:
        return sum(detector.update(scores[i : i + 1]) for i in range(len(scores)))

    # drop alone: a 40-score window at 0.76 falls 0.2 below its level by chance
    assert signals(DriftDetector(window=40, drop=0.2, alpha=0.02), steady) >= 3
    assert signals(DriftDetector(window=40, drop=0.2, alpha=0.02, noise_z=4.0), steady) <= 1
    # a drift from 0.97 to 0.5 is beyond both: signalled within the window's span
    drifted = np.concatenate([(rng.random(600) < 0.97), (rng.random(200) < 0.5)]).astype(float)
    d = DriftDetector(window=40, drop=0.2, alpha=0.02, noise_z=4.0)
    first = next(i for i in range(len(drifted)) if d.update(drifted[i : i + 1]))
    assert 600 <= first < 640


def test_no_signal_before_a_level_exists_or_from_unknown_predictions():
    d = DriftDetector(window=10, drop=0.25, alpha=0.5)
    assert not d.update(outcomes(0, 10))  # a full window, but nothing to compare with
    assert d.level is None
    d = DriftDetector(window=10, drop=0.25, alpha=0.5)
    d.update(outcomes(30))
    unknown = np.full(50, np.nan)  # the edge did not say what it predicted
    assert not d.update(unknown)
    assert d.recent_value == 1.0


def test_a_regressors_drift_is_its_error_rising_past_the_level():
    d = DriftDetector(window=10, drop=0.25, alpha=0.5, task=TaskSpec.regression(["t"]), rise=1.0)
    assert not d.update(np.full(30, 2.0))  # a level of MAE 2.0 forms
    assert not d.update(np.full(8, 4.5))  # a window MAE of 4.0: twice the level, not more
    assert d.update(np.full(1, 4.5))  # 4.25
    assert d.last_signal == {
        "metric": "mae",
        "served_value": 4.25,
        "level": 2.0,
        "rise": 1.0,
        "window": 10,
    }
