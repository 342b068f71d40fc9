"""Vibration condition monitoring: 3-axis accelerometer windows from a rotating machine.

A motor-driven shaft turns at ``speed_hz`` (25 Hz: 1500 rpm). An accelerometer on
the bearing housing samples x (radial, horizontal), y (radial, vertical) and z
(axial) at 2 kHz; a window is 256 samples (128 ms, three shaft turns). Four
machine states, each with the signature a vibration analyst looks for:

- ``normal``: a small 1x component, gear mesh at 14x, broadband noise;
- ``imbalance``: a strong radial 1x component, x and y in quadrature;
- ``misalignment``: strong 2x, and a large axial (z) 1x/2x component;
- ``bearing_fault``: an outer-race defect: impacts at the ball-pass frequency
  (3.58x), each ringing the housing's resonance (~700 Hz) and decaying.

Every window has its own phase, amplitudes drawn around the state's, noise, and a
slight speed wobble. The drift is what happens on a real site: the drive is
set to twice the speed (50 Hz: every order moves up, and the new 1x sits where
the old 2x was), and the sensor is re-mounted on the housing's end cap, turned
by 90 degrees about y (the axial motion now reads on x, the horizontal on z with
its sign flipped), with a little more gain. A model trained on the old regime
mistakes many faults (about 0.7 accuracy where it had 1.0).

``edgeloop demo --example vibration`` streams the regime, then the drift.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

LABELS = ["normal", "imbalance", "misalignment", "bearing_fault"]
RATE_HZ = 2000.0
WINDOW = 256


def _window(rng: np.random.Generator, state: int, speed_hz: float) -> npt.NDArray[np.float32]:
    t = np.arange(WINDOW) / RATE_HZ
    f = speed_hz * (1 + rng.normal(0, 0.01))
    phase = rng.uniform(0, 2 * np.pi, 4)
    x = np.zeros(WINDOW)
    y = np.zeros(WINDOW)
    z = np.zeros(WINDOW)
    one_x = 0.2 + (1.5 if state == 1 else 0.0)
    x += one_x * rng.uniform(0.8, 1.2) * np.sin(2 * np.pi * f * t + phase[0])
    y += one_x * rng.uniform(0.8, 1.2) * np.cos(2 * np.pi * f * t + phase[0])
    mesh = 0.15 * np.sin(2 * np.pi * 14 * f * t + phase[1])
    x += mesh
    y += 0.7 * mesh
    if state == 2:  # misalignment: 2x radial, strong axial 1x and 2x
        two_x = rng.uniform(0.9, 1.3)
        x += two_x * np.sin(4 * np.pi * f * t + phase[2])
        y += 0.8 * two_x * np.sin(4 * np.pi * f * t + phase[2] + 0.5)
        z += rng.uniform(0.8, 1.2) * np.sin(2 * np.pi * f * t + phase[3])
        z += 0.6 * two_x * np.sin(4 * np.pi * f * t + phase[3])
    if state == 3:  # outer-race defect: impacts at 3.58x ringing at ~700 Hz
        period = 1.0 / (3.58 * f)
        start = rng.uniform(0, period)
        ring = np.zeros(WINDOW)
        for impact in np.arange(start, t[-1], period):
            dt = t - impact
            after = dt >= 0
            ring[after] += np.exp(-dt[after] * 400) * np.sin(2 * np.pi * 700 * dt[after])
        amp = rng.uniform(0.8, 1.4)
        x += amp * ring
        y += 1.2 * amp * ring
        z += 0.3 * amp * ring
    noise = rng.normal(0, 0.25, (WINDOW, 3))
    return (np.stack([x, y, z], axis=1) + noise).astype(np.float32)


def _regime(
    rng: np.random.Generator, n: int, speed_hz: float, remounted: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    y = rng.integers(0, len(LABELS), n)
    X = np.stack([_window(rng, int(s), speed_hz) for s in y])
    if remounted:  # turned 90 degrees about y (axial now reads on x), a little more gain
        X = np.stack([X[:, :, 2], X[:, :, 1], -X[:, :, 0]], axis=2) * 1.15
    return X.astype(np.float32), y.astype(np.int64)


def make(seed: int = 0, n: int = 3000, n_drift: int = 3000) -> dict[str, object]:
    """The dataset (``py:`` spec): windows ``[n, 256, 3]`` and states, then the drifted regime."""
    rng = np.random.default_rng(seed)
    X, y = _regime(rng, n, speed_hz=25.0, remounted=False)
    X_drift, y_drift = _regime(rng, n_drift, speed_hz=50.0, remounted=True)
    return {"X": X, "y": y, "labels": LABELS, "X_drift": X_drift, "y_drift": y_drift}
