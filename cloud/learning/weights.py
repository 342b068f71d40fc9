"""A model's weights across processes: safetensors, never pickle.

The weights are the state of the user's module (``TaskModel.net``): its own
parameter and buffer names, so that a file a user trained elsewhere
(``pretrained = "seed.safetensors"``) and the weights the trainer stores with
every version (``FleetKeys.weights``) are the same thing. Blobs in the format
edgeloop wrote before (``ELW1``: a JSON header and raw float32 tensors) are still
read, so a trainer upgraded over a fleet's Redis fine-tunes its old versions.

>>> from torch import nn
>>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
>>> load_weights(b, weights_to_bytes(a))
>>> bool(torch.equal(a.weight, b.weight)), weights_to_bytes(a)[8:9]
(True, b'{')
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from shared.errors import EdgeloopError

_LEGACY_MAGIC = b"ELW1"


class WeightsError(EdgeloopError):
    """Serialized weights do not parse or do not fit the model."""


def weights_to_bytes(net: nn.Module) -> bytes:
    """The module's state (parameters and buffers) as a safetensors file."""
    state = {name: t.detach().cpu().contiguous().clone() for name, t in net.state_dict().items()}
    return bytes(save_safetensors(state, metadata={"format": "pt", "writer": "edgeloop"}))


def load_weights(net: nn.Module, data: bytes) -> None:
    """Load safetensors (or a legacy ELW1 blob) into ``net``: same names and shapes."""
    try:
        state = _legacy_state(data) if data[:4] == _LEGACY_MAGIC else load_safetensors(data)
    except (SafetensorError, ValueError, struct.error, OSError) as e:
        raise WeightsError(f"not a weights file edgeloop can read: {_one_line(e)}") from e
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as e:
        raise WeightsError(f"weights do not fit {type(net).__name__}: {_one_line(e)}") from e


def read_weights_file(net: nn.Module, path: Path) -> None:
    """Load a user's safetensors file into ``net``; WeightsError names the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"cannot read weights {path}: {e.strerror}") from e
    try:
        load_weights(net, data)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from e


def _legacy_state(data: bytes) -> dict[str, torch.Tensor]:
    """The state an ELW1 blob holds: magic, header length, JSON {name: shape}, float32 data."""
    (n,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8 : 8 + n])
    offset = 8 + n
    state = {}
    for name, shape in header.items():
        count = int(np.prod(shape)) if shape else 1
        arr = np.frombuffer(data, "<f4", count=count, offset=offset).reshape(shape)
        state[name] = torch.from_numpy(arr.astype(np.float32))
        offset += 4 * count
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} trailing bytes")
    return state


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return " ".join(line.strip() for line in lines[:2]) if lines else type(e).__name__
