"""Prequential figures over a replay's streamed rows, the same for edgeloop and for
each baseline: accuracy over all rows and over windows, and recovery after each
known drift.

``correct[s]`` is whether the answer to streamed row ``s`` was right (a failed
request counts as wrong; a fallback answer counts as what it said). Recovery from
a drift at streamed row ``d``: the accuracy before it is the last ``window`` rows'
before ``d``; the stream has recovered at the first row ``r`` whose trailing
``window`` rows all come after ``d`` and score within ``RECOVERY`` of it.

>>> c = np.array([1] * 300 + [0] * 100 + [1] * 300, bool)
>>> rec = recovery(c, d=300, sends=np.ones(700, np.int64), window=100)
>>> rec["accuracy_before"], rec["recovery_labels"], rec["recovered_at_row"]
(1.0, 198, 497)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

#: Back within this of the accuracy before a drift counts as recovered (2 points).
RECOVERY = 0.02
#: Rows the accuracy before a drift and the recovery are measured over.
RECOVERY_WINDOW = 200

Bools = npt.NDArray[np.bool_]


def windowed(correct: Bools, window: int) -> npt.NDArray[np.float64]:
    """The trailing-``window`` accuracy at each row (fewer rows at the start)."""
    c = np.concatenate([[0.0], np.cumsum(correct, dtype=np.float64)])
    ends = np.arange(1, len(correct) + 1)
    starts = np.maximum(0, ends - window)
    return np.asarray((c[ends] - c[starts]) / (ends - starts), np.float64)


def plot_window(rows: int) -> int:
    """The window the windowed accuracy is reported and drawn over."""
    return max(50, rows // 40)


def recovery(
    correct: Bools,
    *,
    d: int,
    sends: npt.NDArray[np.int64],
    window: int = RECOVERY_WINDOW,
    times: npt.NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """Recovery from a drift at streamed row ``d`` (see the module docstring)."""
    w = min(window, d)
    before = float(correct[d - w : d].mean()) if w else None
    out: dict[str, Any] = {
        "drift_row": d,
        "accuracy_before": None if before is None else round(before, 4),
        "recovery_labels": None,
        "recovery_s": None,
        "recovered_at_row": None,
    }
    if before is None:
        return out
    c = np.concatenate([[0], np.cumsum(correct, dtype=np.int64)])
    sent = np.concatenate([[0], np.cumsum(sends)])
    for r in range(d + window, len(correct) + 1):
        if (c[r] - c[r - window]) / window >= before - RECOVERY:
            out["recovered_at_row"] = r - 1
            out["recovery_labels"] = int(sent[r] - sent[d])
            if times is not None:
                out["recovery_s"] = round(float(times[r - 1] - times[d]), 2)
            break
    return out


def summary(
    correct: Bools,
    *,
    drifts: list[int],
    sends: npt.NDArray[np.int64],
    times: npt.NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """Prequential accuracy, the windowed series, and recovery per drift."""
    window = plot_window(len(correct))
    series = windowed(correct, window)
    return {
        "prequential_accuracy": round(float(correct.mean()), 4) if len(correct) else None,
        "window": window,
        "windowed_accuracy": [round(float(v), 4) for v in series[window - 1 :: window]],
        "drifts": [
            recovery(correct, d=d, sends=sends, times=times) for d in drifts if 0 < d < len(correct)
        ],
    }


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None
