"""Feedback sequence numbers: the ``<seq>`` of ``<device>:<epoch>:<seq>``.

They count up from 0 per epoch (the trainer's watermark starts below 0) and
must never repeat, even across a crash. A number is handed out only below a
reservation persisted on disk; a restart continues from the reservation, so a
crash skips at most ``block`` numbers and reuses none. The trainer abandons
such a gap once newer ids pile up above it (cloud/data/watermark.py). A clean close
persists the exact next number, so a clean restart leaves no gap at all.

The reservation is extended ahead of need by the uplink's sender thread
(``reserve_ahead``), so the thread calling ``next`` does not wait for an fsync.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "feedback.seq"
>>> seq = SeqCounter(path, epoch="e0", block=10)
>>> [seq.next() for _ in range(3)]
[0, 1, 2]
>>> seq.close()
>>> SeqCounter(path, epoch="e0", block=10).next()
3
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from shared.durable import atomic_write
from shared.errors import ConfigError, Unavailable

logger = logging.getLogger(__name__)

#: Numbers reserved per write of the seq file (the most a crash can skip). The
#: sender thread extends the reservation once per send, and under load a send
#: moves about a thousand events: a block must outlast several sends, or the
#: thread calling ``next`` waits for the fsync. The size of a gap costs the
#: trainer nothing (cloud/data/watermark.py abandons it after MAX_ABOVE newer ids).
SEQ_BLOCK = 10_000


class SeqCounter:
    """Sequence numbers that never repeat for one epoch, across restarts."""

    def __init__(self, path: Path, epoch: str, block: int = SEQ_BLOCK) -> None:
        self._path, self._epoch, self._block = path, epoch, block
        self._lock = threading.Lock()  # guards _next and _reserved
        self._write_lock = threading.Lock()  # orders writes of the file
        self._next = self._read()
        self._persisted = self._next
        self._reserved = self._next
        self._persist(self._next + block)
        self._reserved = self._persisted

    def _read(self) -> int:
        try:
            saved = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return 0
        except ValueError as e:
            # Which numbers were used is unknown: only a new epoch is safe, and
            # the epoch belongs to the model store's state. Refuse loudly.
            raise ConfigError(
                f"feedback seq file {self._path} is unreadable ({e}); "
                "remove it together with state.json to start a new epoch"
            ) from e
        if not isinstance(saved, dict) or saved.get("epoch") != self._epoch:
            return 0
        return int(saved.get("next", 0))

    def _persist(self, value: int) -> None:
        """Write ``value`` if it is beyond what is on disk (never goes back)."""
        with self._write_lock:
            if value > self._persisted:
                atomic_write(self._path, json.dumps({"epoch": self._epoch, "next": value}).encode())
                self._persisted = value

    def next(self) -> int:
        """The next number. Raises ``Unavailable`` when the reservation is used up and
        the disk refuses a new one (full): no number is handed out unreserved."""
        with self._lock:
            if self._next >= self._reserved:  # reserve_ahead fell behind: reserve here
                try:
                    self._persist(self._next + self._block)
                except OSError as e:
                    raise Unavailable(f"cannot reserve feedback ids in {self._path}: {e}") from e
                self._reserved = self._persisted
            seq = self._next
            self._next += 1
            return seq

    def reserve_ahead(self) -> None:
        """Extend the reservation once half of it is used (called off the hot path)."""
        with self._lock:
            if self._reserved - self._next > self._block // 2:
                return
            target = self._next + self._block
        try:
            self._persist(target)
        except OSError as e:  # disk full: ``next`` uses what is reserved, then refuses
            logger.warning("cannot extend the feedback id reservation (%s); retrying later", e)
            return
        with self._lock:
            self._reserved = max(self._reserved, min(target, self._persisted))

    def close(self) -> None:
        """Persist the exact next number, so that a clean restart leaves no gap."""
        with self._lock:
            with self._write_lock:
                atomic_write(
                    self._path, json.dumps({"epoch": self._epoch, "next": self._next}).encode()
                )
                self._persisted = self._next
            self._reserved = self._next  # a number handed out after this reserves again
