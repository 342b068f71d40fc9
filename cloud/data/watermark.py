"""Idempotency watermarks: which feedback events of a device stream were seen.

An edge's event id is ``<device>:<epoch>:<seq>`` (docs/ARCHITECTURE.md,
"Idempotency"). Per ``<device>:<epoch>`` the trainer keeps the largest W such
that every seq <= W was seen, plus the seen seqs above W, as one field of the
hash ``FleetKeys.seen``. When an edge loses events for good (a gap never
fills), the set above W would grow forever; past ``MAX_ABOVE`` entries the
oldest gap is given up on (a straggler from it then counts as a duplicate).
"""

from __future__ import annotations

#: Seen sequence numbers kept above a device stream's watermark before the oldest gap is abandoned.
MAX_ABOVE = 1024


class Watermark:
    """Seen sequence numbers of one device stream: all <= ``low``, plus ``above``.

    >>> w = Watermark.decode(None)
    >>> [w.add(s) for s in (0, 2, 2, 1, 0)]
    [True, True, False, True, False]
    >>> w.encode()
    b'2'
    """

    __slots__ = ("above", "low")

    def __init__(self, low: int, above: set[int]) -> None:
        self.low = low
        self.above = above

    @classmethod
    def decode(cls, raw: bytes | None) -> Watermark:
        if not raw:
            return cls(-1, set())
        low, _, rest = raw.partition(b"|")
        return cls(int(low), {int(s) for s in rest.split(b",")} if rest else set())

    def encode(self) -> bytes:
        if not self.above:
            return str(self.low).encode()
        return f"{self.low}|{','.join(map(str, sorted(self.above)))}".encode()

    def add(self, seq: int) -> bool:
        """Mark ``seq`` seen; False when it already was."""
        if seq <= self.low or seq in self.above:
            return False
        self.above.add(seq)
        self._advance()
        if len(self.above) > MAX_ABOVE:
            self.low = min(self.above)
            self.above.discard(self.low)
            self._advance()
        return True

    def _advance(self) -> None:
        while self.low + 1 in self.above:
            self.low += 1
            self.above.discard(self.low)
