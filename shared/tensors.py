"""Model inputs as tensors: what one sample looks like, and how it travels.

A model takes samples of one shape and dtype, its ``TensorSpec`` (no batch
axis): ``[64]`` float32 for the digits' pixels, ``[256, 3]`` float32 for a
window of accelerometer readings, ``[32, 32, 3]`` uint8 for a camera frame. The
spec travels in the model's manifest, so an edge knows what to accept before it
runs anything.

On the wire a sample is either JSON (nested lists in the spec's shape, or a flat
list of its values) or raw little-endian bytes with the dtype and shape beside
them (``to_bytes`` / ``from_bytes``; an ``application/x-npy`` body carries both
itself, ``read_npy`` / ``npy_bytes``). uint8 stays uint8 all the way to the
interpreter's input, where the model's own first op scales it.

``as_batch`` is the one check every entry point runs: it takes one sample or a
batch ``[N, *shape]`` and says exactly what was expected when the input does not
fit.

>>> spec = TensorSpec(shape=[2, 3], dtype="uint8")
>>> batch, single = as_batch([[1, 2, 3], [4, 5, 6]], spec)
>>> batch.shape, batch.dtype.name, single
((1, 2, 3), 'uint8', True)
>>> from_bytes(to_bytes(batch[0]), spec).tolist()
[[1, 2, 3], [4, 5, 6]]
>>> as_batch([[1, 2], [3, 4]], spec)
Traceback (most recent call last):
...
shared.errors.InputError: x must have shape [2, 3] (one sample) or [N, 2, 3] (a batch) of uint8; got shape [2, 2]
"""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from shared.errors import InputError

#: The dtypes a sample may have on the wire, and numpy's little-endian names for them.
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}

DType = Literal["float32", "uint8"]

#: The largest sample anyone may send (values): a 512x512x3 frame, a 64k-long window.
MAX_VALUES = 1 << 20


class TensorSpec(BaseModel):
    """The shape (without the batch axis) and dtype of one sample."""

    shape: list[int] = Field(min_length=1, max_length=4)
    dtype: DType = "float32"

    @classmethod
    def flat(cls, features: int) -> TensorSpec:
        """A flat float vector: what every model took before tensor inputs."""
        return cls(shape=[features], dtype="float32")

    @property
    def size(self) -> int:
        """Values in one sample."""
        return int(np.prod(self.shape))

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.size * self.np_dtype.itemsize

    def describe(self) -> str:
        return f"{list(self.shape)} {self.dtype}"

    def check(self) -> TensorSpec:
        """Raise InputError unless every dimension is positive and the sample is not huge."""
        if any(d < 1 for d in self.shape):
            raise InputError(f"tensor shape {self.shape} has a dimension below 1")
        if self.size > MAX_VALUES:
            raise InputError(f"tensor shape {self.shape} holds over {MAX_VALUES} values")
        return self


def as_batch(x: Any, spec: TensorSpec) -> tuple[npt.NDArray[Any], bool]:
    """``x`` as a contiguous batch ``[N, *spec.shape]`` of the spec's dtype, and whether
    it was a single sample (a flat list of the sample's values counts as one).

    Raises InputError naming the expected shape for anything else, for values a
    uint8 input cannot hold, and for non-finite float values.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise InputError(f"x must be numbers of shape {spec.shape}: {e}") from e
    shape = tuple(spec.shape)
    if arr.shape == shape:
        batch, single = arr[None], True
    elif arr.shape[1:] == shape and arr.ndim == len(shape) + 1:
        batch, single = arr, False
    elif arr.ndim == 1 and arr.size == spec.size:
        batch, single = arr.reshape((1, *shape)), True
    else:
        raise InputError(
            f"x must have shape {list(shape)} (one sample) or [N, {', '.join(map(str, shape))}] "
            f"(a batch) of {spec.dtype}; got shape {list(arr.shape)}"
        )
    if batch.shape[0] == 0:
        raise InputError("x is an empty batch")
    return _cast(batch, spec), single


def _cast(batch: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[Any]:
    # Every message names the input, so that a client learns what to send.
    if batch.dtype.kind not in "biuf":
        raise InputError(f"x must hold numbers for a {spec.describe()} input, got {batch.dtype}")
    if spec.dtype == "uint8":
        if batch.dtype == np.uint8:
            return np.ascontiguousarray(batch)
        if batch.dtype.kind == "f" and not np.array_equal(batch, np.round(batch)):
            raise InputError(f"x must hold whole numbers 0..255 for a {spec.describe()} input")
        if batch.size and (batch.min() < 0 or batch.max() > 255):
            raise InputError(f"x must hold whole numbers 0..255 for a {spec.describe()} input")
        return np.ascontiguousarray(batch, dtype=np.uint8)
    if batch.dtype == np.float32:  # no cast, so nothing can overflow
        out = np.ascontiguousarray(batch)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.ascontiguousarray(batch, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError(
            f"x must hold finite float32 numbers for a {spec.describe()} input "
            "(got NaN, infinity or overflow)"
        )
    return out


def to_bytes(sample: npt.NDArray[Any]) -> bytes:
    """A sample's values as little-endian bytes, C order."""
    dtype = sample.dtype.newbyteorder("<") if sample.dtype.itemsize > 1 else sample.dtype
    return np.ascontiguousarray(sample, dtype=dtype).tobytes()


def from_bytes(data: bytes | memoryview, spec: TensorSpec) -> npt.NDArray[Any]:
    """One sample of ``spec`` from its bytes (a read-only view of ``data``)."""
    if len(data) != spec.nbytes:
        raise InputError(f"a {spec.describe()} sample is {spec.nbytes} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=spec.np_dtype).reshape(spec.shape)


def read_npy(body: bytes) -> npt.NDArray[Any]:
    """The array of an ``application/x-npy`` body; never unpickles anything."""
    try:
        arr = np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"the body is not a readable .npy array: {e}") from e
    return np.asarray(arr)


def npy_bytes(arr: npt.NDArray[Any]) -> bytes:
    """``arr`` as the bytes of a .npy file."""
    out = io.BytesIO()
    np.lib.format.write_array(out, np.ascontiguousarray(arr), allow_pickle=False)
    return out.getvalue()
