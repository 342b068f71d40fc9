"""Which feedback events a trainer holds out, decided by the event id alone.

Every accepted event gets 64 uniform bits fixed by its idempotency id
``<device>:<epoch>:<seq>`` (``draws``): the low 16 decide whether it is held out
(one in ``every``: never trained on, only judged on), the rest are its reservoir
draw. Being fixed by the id, a retried ingest transaction decides the same, and
an edge knows which of its own labels no version was trained on (``held_out``):
what the edge's adapter re-judges a new version on (edge/adaptation.py).

>>> [held_out("pi-7:1", seq, 5) for seq in range(8)]
[False, False, False, True, True, True, False, False]
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

#: splitmix64 (Steele, Lea, Flood 2014): the increment and the finalizer's multipliers.
_GAMMA, _MIX1, _MIX2 = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
)


def draws(heads: list[str], seqs: list[int]) -> npt.NDArray[np.uint64]:
    """64 uniform bits per event id ``<head>:<seq>`` (``head`` is ``<device>:<epoch>``).

    splitmix64 of a hash of the device stream plus the seq, for all events at once:
    a hash per event id took a fifth of acceptance.
    """
    keys = {
        h: int.from_bytes(hashlib.blake2b(h.encode(), digest_size=8).digest(), "little")
        for h in set(heads)
    }
    z: npt.NDArray[np.uint64] = (
        np.array([keys[h] for h in heads], np.uint64) + np.array(seqs, np.uint64) * _GAMMA
    )
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    return z ^ (z >> np.uint64(31))


def held_out_draws(z: npt.NDArray[np.uint64], every: int) -> npt.NDArray[np.bool_]:
    """Which of the events with draws ``z`` are held out, one in ``every``."""
    held: npt.NDArray[np.bool_] = (z & np.uint64(0xFFFF)) % np.uint64(every) == 0
    return held


def held_out(head: str, seq: int, every: int) -> bool:
    """Whether a trainer holding out one in ``every`` holds the event ``<head>:<seq>``
    out (``FeedbackEvent.stream_key``)."""
    return bool(held_out_draws(draws([head], [seq]), every)[0])
