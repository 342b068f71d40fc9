"""Bearing temperature forecasting: a regression from a window of a motor's sensors.

A pump motor reports once a minute: load (%), speed (rpm / 1000), ambient
temperature (deg C) and supply current (A). The bearing temperature follows the
heat the motor makes with a lag (first order, time constant 20 minutes) above
the ambient. The model sees the last 32 minutes ``[32, 4]`` and predicts the
bearing temperature 10 minutes after the window (``bearing_temp_c``): an alarm
that waits for the reading comes too late.

The drift is a summer with a clogged cooling fan: the ambient is 9 degrees
higher (above anything the spring model saw), and the fan moves less air, so the
bearing runs 6 degrees hotter than spring's relation says at any load. A model
trained in spring now under-predicts the temperature that matters most, by
several degrees.

The clogged fan shifts the bearing's temperature rather than scaling its rise
with load: a load change after the window is something no model can foresee,
and a drift that scaled it would make summer's best possible error larger than
spring's (by about 18% with a 30% steeper rise), so no update could bring the
error back to its spring level and the demo would measure the data, not the
update.

``edgeloop demo --example regression`` streams spring, then summer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

OUTPUTS = ["bearing_temp_c"]
WINDOW = 32
HORIZON = 10
TAU_MIN = 20.0
HEAT_PER_LOAD = 0.35  # degrees above the ambient per percent of load, in equilibrium


def _series(
    rng: np.random.Generator, n: int, ambient_c: float, fan_extra_c: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    steps = WINDOW + HORIZON
    # load: a level per sample, changing at a random minute, with noise
    level_a = rng.uniform(20, 95, n)
    level_b = rng.uniform(20, 95, n)
    switch = rng.integers(0, steps, n)
    minute = np.arange(steps)
    load = np.where(minute[None, :] < switch[:, None], level_a[:, None], level_b[:, None])
    load = np.clip(load + rng.normal(0, 2.0, (n, steps)), 0, 100)
    speed = 1.2 + 0.3 * load / 100 + rng.normal(0, 0.01, (n, steps))
    ambient = ambient_c + rng.uniform(-4, 4, n)[:, None] + rng.normal(0, 0.3, (n, steps))
    current = 8 + 0.25 * load + rng.normal(0, 0.4, (n, steps))
    # bearing temperature: lagged response to the heat, starting in equilibrium
    rise = HEAT_PER_LOAD * load + 6.0 * (speed - 1.2) + fan_extra_c
    temp = np.empty((n, steps))
    temp[:, 0] = ambient[:, 0] + rise[:, 0]
    alpha = 1.0 / TAU_MIN
    for k in range(1, steps):
        target = ambient[:, k] + rise[:, k]
        temp[:, k] = temp[:, k - 1] + alpha * (target - temp[:, k - 1])
    X = np.stack([load, speed, ambient, current], axis=2)[:, :WINDOW]
    y = temp[:, -1:] + rng.normal(0, 0.3, (n, 1))
    return X.astype(np.float32), y.astype(np.float32)


def make(seed: int = 0, n: int = 3000, n_drift: int = 3000) -> dict[str, object]:
    """The dataset (``py:`` spec): windows ``[n, 32, 4]`` and the temperature 10 minutes on."""
    rng = np.random.default_rng(seed)
    X, y = _series(rng, n, ambient_c=18.0, fan_extra_c=0.0)
    X_drift, y_drift = _series(rng, n_drift, ambient_c=27.0, fan_extra_c=6.0)
    return {"X": X, "y": y, "outputs": OUTPUTS, "X_drift": X_drift, "y_drift": y_drift}
