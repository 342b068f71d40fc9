"""The feedback spool: events that could not reach Redis yet, on disk, in order.

A directory of segment files, ``<n>.jsonl``, read oldest first. Every append is
fsync'd, so an event the uplink counted as spooled survives a power cut. A torn
last line (power cut mid-write) is skipped when read, and a new process never
appends to an old segment, so a torn line cannot glue itself to the next one.

The total size is bounded: an append beyond ``max_bytes`` writes what fits and
reports the rest, which the uplink counts as dropped.

>>> import tempfile
>>> spool = Spool(Path(tempfile.mkdtemp()), max_bytes=1 << 20)
>>> spool.append([b'{"a":1}', b'{"a":2}'])
2
>>> seg = spool.seal_head()
>>> spool.read(seg)
[b'{"a":1}', b'{"a":2}']
>>> spool.remove(seg); spool.empty()
True
"""

from __future__ import annotations

import logging
from pathlib import Path

from shared.durable import append_durably, remove_durably

logger = logging.getLogger(__name__)

#: A segment is closed for appends at this size; it is also the most a lost
#: connection mid-segment can make the uplink send twice.
SEGMENT_BYTES = 256 * 1024
#: Numbering starts in the middle so that ``prepend`` can go below the head.
_FIRST = 10**12


class Spool:
    """Ordered, bounded, fsync'd segments of JSON lines. Not thread-safe by
    itself: the uplink serialises access with its spool lock."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._segments: dict[int, int] = {}  # number -> bytes
        for path in self.directory.glob("*.jsonl"):
            try:
                self._segments[int(path.stem)] = path.stat().st_size
            except ValueError:
                logger.warning("ignoring stray file %s in the spool", path)
        self._tail: int | None = None  # the segment appends go to; never an old one
        if self._segments:
            logger.info(
                "spool holds %d segment(s), %d bytes, from an earlier run",
                len(self._segments),
                self.size,
            )

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return sum(self._segments.values())

    def empty(self) -> bool:
        return not self._segments

    def _path(self, n: int) -> Path:
        return self.directory / f"{n}.jsonl"

    def _fit(self, lines: list[bytes]) -> bytes:
        room = self.max_bytes - self.size
        out, size = [], 0
        for line in lines:
            if size + len(line) + 1 > room:
                break
            out.append(line)
            size += len(line) + 1
        return b"".join(line + b"\n" for line in out)

    def append(self, lines: list[bytes]) -> int:
        """Append lines after everything spooled; return how many fitted."""
        data = self._fit(lines)
        if not data:
            return 0
        if self._tail is None or self._segments.get(self._tail, 0) >= self.segment_bytes:
            self._tail = max(self._segments, default=_FIRST - 1) + 1
        self._write(self._tail, data)
        return data.count(b"\n")

    def prepend(self, lines: list[bytes]) -> int:
        """Write lines before everything spooled (a batch that was in flight while
        newer events were spilled); return how many fitted."""
        data = self._fit(lines)
        if not data:
            return 0
        self._write(min(self._segments, default=_FIRST) - 1, data)
        return data.count(b"\n")

    def _write(self, n: int, data: bytes) -> None:
        append_durably(self._path(n), data)
        self._segments[n] = self._segments.get(n, 0) + len(data)

    def seal_head(self) -> int | None:
        """The oldest segment, closed for further appends so that it can be sent
        and removed while new events keep arriving. None if the spool is empty."""
        if not self._segments:
            return None
        head = min(self._segments)
        if self._tail == head:
            self._tail = None
        return head

    def read(self, n: int) -> list[bytes]:
        """The lines of segment ``n``, without a torn last line."""
        raw = self._path(n).read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1]:
            logger.warning(
                "spool segment %s ends in a torn line (%d bytes); skipping it", n, len(lines[-1])
            )
        return [line for line in lines[:-1] if line]

    def remove(self, n: int) -> None:
        """Delete a segment whose lines are safely in Redis."""
        remove_durably(self._path(n))
        self._segments.pop(n, None)
        if self._tail == n:
            self._tail = None
