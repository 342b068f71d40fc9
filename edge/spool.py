"""The feedback spool: events that could not reach Redis yet, on disk, in order.

A directory of segment files, ``<n>.frames``, read oldest first. A segment holds
events as the uplink sends them, frames (``shared.feedback_stream.frame``: the
event's JSON and its sample's raw bytes, each frame saying its own length), one
after the other. Every append is fsync'd, so an event the uplink counted as
spooled survives a power cut. A torn last frame (power cut mid-write) is
skipped when read, and a new process never appends to an old segment, so a torn
frame cannot glue itself to the next one. Segments of JSON lines (``<n>.jsonl``,
from edges before frames) are read too, each line turned into a frame.

The total size is bounded: an append beyond ``max_bytes`` writes what fits and
reports the rest, which the uplink counts as dropped.

>>> import tempfile
>>> from shared.feedback_stream import frames_of
>>> spool = Spool(Path(tempfile.mkdtemp()), max_bytes=1 << 20)
>>> spool.append([frame(b'{"a":1}', b"xy"), frame(b'{"a":2}', b"z")])
2
>>> seg = spool.seal_head()
>>> [frames_of(f) for f in spool.read(seg)]
[[(b'{"a":1}', b'xy')], [(b'{"a":2}', b'z')]]
>>> spool.remove(seg); spool.empty()
True
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from shared.durable import append_durably, remove_durably
from shared.errors import MessageError
from shared.feedback_stream import complete_frames, frame
from shared.messages import FeedbackEvent
from shared.tensors import to_bytes

logger = logging.getLogger(__name__)

#: A segment is closed for appends at this size; it is also the most a lost
#: connection mid-segment can make the uplink send twice.
SEGMENT_BYTES = 256 * 1024
#: Numbering starts in the middle so that ``prepend`` can go below the head.
_FIRST = 10**12


class Spool:
    """Ordered, bounded, fsync'd segments of frames. Not thread-safe by itself: the
    uplink serialises access with its spool lock."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._segments: dict[int, int] = {}  # number -> bytes
        self._legacy: set[int] = set()  # segments of JSON lines
        for path in [*self.directory.glob("*.frames"), *self.directory.glob("*.jsonl")]:
            try:
                n = int(path.stem)
            except ValueError:
                logger.warning("ignoring stray file %s in the spool", path)
                continue
            self._segments[n] = path.stat().st_size
            if path.suffix == ".jsonl":
                self._legacy.add(n)
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
        return self.directory / f"{n}.{'jsonl' if n in self._legacy else 'frames'}"

    def _fit(self, frames: list[bytes]) -> tuple[bytes, int]:
        room = self.max_bytes - self.size
        size, count = 0, 0
        for f in frames:
            if size + len(f) > room:
                break
            size += len(f)
            count += 1
        return b"".join(frames[:count]), count

    def append(self, frames: list[bytes]) -> int:
        """Append frames after everything spooled; return how many fitted."""
        data, count = self._fit(frames)
        if not count:
            return 0
        if (
            self._tail is None
            or self._tail in self._legacy
            or self._segments.get(self._tail, 0) >= self.segment_bytes
        ):
            self._tail = max(self._segments, default=_FIRST - 1) + 1
        self._write(self._tail, data)
        return count

    def prepend(self, frames: list[bytes]) -> int:
        """Write frames before everything spooled (a batch that was in flight while
        newer events were spilled); return how many fitted."""
        data, count = self._fit(frames)
        if not count:
            return 0
        self._write(min(self._segments, default=_FIRST) - 1, data)
        return count

    def _write(self, n: int, data: bytes) -> None:
        """Append ``data`` to segment ``n`` whole or not at all: a write the disk
        refused part of (full) is cut back, so no torn frame is left for the next
        append to follow."""
        path = self._path(n)
        before = self._segments.get(n, 0)
        try:
            append_durably(path, data)
        except OSError:
            with contextlib.suppress(OSError):
                if before:
                    os.truncate(path, before)
                else:
                    path.unlink(missing_ok=True)
            raise
        self._segments[n] = before + len(data)

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
        """The frames of segment ``n``, without a torn last one."""
        raw = self._path(n).read_bytes()
        if n in self._legacy:
            return _frames_of_lines(n, raw)
        frames, torn = complete_frames(raw)
        if torn:
            logger.warning("spool segment %s ends in a torn frame (%d bytes); skipping it", n, torn)
        return frames

    def remove(self, n: int) -> None:
        """Delete a segment whose lines are safely in Redis."""
        remove_durably(self._path(n))
        self._segments.pop(n, None)
        self._legacy.discard(n)
        if self._tail == n:
            self._tail = None


def _frames_of_lines(n: int, raw: bytes) -> list[bytes]:
    """The events of a segment of JSON lines (edges before frames) as frames, the
    sample's values moved from ``x`` to raw float32 bytes; a torn last line and
    lines that are not events are skipped."""
    lines = raw.split(b"\n")
    if lines and lines[-1]:
        logger.warning(
            "spool segment %s ends in a torn line (%d bytes); skipping it", n, len(lines[-1])
        )
    out = []
    for line in lines[:-1]:
        if not line:
            continue
        try:
            event = FeedbackEvent.from_wire(line)
        except MessageError as e:
            logger.warning("spool segment %s: dropping an unreadable event (%s)", n, e)
            continue
        if event.x is None:
            out.append(frame(line, b""))
            continue
        sample = np.asarray(event.x, np.float32)
        event = event.model_copy(update={"x": None, "x_shape": [sample.size], "x_dtype": "float32"})
        out.append(frame(event.to_wire(), to_bytes(sample)))
    return out
