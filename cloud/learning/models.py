"""The torch models the trainer fine-tunes, and their weights as plain bytes.

Every model takes raw features of shape [N, F] and returns class
**probabilities** (softmax in ``forward``, so the exported TFLite file does the
same); ``logits`` is what training uses. Input scaling is the first op, so a
version is self-contained and the edge passes raw features.

Weights cross processes (a restarted trainer fine-tunes from the published
parent), so they are serialized as a JSON header plus raw little-endian float32
tensors, never with pickle (``torch.save``).

>>> from cloud.data.datasets import load_dataset
>>> m = build_model(load_dataset("digits"), seed=0)
>>> [round(p, 4) for p in m(torch.zeros(2, 64)).sum(dim=1).tolist()]
[1.0, 1.0]
>>> m2 = build_model(load_dataset("digits"), seed=1)
>>> load_weights(m2, weights_to_bytes(m))
>>> bool(torch.equal(m2.c1.weight, m.c1.weight))
True
"""

from __future__ import annotations

import json
import struct

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.data.datasets import Dataset
from shared.errors import EdgeloopError

_MAGIC = b"ELW1"


class WeightsError(EdgeloopError):
    """Serialized weights do not parse or do not fit the model."""


class Classifier(nn.Module):
    """A model the trainer fine-tunes: class scores from ``logits`` (what training
    uses), probabilities from ``forward`` (what the exported file computes)."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


class DigitsCNN(Classifier):
    """8x8 digit images as 64 raw pixels (0..16): two 3x3 convs, a pool, two FC layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.f1 = nn.Linear(32 * 4 * 4, 64)
        self.f2 = nn.Linear(64, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * (1.0 / 16.0)).reshape(-1, 1, 8, 8)
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        out: torch.Tensor = self.f2(torch.relu(self.f1(x)))
        return out


class TabularMLP(Classifier):
    """Standardization (buffers from the seed data) then a two-layer MLP."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(
        self, mean: np.ndarray, std: np.ndarray, num_classes: int, hidden: int = 64
    ) -> None:
        super().__init__()
        std = np.where(std < 1e-6, 1.0, std)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        # Multiply by 1/std rather than divide: one MUL that the exporter keeps in float.
        self.register_buffer("inv_std", torch.as_tensor(1.0 / std, dtype=torch.float32))
        features = len(mean)
        self.f1 = nn.Linear(features, hidden)
        self.f2 = nn.Linear(hidden, hidden // 2)
        self.f3 = nn.Linear(hidden // 2, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.inv_std
        x = torch.relu(self.f1(x))
        x = torch.relu(self.f2(x))
        out: torch.Tensor = self.f3(x)
        return out


def build_model(dataset: Dataset, seed: int = 0) -> Classifier:
    """A fresh model for ``dataset``, initialized deterministically from ``seed``.

    For tabular data the standardization comes from ``dataset.X``: pass the seed
    split, the data the first version is trained on.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if dataset.kind == "digits":
            if dataset.num_features != 64:
                raise ValueError(f"the digits CNN takes 64 pixels, got {dataset.num_features}")
            return DigitsCNN(dataset.num_classes)
        X = dataset.X.astype(np.float64)
        return TabularMLP(X.mean(axis=0), X.std(axis=0), dataset.num_classes)


def predict_proba(model: nn.Module, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Probabilities from the torch model, as float32 numpy."""
    model.eval()
    with torch.no_grad():
        proba: torch.Tensor = model(torch.as_tensor(np.asarray(X, np.float32)))
    return np.asarray(proba.numpy(), np.float32)


def weights_to_bytes(model: nn.Module) -> bytes:
    """The model's state (parameters and buffers) as header + float32 data."""
    state = model.state_dict()
    header = {name: list(t.shape) for name, t in state.items()}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    body = b"".join(
        t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        for t in state.values()
    )
    return _MAGIC + struct.pack("<I", len(head)) + head + body


def load_weights(model: nn.Module, data: bytes) -> None:
    """Load what ``weights_to_bytes`` wrote into ``model`` (same architecture)."""
    try:
        if data[:4] != _MAGIC:
            raise ValueError("not an edgeloop weights blob")
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
        model.load_state_dict(state, strict=True)
    except (ValueError, struct.error, RuntimeError, TypeError) as e:
        raise WeightsError(f"weights do not fit {type(model).__name__}: {e}") from e
