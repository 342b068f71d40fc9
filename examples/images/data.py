"""Small camera frames: which part is on the conveyor, from 32x32 RGB uint8 images.

A fixed camera looks down at a belt. Each frame shows one part — a ``washer``
(ring), a ``plate`` (square), a ``bracket`` (triangle) or a ``cross`` fitting —
at a random place, size and rotation-free pose, in a random metal tint, on the
belt's striped rubber texture with sensor noise. Frames are what the camera
gives: uint8, 0..255, ``[32, 32, 3]``.

The drift is a lighting change on the line: a lamp failed, so frames are darker
(45%), warmer (red up, blue down) and a little soft (the camera's auto-exposure
opened the iris; a 3x3 blur). A model trained under the old light confuses the
dim parts with the belt.

``edgeloop demo --example images`` streams the old light, then the new one.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

LABELS = ["washer", "plate", "bracket", "cross"]
SIZE = 32


def _mask(rng: np.random.Generator, kind: int) -> npt.NDArray[np.bool_]:
    r = rng.uniform(8, 12)
    cy, cx = rng.uniform(r + 1, SIZE - r - 1, 2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # washer: a ring
        d = np.hypot(dy, dx)
        return (d <= r) & (d >= 0.45 * r)
    if kind == 1:  # plate: a square
        return (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r)
    if kind == 2:  # bracket: a triangle, apex up
        return (dy <= 0.8 * r) & (dy >= -r + 2 * np.abs(dx))
    w = 0.3 * r  # cross
    return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))


def _frame(rng: np.random.Generator, kind: int) -> npt.NDArray[np.float64]:
    yy = np.arange(SIZE)[:, None]
    stripes = 40 + 12 * (np.sin(yy * rng.uniform(0.8, 1.2) + rng.uniform(0, 6)) > 0)
    img = np.repeat(np.broadcast_to(stripes, (SIZE, SIZE))[:, :, None], 3, axis=2).astype(float)
    img += rng.normal(0, 4, (SIZE, SIZE, 3))
    tint = rng.uniform(150, 230) * np.array([1.0, rng.uniform(0.9, 1.05), rng.uniform(0.85, 1.1)])
    mask = _mask(rng, kind)
    img[mask] = tint + rng.normal(0, 8, (int(mask.sum()), 3))
    return img


def _relight(img: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    dim = img * 0.45 * np.array([1.2, 0.95, 0.6])
    padded = np.pad(dim, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(padded[dy : dy + SIZE, dx : dx + SIZE] for dy in range(3) for dx in range(3)) / 9.0


def _frames(
    rng: np.random.Generator, n: int, relit: bool
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    y = rng.integers(0, len(LABELS), n)
    frames = []
    for kind in y:
        img = _frame(rng, int(kind))
        frames.append(_relight(img) if relit else img)
    X = np.clip(np.rint(np.stack(frames)), 0, 255).astype(np.uint8)
    return X, y.astype(np.int64)


def make(seed: int = 0, n: int = 3000, n_drift: int = 3000) -> dict[str, object]:
    """The dataset (``py:`` spec): frames ``[n, 32, 32, 3]`` uint8 and parts, then the new light."""
    rng = np.random.default_rng(seed)
    X, y = _frames(rng, n, relit=False)
    X_drift, y_drift = _frames(rng, n_drift, relit=True)
    return {"X": X, "y": y, "labels": LABELS, "X_drift": X_drift, "y_drift": y_drift}
