"""Numeric helpers for TFLite tensors that need only numpy.

>>> q = quantize(np.array([0.0, 0.25, 1.0, 7.0], np.float32), scale=1 / 256, zero_point=-128, dtype=np.int8)
>>> q.tolist()
[-128, -64, 127, 127]
>>> dequantize(q, 1 / 256, -128).tolist()
[0.0, 0.25, 0.99609375, 0.99609375]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def quantize(
    x: npt.NDArray[np.float32], scale: float, zero_point: int, dtype: type[np.integer]
) -> npt.NDArray[np.integer]:
    """Affine quantization q = round(x / scale) + zero_point, clipped to ``dtype``."""
    info = np.iinfo(dtype)
    q = np.rint(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(
    q: npt.NDArray[np.integer], scale: float, zero_point: int
) -> npt.NDArray[np.float32]:
    """x = (q - zero_point) * scale, as float32."""
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Softmax over the last axis, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
